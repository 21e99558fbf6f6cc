"""``/api/v1/execute`` end to end: a real hub with per-group sandbox limits, real users, real
kernels, through the public proxy.

The hub gives everyone tight limits (so that the bombs below stay small on a shared machine)
and the ``roomy`` group more memory.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.harness import ADMIN_PASSWORD, HubClient, HubProcess, User, new_user, wait_for

MIB = 1024 * 1024
LIMITS = {
    "memory_mb": 768,
    "processes": 64,
    "file_size_mb": 16,
    "open_files": 256,
    "wall_clock_seconds": 30,
    "default_timeout_seconds": 20,
}
SANDBOX_CONFIG = {"default": LIMITS, "groups": {"roomy": {"memory_mb": 1536}}}
ENVELOPE = {"message", "reason", "type"}


@pytest.fixture(scope="module")
async def sandbox_hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HubProcess]:
    hub = HubProcess(
        tmp_path_factory.mktemp("sandbox-hub"),
        env={"ORACULO_SANDBOX_CONFIG": json.dumps(SANDBOX_CONFIG)},
    )
    await hub.start()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture(scope="module")
async def users(sandbox_hub: HubProcess) -> AsyncIterator[dict[str, User]]:
    """ana (default limits), max (another user), rui (in group roomy) and the admin."""
    client = HubClient(sandbox_hub)
    admin = HubClient(sandbox_hub)
    await admin.login("admin", ADMIN_PASSWORD)
    out = {"admin": User(name="admin", token=await admin.token("admin"), client=admin)}
    for name in ("ana", "max", "rui"):
        out[name] = await new_user(client, name)
    r = await out["admin"].api("POST", "/hub/api/groups/roomy", json={"users": ["rui"]})
    assert r.status_code == 201, r.text
    await asyncio.gather(*(out[n].spawn() for n in ("ana", "max", "rui")))
    try:
        yield out
    finally:
        for user in out.values():
            await user.client.aclose()
        await client.aclose()


async def run(user: User, expect: int = 200, **body: Any) -> dict[str, Any]:
    r = await user.api("POST", f"/user/{user.name}/api/v1/execute", json=body, timeout=60)
    assert r.status_code == expect, r.text
    data: dict[str, Any] = r.json()
    return data


def assert_envelope(r: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = r.json()
    assert set(body) == ENVELOPE and body["type"] == kind, body
    return body


async def test_runs_code_and_answers_the_contract(users: dict[str, User]) -> None:
    ana = users["ana"]
    out = await run(ana, code="import sys\nprint('hi')\nprint('oops', file=sys.stderr)\n6 * 7")
    assert out["status"] == "ok" and out["error"] is None
    assert out["stdout"] == "hi\n" and out["stderr"] == "oops\n"
    assert out["output"] == "hi\noops\n"
    assert out["results"] == [{"text/plain": "42"}]
    assert len(out["execution_id"]) == 32 and out["origin"] == "api" and out["actor"] == "ana"

    out = await run(ana, code="1 / 0")
    assert out["status"] == "error"
    assert out["error"]["name"] == "ZeroDivisionError"
    assert any("1 / 0" in line for line in out["error"]["traceback"])
    assert not any("\x1b[" in line for line in out["error"]["traceback"])

    out = await run(ana, code="echo from-bash; echo err >&2; echo $((40 + 2))", language="bash")
    assert out["status"] == "ok", out
    assert out["stdout"] == "from-bash\n42\n" and "err" in out["stderr"]

    out = await run(ana, code="print('x' * 3_000_000)")
    assert out["truncated"] is True
    assert len(out["output"]) < 1_100_000 and "output truncated" in out["output"]


async def test_bad_input_is_a_400_in_the_error_envelope(users: dict[str, User]) -> None:
    ana = users["ana"]
    url = f"/user/{ana.name}/api/v1/execute"
    for content in [b"not json", b"[1, 2]", b"{}"]:
        r = await ana.api("POST", url, content=content)
        assert_envelope(r, 400, "invalid_request")
    for body in [
        {"code": 1},
        {"code": "1", "timeout": -1},
        {"code": "1", "timeout": "soon"},
        {"code": "1", "surprise": True},
    ]:
        assert_envelope(await ana.api("POST", url, json=body), 400, "invalid_request")
    body = assert_envelope(
        await ana.api("POST", url, json={"code": "puts 1", "language": "ruby"}),
        400,
        "invalid_request",
    )
    assert "python" in body["message"] and "bash" in body["message"]
    body = assert_envelope(
        await ana.api("POST", url, json={"code": "1", "timeout": 31}), 400, "invalid_request"
    )
    assert "30" in body["message"]  # the wall-clock limit
    assert_envelope(
        await ana.api("POST", url, json={"code": "1", "session": "no-such-notebook.ipynb"}),
        404,
        "not_found",
    )
    assert_envelope(await ana.api("GET", f"{url}/{'0' * 32}"), 404, "not_found")
    assert_envelope(await ana.api("GET", f"{url}/{'0' * 32}?wait=x"), 400, "invalid_request")


async def test_another_users_token_is_refused_everywhere(users: dict[str, User]) -> None:
    ana, max_ = users["ana"], users["max"]
    done = await run(ana, code="secret = 'ana-only'")
    base = f"/user/{ana.name}/api/v1/execute"
    calls = [
        ("POST", base, {"code": "print(secret)"}),
        ("GET", f"{base}/{done['execution_id']}", None),
        ("DELETE", f"{base}/{done['execution_id']}", None),
        ("GET", f"{base}/audit", None),
        ("GET", f"{base}/audit?format=jsonl", None),
    ]
    async with httpx.AsyncClient(base_url=ana.client.hub.url) as bare:
        for method, path, body in calls:
            r = await bare.request(method, path, json=body, headers=max_.auth)
            assert r.status_code == 403, (method, path, r.status_code)
            r = await bare.request(method, path, json=body)
            assert r.status_code in (302, 401, 403), (method, path, r.status_code)
    # ...and nothing max sent ran in ana's kernel.
    audit = (await ana.api("GET", f"{base}/audit")).json()["records"]
    assert not any(rec.get("actor") == "max" for rec in audit)


async def test_timeouts_hold_within_half_a_second(users: dict[str, User]) -> None:
    ana = users["ana"]
    await run(ana, code="1")  # the kernel is up and idle
    for code, timeout, action in [
        ("while True: pass", 1.5, "interrupted"),
        ("import time\ntime.sleep(60)", 1.0, "interrupted"),
        # A kernel that ignores the interrupt is killed and restarted.
        (
            "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass",
            1.0,
            "restarted",
        ),
    ]:
        await run(ana, code="kept = 1")
        start = time.monotonic()
        out = await run(ana, code=code, timeout=timeout)
        elapsed = time.monotonic() - start
        assert out["status"] == "timeout", out
        assert out["timeout"] == {"seconds": timeout, "action": action}
        assert out["error"]["name"] == "TimeoutError" and out["error"]["limit"] == "timeout"
        # held within 0.5 s as the server clocks it (the request's round trip through the
        # proxy on a loaded 2-core runner is not part of the limit)
        assert timeout <= out["duration_seconds"] <= timeout + 0.5, (code, out["duration_seconds"])
        assert elapsed >= timeout, (code, elapsed)
        after = await run(ana, code="print(kept)")
        if action == "interrupted":
            assert after["stdout"] == "1\n"  # state survives an interrupt
        else:
            assert after["error"]["name"] == "NameError"  # ...not a restart


async def test_a_kernel_that_dies_is_reported_and_restarted(users: dict[str, User]) -> None:
    ana = users["ana"]
    out = await run(ana, code="import os\nos._exit(3)")
    assert out["status"] == "error" and out["error"]["name"] == "KernelDied", out
    assert "exit 3" in out["error"]["value"]
    out = await run(ana, code="'back'")
    assert out["status"] == "ok" and out["results"] == [{"text/plain": "'back'"}]


async def test_detach_then_reattach(users: dict[str, User]) -> None:
    ana = users["ana"]
    r = await ana.api(
        "POST",
        f"/user/{ana.name}/api/v1/execute",
        json={"code": "import time\ntime.sleep(1)\nprint('done')", "detach": True},
    )
    assert r.status_code == 202, r.text
    running = r.json()
    assert running["status"] == "running"
    location = r.headers["location"]
    assert location == f"/user/{ana.name}/api/v1/execute/{running['execution_id']}"
    now = (await ana.api("GET", location)).json()
    assert now["status"] == "running"
    done = (await ana.api("GET", f"{location}?wait=30")).json()
    assert done["status"] == "ok" and done["stdout"] == "done\n"
    assert (await ana.api("GET", location)).json() == done


async def test_cancel_a_running_and_a_queued_execution(users: dict[str, User]) -> None:
    ana = users["ana"]
    base = f"/user/{ana.name}/api/v1/execute"
    await run(ana, code="kept = 'still here'\nran = []")
    long = await run(ana, 202, code="import time\ntime.sleep(60)", detach=True, timeout=30)
    queued = await run(ana, 202, code="ran.append('queued')", detach=True)

    async def started() -> bool:  # the kernel is busy with the first
        r = await ana.api("GET", f"{base}/audit", params={"execution_id": long["execution_id"]})
        return bool(r.json()["records"])

    await wait_for(started, 30, "the long execution to start")
    r = await ana.api("DELETE", f"{base}/{queued['execution_id']}")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and r.json()["error"]["name"] == "Cancelled"
    r = await ana.api("DELETE", f"{base}/{long['execution_id']}", timeout=30)
    assert r.status_code == 200, r.text
    stopped = r.json()
    assert stopped["status"] == "cancelled", stopped
    assert stopped["error"] == {
        "name": "Cancelled", "value": f"Cancelled by {ana.name}", "traceback": [], "limit": None,
    }  # fmt: skip
    assert stopped["finished_at"] is not None  # stopped, 60 s of sleep cut short
    # interrupted, not restarted: the kernel's state is kept; the queued code never ran
    out = await run(ana, code="kept, ran")
    assert out["results"][0]["text/plain"] == "('still here', [])"
    again = await ana.api("DELETE", f"{base}/{long['execution_id']}")  # answered as it is
    assert again.json()["status"] == "cancelled"
    assert_envelope(await ana.api("DELETE", f"{base}/{'0' * 32}"), 404, "not_found")
    records = (await ana.api("GET", f"{base}/audit")).json()["records"]
    finished = {r["execution_id"]: r for r in records if r["event"] == "finished"}
    assert finished[long["execution_id"]]["status"] == "cancelled"


async def test_executions_on_one_kernel_run_in_order(users: dict[str, User]) -> None:
    ana = users["ana"]
    await run(ana, code="order = []")
    codes = [f"import time\norder.append(({i}, time.time()))\ntime.sleep(0.2)" for i in range(3)]
    ids = []
    for code in codes:  # sent back to back, without waiting for each other
        ids.append((await run(ana, 202, code=code, detach=True))["execution_id"])
    for eid in ids:
        r = await ana.api("GET", f"/user/{ana.name}/api/v1/execute/{eid}?wait=30")
        assert r.json()["status"] == "ok"
    out = await run(
        ana, code="[i for i, _ in order], all(b[1] - a[1] >= 0.2 for a, b in zip(order, order[1:]))"
    )
    assert out["results"][0]["text/plain"] == "([0, 1, 2], True)"


async def test_files_and_a_matplotlib_png(users: dict[str, User]) -> None:
    ana = users["ana"]
    code = """
import matplotlib.pyplot as plt
with open("made-by-run.csv", "w") as f:
    f.write("a,b\\n1,2\\n")
fig, ax = plt.subplots()
ax.plot([1, 2, 3], [3, 1, 2])
plt.show()
"""
    out = await run(ana, code=code)
    assert out["status"] == "ok", out
    pngs = [r for r in out["results"] if "image/png" in r]
    assert len(pngs) == 1 and "text/plain" in pngs[0]
    by_change = {f["change"]: f for f in out["files"]}
    made = by_change["created"]
    assert made["path"] == "made-by-run.csv" and made["size"] == 8 and made["type"] == "text/csv"
    r = await ana.api("GET", made["url"] + "?content=1")
    assert r.status_code == 200 and r.json()["content"] == "a,b\n1,2\n"
    image = by_change["output"]
    assert image["type"] == "image/png" and image["path"].endswith(".png")
    r = await ana.api("GET", image["download_url"])
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")

    out = await run(ana, code="open('made-by-run.csv', 'a').write('3,4\\n')")
    assert [(f["path"], f["change"]) for f in out["files"]] == [("made-by-run.csv", "modified")]


async def test_session_shares_state_with_a_notebook_kernel(users: dict[str, User]) -> None:
    ana = users["ana"]
    r = await ana.api(
        "POST",
        f"/user/{ana.name}/api/sessions",
        json={"path": "analysis.ipynb", "type": "notebook", "kernel": {"name": "oraculo"}},
    )
    assert r.status_code == 201, r.text
    kernel_id = r.json()["kernel"]["id"]
    # The user types in the notebook (kernel websocket)...
    typed = await ana.execute(kernel_id, "df_rows = 41")
    assert typed["error"] is None
    # ...and the API, naming the notebook, sees the same state.
    out = await run(ana, code="df_rows + 1", session="analysis.ipynb")
    assert out["results"] == [{"text/plain": "42"}] and out["session"] == kernel_id
    out = await run(ana, code="df_rows += 1", session=kernel_id)
    assert (await ana.execute(kernel_id, "print(df_rows)"))["stdout"] == "42\n"
    # The dedicated assistant kernel is another kernel.
    out = await run(ana, code="'df_rows' in dir()")
    assert out["results"] == [{"text/plain": "False"}] and out["session"] != kernel_id
    # Only sandboxed kernels start here: one asked for as the plain `python3` is the sandboxed
    # kernel (oraculo.kernels.specs), so the API may share it.
    asked_plain = await ana.start_kernel("python3")
    r = await ana.api(
        "POST", f"/user/{ana.name}/api/v1/execute", json={"code": "1", "session": asked_plain}
    )
    assert r.status_code == 200, r.text


async def test_no_credentials_in_the_kernel_environment(users: dict[str, User]) -> None:
    ana, max_ = users["ana"], users["max"]
    out = await run(ana, code="import os, json\nprint(json.dumps(dict(os.environ)))")
    env = json.loads(out["stdout"])
    for name in env:
        upper = name.upper()
        if any(s in upper for s in ("TOKEN", "SECRET", "KEY", "PASSWORD")):
            assert name == "ORACULO_KERNEL_TOKEN", name
    assert "JUPYTERHUB_API_TOKEN" not in env and "JPY_API_TOKEN" not in env
    assert "ORACULO_SANDBOX_LIMITS" not in env
    assert env["ORACULO_SERVER_URL"].endswith(f"/user/{ana.name}/")

    # The kernel's own token reaches ana's server (for %%chat and friends)...
    token = env["ORACULO_KERNEL_TOKEN"]
    kernel_auth = {"Authorization": f"token {token}"}
    hub = ana.client.hub.url
    async with httpx.AsyncClient(base_url=hub) as http:
        r = await http.get(f"/user/{ana.name}/api/v1/status", headers=kernel_auth)
        assert r.status_code == 200
        # ...and nothing else: not max's server, not the hub's user list, not new tokens.
        r = await http.get(f"/user/{max_.name}/api/v1/status", headers=kernel_auth)
        assert r.status_code == 403
        r = await http.get("/hub/api/users", headers=kernel_auth)
        assert r.status_code == 403
        r = await http.post(f"/hub/api/users/{ana.name}/tokens", headers=kernel_auth, json={})
        assert r.status_code == 403
        r = await http.get("/hub/api/user", headers=kernel_auth)
        assert r.status_code == 200 and r.json()["name"] == ana.name
    # From inside the kernel, the server answers on ORACULO_SERVER_URL with that token.
    code = (
        "import os, urllib.request\n"
        "req = urllib.request.Request(os.environ['ORACULO_SERVER_URL'] + 'api/v1/status',"
        " headers={'Authorization': 'token ' + os.environ['ORACULO_KERNEL_TOKEN']})\n"
        "print(urllib.request.urlopen(req, timeout=10).status)"
    )
    out = await run(ana, code=code)
    assert out["stdout"] == "200\n", out


async def test_memory_bomb_is_stopped_and_reported(users: dict[str, User]) -> None:
    ana = users["ana"]
    await run(ana, code="survivor = 'still here'")
    out = await run(ana, code="hog = bytearray(1024 * 1024 * 1024)")
    assert out["status"] == "error"
    assert out["error"]["name"] == "MemoryError" and out["error"]["limit"] == "memory"
    out = await run(ana, code="hog = [bytearray(64 * 1024 * 1024) for _ in range(20)]")
    assert out["error"]["name"] == "MemoryError"
    out = await run(ana, code="print(survivor)")  # the kernel lives on
    assert out["stdout"] == "still here\n"


async def test_huge_file_write_fails_cleanly(users: dict[str, User]) -> None:
    ana = users["ana"]
    code = (
        "import os\n"
        "try:\n"
        "    with open('huge.bin', 'wb') as f:\n"
        "        for _ in range(64):\n"
        "            f.write(b'0' * 1024 * 1024)\n"
        "finally:\n"
        "    size = os.path.getsize('huge.bin')\n"
        "    os.remove('huge.bin')\n"
    )
    out = await run(ana, code=code)
    assert out["error"]["name"] == "OSError" and out["error"]["limit"] == "file_size", out
    assert "File too large" in out["error"]["value"]
    out = await run(ana, code="size")
    assert out["results"] == [{"text/plain": str(16 * MIB)}]


async def test_fork_bomb_is_contained_and_everyone_stays_healthy(users: dict[str, User]) -> None:
    ana, max_ = users["ana"], users["max"]
    max_kernel = await max_.start_kernel()
    bomb = asyncio.create_task(run(ana, code=":(){ :|:& };:", language="bash", timeout=4))

    async def healthy_meanwhile() -> None:
        while not bomb.done():
            out = await max_.execute(max_kernel, "print(2 + 2)", timeout=20)
            assert out["stdout"] == "4\n"
            r = await max_.api("GET", f"/user/{max_.name}/api/v1/status")
            assert r.status_code == 200
            await asyncio.wait([bomb], timeout=0.3)

    await asyncio.gather(bomb, healthy_meanwhile())
    out = bomb.result()
    assert out["error"]["limit"] == "processes", out
    assert out["timeout"] is None or out["timeout"]["action"] == "restarted"
    # The kernel was restarted with nothing left over, and works.
    after = await run(ana, code="import psutil, os\nlen(psutil.Process(os.getpid()).children())")
    assert after["status"] == "ok" and after["results"] == [{"text/plain": "0"}], after
    r = await ana.api("GET", f"/user/{ana.name}/api/v1/status")
    assert r.status_code == 200


async def test_limits_come_from_the_users_groups(users: dict[str, User]) -> None:
    code = (
        "import resource\n"
        "(resource.getrlimit(resource.RLIMIT_DATA)[0] // 2**20,"
        " resource.getrlimit(resource.RLIMIT_FSIZE)[0] // 2**20,"
        " resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    ana = await run(users["ana"], code=code)
    rui = await run(users["rui"], code=code)
    assert ana["results"][0]["text/plain"] == "(768, 16, 256)"
    assert rui["results"][0]["text/plain"] == "(1536, 16, 256)"
    # The kernel cannot raise its own limits: the launcher set them, not the kernel.
    out = await run(
        users["ana"],
        code="import resource\nresource.setrlimit(resource.RLIMIT_DATA, (2**40, 2**40))",
    )
    assert out["error"]["name"] in ("ValueError", "PermissionError", "OSError"), out


async def test_workspace_status_shows_kernel_use_against_limits(users: dict[str, User]) -> None:
    ana = users["ana"]
    out = await run(ana, code="1")
    r = await ana.api("GET", f"/user/{ana.name}/api/v1/status")
    kernels = {k["id"]: k for k in r.json()["kernels"]}
    res = kernels[out["session"]]["resources"]
    assert res["memory_limit_bytes"] == 768 * MIB
    assert 0 < res["memory_bytes"] < 768 * MIB
    assert res["processes_limit"] == 64 and 0 < res["processes"] <= 64
    assert res["cpu_seconds"] > 0 and res["gpu_memory_mib"] == 0


async def test_audit_log_records_who_ran_what(users: dict[str, User]) -> None:
    ana, admin = users["ana"], users["admin"]
    out = await run(ana, code="audited = 'yes'")
    base = f"/user/{ana.name}/api/v1/execute/audit"
    r = await ana.api("GET", f"{base}?execution_id={out['execution_id']}")
    records = r.json()["records"]
    assert [rec["event"] for rec in records] == ["started", "finished"]
    started, finished = records
    assert started["actor"] == "ana" and started["origin"] == "api"
    assert started["code"] == "audited = 'yes'" and started["session"] == out["session"]
    assert finished["status"] == "ok" and finished["duration_seconds"] >= 0
    # The API's timeouts and limits are in it too.
    everything = (await ana.api("GET", f"{base}?limit=0")).json()["records"]
    assert any(rec.get("limit") == "timeout" for rec in everything)
    # An admin exports it.
    r = await admin.api("GET", f"{base}?format=jsonl")
    assert r.status_code == 200, r.status_code
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert any(rec["execution_id"] == out["execution_id"] for rec in lines)


async def test_audit_says_which_conversation_a_run_came_from(users: dict[str, User]) -> None:
    """The Chat panel's Run says its conversation; the audit keeps it (the default stays api)."""
    ana, max_ = users["ana"], users["max"]
    out = await run(ana, code="from_chat = 1", origin="chat", conversation_id="c0ffee42")
    assert out["origin"] == "chat" and out["conversation_id"] == "c0ffee42", out
    base = f"/user/{ana.name}/api/v1/execute/audit"
    r = await ana.api("GET", base, params={"execution_id": out["execution_id"]})
    records = r.json()["records"]
    assert [rec["event"] for rec in records] == ["started", "finished"], records
    for rec in records:
        assert rec["origin"] == "chat" and rec["conversation_id"] == "c0ffee42", rec
    plain = await run(ana, code="1")
    r = await ana.api("GET", base, params={"execution_id": plain["execution_id"]})
    assert all(
        rec["origin"] == "api" and "conversation_id" not in rec for rec in r.json()["records"]
    )
    url = f"/user/{ana.name}/api/v1/execute"
    for bad in (
        {"origin": "chat"},  # no conversation
        {"origin": "chat", "conversation_id": "../x"},  # not an id
        {"origin": "chat", "conversation_id": "a" * 65},
        {"conversation_id": "c0ffee42"},  # an api call claims no conversation
        {"origin": "agent:spy@0", "conversation_id": "c0ffee42"},  # agents run in process only
    ):
        r = await ana.api("POST", url, json={"code": "1", **bad})
        assert_envelope(r, 400, "invalid_request")
    # another user's token cannot run in ana's kernel on behalf of her conversation
    r = await max_.api(
        "POST", url, json={"code": "1", "origin": "chat", "conversation_id": "c0ffee42"}
    )
    assert r.status_code == 403, r.text


async def test_metrics_count_executions_and_limit_hits(users: dict[str, User]) -> None:
    ana = users["ana"]
    await run(ana, code="1")
    r = await ana.api("GET", f"/user/{ana.name}/metrics")
    assert r.status_code == 200
    assert 'oraculo_execute_seconds_count{origin="api",status="ok"}' in r.text
    assert 'oraculo_sandbox_limit_hits_total{limit="timeout"}' in r.text


def test_workspace_panel_shows_use_against_limits() -> None:
    from oraculo.extensions.panels.workspace import render_status

    kernel = {"id": "k1", "name": "oraculo", "execution_state": "idle", "connections": 1}
    resources = {
        "memory_bytes": 700 * MIB,
        "memory_limit_bytes": 768 * MIB,
        "cpu_seconds": 1.5,
        "cpu_limit_seconds": None,
        "processes": 12,
        "processes_limit": 64,
        "gpu_memory_mib": 0,
    }
    page = render_status({"user": "ana", "kernels": [{**kernel, "resources": resources}]})
    assert "700 MiB / 768 MiB per process" in page
    assert "1.5 s / no limit" in page and "12 / 64" in page
    assert 'data-testid="kernel-gpu"' in page
    assert "#e03131" in page  # memory at 91 %: the bar turns red
    assert "not sandboxed" in render_status({"kernels": [{**kernel, "resources": None}]})
