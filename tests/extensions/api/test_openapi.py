"""The OpenAPI 3.1 documents of the extension (``<user server>/api/v1/openapi.json``) and of the
model service (``/services/models/openapi.json``), from the running session hub.

- Each is a valid OpenAPI 3.1 document (openapi-spec-validator).
- Every route the server really serves is in it: ``routes_probe.py`` builds a user server and
  the model service in another process and walks their tornado routing tables; every
  ``/api/v1`` route of the one, every route of the other, with the same methods and path
  parameter patterns. This is generic: a route another branch or a plugin adds is checked too.
- Answers of every documented operation, made here for real through the proxy (success and
  error answers), validate against the document's schemas (``contract.check``).
- Another user's token is refused on the document and on the explorer page.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate
from tornado.routing import PathMatches

from tests.extensions.api.contract import check, check_recorded
from tests.harness import HubProcess, User

PROBE = Path(__file__).with_name("routes_probe.py")
MODELS = "/services/models"


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[list[Any]]]:
    out = subprocess.run(
        [sys.executable, str(PROBE)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path_factory.mktemp("probe"),
        check=True,
    )
    routes: dict[str, list[list[Any]]] = json.loads(out.stdout)
    return routes


@pytest.fixture(scope="module")
async def server_doc(alice: User) -> dict[str, Any]:
    r = await alice.api("GET", f"/user/{alice.name}/api/v1/openapi.json")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


@pytest.fixture(scope="module")
async def models_doc(hub: HubProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=hub.url) as c:
        r = await c.get(f"{MODELS}/openapi.json")  # public, like /health
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def _shape(template: str) -> str:
    return "/".join("{}" if p.startswith("{") else p for p in template.split("/"))


def _documented(doc: dict[str, Any]) -> dict[str, tuple[set[str], list[str]]]:
    """``shape -> (methods, path parameter patterns)`` of a document."""
    out = {}
    for template, item in doc["paths"].items():
        op = next(iter(item.values()))
        patterns = [p["schema"]["pattern"] for p in op.get("parameters", []) if p["in"] == "path"]
        out[_shape(template)] = (set(item), patterns)
    return out


def _missing(routes: list[list[Any]], doc: dict[str, Any], prefix: str) -> list[str]:
    """Routes under ``prefix`` that the document lacks or describes differently."""
    documented = _documented(doc)
    wrong = []
    for regex, handler, methods in routes:
        if not regex.startswith(prefix):
            continue
        path = PathMatches(regex)._path
        if path is None:
            wrong.append(f"{regex} ({handler}): not a reversible path, so not documentable")
            continue
        shape = "/" + path[len(prefix) :].replace("%s", "{}")
        found = documented.get(shape)
        if found is None:
            wrong.append(f"{regex} ({handler}) is not in the document")
        elif found[0] != set(methods):
            wrong.append(f"{regex} ({handler}): methods {methods}, documented {sorted(found[0])}")
        elif not all(f"({p})" in regex for p in found[1]):
            wrong.append(f"{regex}: documented parameter patterns {found[1]} differ")
    return wrong


async def test_documents_are_valid_openapi_3_1(
    server_doc: dict[str, Any], models_doc: dict[str, Any]
) -> None:
    for doc in (server_doc, models_doc):
        assert doc["openapi"] == "3.1.0"
        validate(doc)
    # generated from the handlers' pydantic models, not written by hand
    schemas = server_doc["components"]["schemas"]
    assert {"ExecuteRequest", "ExecutionResult", "MemoryBody", "ChatRequest", "RunRequest"} <= set(
        schemas
    )
    assert schemas["ExecuteRequest"]["additionalProperties"] is False
    assert "ChatCompletionRequest" in models_doc["components"]["schemas"]
    assert server_doc["servers"] == [{"url": "/user/alice"}]


async def test_every_served_route_is_documented(
    probe: dict[str, list[list[Any]]], server_doc: dict[str, Any], models_doc: dict[str, Any]
) -> None:
    api = [r for r in probe["server"] if r[0].startswith("/api/v1/")]
    assert len(api) >= 25, api  # the probe found the extension's routes
    assert _missing(api, server_doc, "/") == []
    served = [
        r
        for r in probe["models"]
        if r[0].startswith(f"{MODELS}/") and not r[0].startswith(f"{MODELS}/explorer")
    ]
    assert len(served) >= 15, served
    assert _missing(served, models_doc, f"{MODELS}/") == []
    # and nothing is documented that is not served
    shapes = {(PathMatches(r[0])._path or "").replace("%s", "{}") for r in api}
    assert set(_documented(server_doc)) <= shapes


async def test_the_extensions_answers_validate_against_its_document(
    alice: User, server_doc: dict[str, Any]
) -> None:
    base = f"/user/{alice.name}"
    checked: set[str] = set()

    async def call(method: str, path: str, status: int, **kw: Any) -> httpx.Response:
        r = await alice.api(method, base + path, **kw)
        assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text[:300]}"
        checked.add(f"{method} {check(server_doc, method, path, r)}")
        return r

    key = f"contract-{uuid.uuid4().hex[:6]}"
    await call("GET", "/api/v1/status", 200)
    await call("GET", "/api/v1/usage", 200)
    await call("GET", "/api/v1/openapi.json", 200)
    await call("POST", "/api/v1/memory", 201, json={"key": key, "value": "tea at five"})
    await call("POST", "/api/v1/memory", 200, json={"key": key, "value": "tea at six"})
    await call("GET", f"/api/v1/memory?key={key}", 200)
    await call("GET", "/api/v1/memory?limit=5", 200)
    await call("GET", "/api/v1/memory?q=tea", 200)
    await call("GET", "/api/v1/memory/index", 200)
    await call("DELETE", f"/api/v1/memory?key={key}", 204)
    await call("DELETE", f"/api/v1/memory?key={key}", 404)
    await call("POST", "/api/v1/memory", 400, json={"key": 1})

    r = await call("POST", "/api/v1/execute", 200, json={"code": "6 * 7"})
    eid = r.json()["execution_id"]
    assert r.json()["results"][0]["text/plain"] == "42", r.json()["results"]
    await call("GET", f"/api/v1/execute/{eid}", 200)
    await call("GET", f"/api/v1/execute/{uuid.uuid4().hex}", 404)
    await call("GET", f"/api/v1/execute/audit?execution_id={eid}", 200)
    await call("POST", "/api/v1/execute", 400, json={"code": "1", "nope": True})

    await call("GET", "/api/v1/chat/models", 200)
    r = await call("POST", "/api/v1/chat/conversations", 201, json={"title": "contract"})
    cid = r.json()["id"]
    await call("GET", "/api/v1/chat/conversations", 200)
    await call("GET", f"/api/v1/chat/conversations/{cid}", 200)
    await call("PATCH", f"/api/v1/chat/conversations/{cid}", 200, json={"title": "renamed"})
    await call("DELETE", f"/api/v1/chat/conversations/{cid}", 204)
    await call("GET", "/api/v1/chat/notebooks", 200)
    ask = {
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 4,
        "temperature": 0,
        "seed": 1,
    }
    await call("POST", "/api/v1/chat/completions", 200, json=ask)
    await call("POST", "/api/v1/chat", 200, json={**ask, "stream": True})
    await call("POST", "/api/v1/chat", 400, json={"messages": "no"})

    await call("GET", "/api/v1/agents", 200)
    await call("GET", "/api/v1/agents/runs", 200)
    await call("GET", "/api/v1/agents/shared-runs", 200)
    await call("GET", f"/api/v1/agents/runs/{uuid.uuid4().hex}", 404)
    await call("POST", "/api/v1/agents/runs", 400, json={"goal": ""})

    await call("GET", "/api/v1/usage/executions?period=week&limit=5", 200)
    await call("GET", "/api/v1/usage/executions?period=year", 400)

    login = {"host": "git.example.org", "username": "alice", "password": "t0ken"}
    await call("GET", "/api/v1/git/credentials", 200)
    await call("POST", "/api/v1/git/credentials", 201, json=login)
    await call("POST", "/api/v1/git/credentials", 200, json=login)
    await call("POST", "/api/v1/git/credentials", 400, json={**login, "host": "a b"})
    await call("DELETE", "/api/v1/git/credentials/git.example.org", 204)
    await call("POST", "/api/v1/git/commits", 400, json={"path": ""})

    await call("GET", "/api/v1/mcp/servers", 200)
    await call("POST", "/api/v1/mcp/servers", 400, json={"name": "no spaces", "url": "x"})
    await call("DELETE", "/api/v1/mcp/servers/none-such", 404)

    await call("GET", "/api/v1/courses", 200)

    # most of the document was exercised (the rest: websockets, long agent runs, cells, cohorts)
    operations = sum(len(item) for item in server_doc["paths"].values())
    assert len(checked) >= operations // 2, sorted(checked)


async def test_the_model_services_answers_validate_against_its_document(
    alice: User, models_doc: dict[str, Any]
) -> None:
    bearer = {"Authorization": f"Bearer {alice.token}"}

    async def call(method: str, path: str, status: int, **kw: Any) -> httpx.Response:
        r = await alice.client.http.request(method, MODELS + path, headers=bearer, **kw)
        assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text[:300]}"
        check(models_doc, method, path, r)
        return r

    await call("GET", "/health", 200)
    models = (await call("GET", "/v1/models", 200)).json()["data"]
    chat = next(m["id"] for m in models if m["kind"] == "chat")
    embed = next(m["id"] for m in models if m["kind"] == "embedding")
    await call("GET", f"/v1/models/{chat}", 200)
    await call("GET", "/v1/models/no-such-model", 404)
    await call("POST", "/v1/embeddings", 200, json={"model": embed, "input": ["tea"]})
    ask = {"model": chat, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    await call("POST", "/v1/chat/completions", 200, json={**ask, "temperature": 0})
    await call("POST", "/v1/chat/completions", 400, json={"model": chat})
    await call("GET", "/v1/usage", 200)
    await call("GET", "/openapi.json", 200)


async def test_another_users_token_is_refused(alice: User, mallory: User) -> None:
    for path in ("api/v1/openapi.json", "oraculo/explorer"):
        r = await mallory.api("GET", f"/user/{alice.name}/{path}")
        assert r.status_code == 403, (path, r.status_code)
    r = await mallory.api("GET", f"/user/{alice.name}/api/v1/openapi.json")
    assert set(r.json()) == {"message", "reason", "type"}
    # her own server's document is hers
    r = await mallory.api("GET", f"/user/{mallory.name}/api/v1/openapi.json")
    assert r.status_code == 200
    assert r.json()["servers"] == [{"url": f"/user/{mallory.name}"}]


def test_the_contract_check_rejects_what_a_document_does_not_allow() -> None:
    doc: dict[str, Any] = {
        "paths": {
            "/api/v1/things/{tid}": {
                "get": {
                    "parameters": [{"name": "tid", "in": "path", "schema": {"pattern": "[0-9]+"}}],
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Thing"}
                                }
                            },
                        }
                    },
                }
            }
        },
        "components": {
            "schemas": {
                "Thing": {
                    "type": "object",
                    "properties": {"n": {"type": "integer"}},
                    "required": ["n"],
                }
            }
        },
    }

    def answer(status: int, body: Any) -> httpx.Response:
        return httpx.Response(status, json=body, request=httpx.Request("GET", "http://x/"))

    assert check(doc, "GET", "/api/v1/things/7", answer(200, {"n": 1})) == "/api/v1/things/{tid}"
    with pytest.raises(jsonschema.ValidationError):
        check(doc, "GET", "/api/v1/things/7", answer(200, {"n": "one"}))
    with pytest.raises(AssertionError, match="does not list"):
        check(doc, "GET", "/api/v1/things/7", answer(201, {"n": 1}))
    with pytest.raises(AssertionError, match="not in the document"):
        check(doc, "GET", "/api/v1/things/seven", answer(200, {"n": 1}))
    with pytest.raises(AssertionError, match="POST"):
        check(doc, "POST", "/api/v1/things/7", answer(200, {"n": 1}))
    # recorded answers: the same checks, paths under a user's server
    recorded = [("GET", "/user/ann/api/v1/things/7", answer(200, {"n": "one"}))]
    checked, wrong = check_recorded(recorded, {"workspace": doc, "models": doc})
    assert checked == 1 and len(wrong) == 1 and "/user/ann/api/v1/things/7" in wrong[0]
