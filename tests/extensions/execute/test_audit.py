"""The execution audit trail lives in the model service, where the audited code cannot write:
kernel code can neither add to, change nor delete it; a user reads only their own; operators
export everyone's."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.harness import ADMIN_PASSWORD, HubClient, HubProcess, User, wait_for

TAMPER = r"""
import json, os, urllib.request, urllib.error
base = os.environ["ORACULO_MODELS_URL"].rstrip("/") + "/v1/audit/executions"
auth = {"Authorization": "Bearer " + os.environ["ORACULO_KERNEL_TOKEN"],
        "Content-Type": "application/json"}
fake = {"records": [{"event": "started", "execution_id": EXECUTION, "code": "print('nothing')"}]}
tries = {}
for method in ("POST", "PUT", "DELETE", "PATCH"):
    req = urllib.request.Request(base, method=method, headers=auth, data=json.dumps(fake).encode())
    try:
        tries[method] = urllib.request.urlopen(req, timeout=20).status
    except urllib.error.HTTPError as e:
        tries[method] = e.code
# And the old place, in the home: nothing reads it any more.
folder = os.path.expanduser("~/.oraculo/audit")
os.makedirs(folder, exist_ok=True)
with open(os.path.join(folder, "executions.jsonl"), "w") as f:
    f.write(json.dumps(fake["records"][0]) + "\n")
print(json.dumps(tries))
"""


@pytest.fixture(scope="module")
async def admin(hub: HubProcess) -> AsyncIterator[User]:
    client = HubClient(hub)
    await client.login("admin", ADMIN_PASSWORD)
    yield User(name="admin", token=await client.token("admin"), client=client)
    await client.aclose()


async def execute(user: User, code: str) -> dict[str, Any]:
    r = await user.api(
        "POST", f"/user/{user.name}/api/v1/execute", json={"code": code}, timeout=120
    )
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


async def records(user: User, execution_id: str) -> list[dict[str, Any]]:
    r = await user.api(
        "GET", f"/user/{user.name}/api/v1/execute/audit", params={"execution_id": execution_id}
    )
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["records"]
    return found


async def test_the_audit_trail_is_out_of_the_audited_codes_reach(
    alice: User, mallory: User, admin: User
) -> None:
    hub = alice.client.hub
    secret_code = "audited = 'the real code'"
    first = await execute(alice, secret_code)
    eid = first["execution_id"]

    async def both() -> list[dict[str, Any]] | None:
        found = await records(alice, eid)
        return found if [r["event"] for r in found] == ["started", "finished"] else None

    before = await wait_for(both, 30, "the execution's two audit records")
    assert before[0]["code"] == secret_code and before[0]["user"] == alice.name

    # Code in alice's kernel tries to add a forged record and to change or delete the trail.
    out = await execute(alice, f"EXECUTION = {eid!r}\n{TAMPER}")
    assert out["error"] is None, out
    tries = json.loads(out["stdout"])
    assert tries == {"POST": 403, "PUT": 405, "DELETE": 405, "PATCH": 405}, tries
    after = await records(alice, eid)
    assert after == before  # nothing added, nothing changed

    # A user reads only their own: not through her server, not from the model service.
    theirs = await records(mallory, eid)
    assert theirs == []
    r = await mallory.api("GET", f"/user/{alice.name}/api/v1/execute/audit")
    assert r.status_code == 403
    models = f"{hub.url}/services/models/v1/audit"
    r = await mallory.api("GET", f"{models}/executions", params={"user": alice.name})
    assert r.status_code == 403 and r.json()["error"]["type"], r.text
    r = await mallory.api("GET", f"{models}/executions")
    assert r.status_code == 200 and all(rec["user"] == mallory.name for rec in r.json()["data"])

    # Operators export everyone's; a user may not.
    r = await alice.api("GET", f"{models}/export")
    assert r.status_code == 403, r.text
    r = await admin.api("GET", f"{models}/export", params={"user": alice.name})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    mine = [rec for rec in lines if rec.get("execution_id") == eid]
    assert (mine[0]["event"], mine[0].get("code")) == ("started", secret_code)
    assert all(rec["user"] == alice.name for rec in lines)


async def test_bad_appends_are_refused_with_the_error_envelope(alice: User) -> None:
    models = f"{alice.client.hub.url}/services/models/v1/audit/executions"
    for body in ({}, {"records": []}, {"records": ["text"]}, {"records": [{}] * 101}):
        r = await alice.api("POST", models, json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = await alice.api("GET", models, params={"limit": "many"})
    assert r.status_code == 400
    async with httpx.AsyncClient() as anon:  # no token at all
        r = await anon.get(models)
    assert r.status_code == 401
