"""LTI 1.3 launches into cohorts, against a real hub with ``jupyterhub-ltiauthenticator``.

The test is the platform (the LMS): it serves its JSON Web Key Set, answers the tool's login
initiation with an ``id_token`` signed RS256 with its key (the nonce and state the hub asked
for, the course in the ``context`` claim), and posts it to the hub's callback as a browser
would. A launch signed with another key, or replayed without its nonce cookie, signs no one in.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.harness import HubProcess

pytestmark = pytest.mark.timeout(300)

ISSUER = "https://lms.example.edu"
CLIENT_ID = "oraculo-tool"
LTI = "https://purl.imsglobal.org/spec/lti/claim/"
LEARNER = "http://purl.imsglobal.org/vocab/lis/v2/membership#Learner"
INSTRUCTOR = "http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor"


class Platform:
    """The LMS's side: a signing key and its JWKS, served on 127.0.0.1."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwks = json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/jwks":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(jwks)))
                self.end_headers()
                self.wfile.write(jwks)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def id_token(self, nonce: str, sub: str, roles: list[str], course: str, key: Any = None) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": CLIENT_ID,
            "azp": CLIENT_ID,
            "sub": sub,
            "iat": now,
            "exp": now + 300,
            "nonce": nonce,
            "name": sub,
            LTI + "message_type": "LtiResourceLinkRequest",
            LTI + "version": "1.3.0",
            LTI + "deployment_id": "deployment-1",
            LTI + "target_link_uri": "http://127.0.0.1/hub/",
            LTI + "resource_link": {"id": "link-1"},
            LTI + "roles": roles,
            LTI + "context": {"id": course, "label": "BIO101", "title": "Biology 101"},
        }
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture(scope="module")
def platform() -> Iterator[Platform]:
    p = Platform()
    yield p
    p.close()


OPS_TOKEN = uuid.uuid4().hex


@pytest.fixture(scope="module")
async def lti_hub(tmp_path_factory: pytest.TempPathFactory, platform: Platform) -> Any:
    data = tmp_path_factory.mktemp("lti-hub")
    config = data / "lti_config.py"
    config.write_text(
        f"""
c = get_config()  # noqa
c.LTI13Authenticator.issuer = {ISSUER!r}
c.LTI13Authenticator.client_id = {{{CLIENT_ID!r}}}
c.LTI13Authenticator.authorize_url = {platform.url + "/authorize"!r}
c.LTI13Authenticator.jwks_endpoint = {platform.url + "/jwks"!r}
c.LTI13Authenticator.uri_scheme = "http"
from oraculo.hub.config import OraculoHub
OraculoHub(config=c).apply(c)
# the test's operator: a service token that may make cohorts
c.JupyterHub.services.append({{"name": "ops", "api_token": {OPS_TOKEN!r}}})
c.JupyterHub.load_roles.append(
    {{"name": "ops", "scopes": ["admin:groups", "admin:users"], "services": ["ops"]}}
)
"""
    )
    hub = await HubProcess(data, config_file=config, env={"ORACULO_AUTHENTICATOR": "lti13"}).start()
    yield hub
    hub.stop()


async def launch(hub: HubProcess, token_for: Any) -> httpx.Response:
    """A platform-initiated launch through a fresh browser-like client: login initiation,
    then the signed id_token posted back with the state the hub gave."""
    async with httpx.AsyncClient(base_url=hub.url, follow_redirects=False, timeout=30) as b:
        r = await b.post(
            "/hub/lti13/oauth_login",
            data={
                "iss": ISSUER,
                "login_hint": "opaque-user",
                "target_link_uri": f"{hub.url}/hub/",
                "client_id": CLIENT_ID,
                "lti_message_hint": "opaque-message",
            },
        )
        assert r.status_code == 302, r.text
        auth = urlparse(r.headers["Location"])
        query = {k: v[0] for k, v in parse_qs(auth.query).items()}
        assert query["response_type"] == "id_token" and query["client_id"] == CLIENT_ID
        callback = urlparse(query["redirect_uri"]).path
        id_token = token_for(query["nonce"])
        r = await b.post(callback, data={"id_token": id_token, "state": query["state"]})
        if r.status_code == 302:
            me = await b.get("/hub/api/user")
            r.extensions["me"] = me.json() if me.status_code == 200 else None
        return r


async def test_lti_launch_puts_students_and_instructors_in_the_course_cohort(
    lti_hub: HubProcess, platform: Platform
) -> None:
    ops = {"Authorization": f"token {OPS_TOKEN}"}
    async with httpx.AsyncClient(base_url=lti_hub.url, headers=ops, timeout=30) as api:
        r = await api.post("/hub/api/cohorts", json={"name": "bio-101"})
        assert r.status_code == 201, r.text
        r = await api.put("/hub/api/cohorts/bio-101/lti", json={"contexts": ["course-42"]})
        assert r.status_code == 200 and r.json() == {"lti_contexts": ["course-42"]}

        r = await launch(lti_hub, lambda n: platform.id_token(n, "s-1001", [LEARNER], "course-42"))
        assert r.status_code == 302, r.text
        assert r.extensions["me"]["name"] == "s-1001"
        r = await launch(
            lti_hub, lambda n: platform.id_token(n, "t-2002", [INSTRUCTOR], "course-42")
        )
        assert r.status_code == 302, r.text
        r = await api.get("/hub/api/cohorts/bio-101")
        cohort = r.json()
        assert [m["name"] for m in cohort["members"]] == ["s-1001"]
        assert cohort["instructors"] == ["t-2002"]

        # a course mapped to no cohort: signed in, in no cohort
        r = await launch(lti_hub, lambda n: platform.id_token(n, "s-3003", [LEARNER], "course-9"))
        assert r.status_code == 302
        r = await api.get("/hub/api/users/s-3003")
        assert r.json()["groups"] == []

        # a launch signed with another key is refused and makes no user
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        r = await launch(
            lti_hub, lambda n: platform.id_token(n, "evil", [LEARNER], "course-42", key=other)
        )
        assert r.status_code in (400, 401), r.status_code
        assert (await api.get("/hub/api/users/evil")).status_code == 404

        # a token whose nonce is not the one this browser was given is refused
        r = await launch(
            lti_hub, lambda n: platform.id_token("0" * 64, "evil2", [LEARNER], "course-42")
        )
        assert r.status_code == 400
        assert (await api.get("/hub/api/users/evil2")).status_code == 404
        r = await api.get("/hub/api/cohorts/bio-101")
        assert [m["name"] for m in r.json()["members"]] == ["s-1001"]


def test_platform_keys_are_served(platform: Platform) -> None:
    keys = httpx.get(platform.url + "/jwks").json()["keys"]
    assert keys[0]["kid"] == "k1" and keys[0]["kty"] == "RSA"
