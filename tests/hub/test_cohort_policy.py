"""A cohort's AI policy takes effect live, where the work happens: the model service refuses
(exam window, AI off, a model not allowed, a daily token budget), the student's server refuses
chat, agents, voice and ``%%chat`` during an exam while code still runs, and the change applies
within 60 s with no restart of the hub, the model service or the student's server.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import websockets

from tests.harness import ADMIN_PASSWORD, HubClient, HubProcess, User, new_user, wait_for

pytestmark = pytest.mark.timeout(900)

ZONE = "Europe/Lisbon"


@pytest.fixture(scope="module")
async def cohort(hub: HubProcess) -> AsyncIterator[dict[str, Any]]:
    client = HubClient(hub)
    await client.login("admin", ADMIN_PASSWORD)
    admin = User("admin", await client.token("admin"), client)
    tag = uuid.uuid4().hex[:5]
    ivy = await new_user(client, f"ivy{tag}")
    stu = await new_user(client, f"stu{tag}")
    other = await new_user(client, f"oth{tag}")
    name = f"exam-{tag}"
    r = await admin.api("POST", "/hub/api/cohorts", json={"name": name, "instructors": [ivy.name]})
    assert r.status_code == 201, r.text
    r = await admin.api("POST", f"/hub/api/cohorts/{name}/members", json={"users": [stu.name]})
    assert r.status_code == 200, r.text
    await stu.spawn()
    try:
        yield {"name": name, "ivy": ivy, "stu": stu, "other": other, "hub": hub}
    finally:
        await stu.stop_server()
        await client.aclose()


async def model_chat(user: User, model: str = "default") -> httpx.Response:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 2,
        "temperature": 0,
    }
    return await user.api("POST", "/services/models/v1/chat/completions", json=body, timeout=120)


async def server_chat(user: User) -> httpx.Response:
    return await user.api(
        "POST",
        f"/user/{user.name}/api/v1/chat",
        json={
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 2,
            "temperature": 0,
        },
        timeout=120,
    )


async def put_policy(ivy: User, cohort: str, policy: dict[str, Any]) -> float:
    r = await ivy.api("PUT", f"/hub/api/cohorts/{cohort}/policy", json=policy)
    assert r.status_code == 200, r.text
    return time.monotonic()


async def until(check: Any, what: str) -> float:
    """Wait (at most 60 s, the promise) for ``check``; return the seconds it took."""
    start = time.monotonic()
    await wait_for(check, 60, what, interval=1)
    return time.monotonic() - start


async def test_exam_window_pauses_ai_and_code_still_runs(cohort: dict[str, Any]) -> None:
    name, ivy, stu, other = cohort["name"], cohort["ivy"], cohort["stu"], cohort["other"]
    assert (await model_chat(stu)).status_code == 200
    assert (await server_chat(stu)).status_code == 200

    now = dt.datetime.now(ZoneInfo(ZONE)).replace(tzinfo=None, second=0, microsecond=0)
    end = now + dt.timedelta(minutes=30)
    window = {
        "start": (now - dt.timedelta(minutes=5)).isoformat(),
        "end": end.isoformat(),
        "timezone": ZONE,
    }
    await put_policy(ivy, name, {"exam_windows": [window]})

    async def refused() -> bool:
        return (await server_chat(stu)).status_code == 403

    took = await until(refused, "the exam window to pause chat")
    print(f"exam window in force after {took:.1f}s")
    r = await server_chat(stu)
    body = r.json()
    assert body["type"] == "ai_paused", body
    assert f"cohort '{name}'" in body["message"]
    assert f"AI returns at {end:%Y-%m-%d %H:%M} {ZONE}" in body["message"], body["message"]
    assert {"message", "reason", "type"} <= set(body)

    # the model service refuses too (kernel code calling it directly gets no further)
    r = await model_chat(stu)
    assert r.status_code == 403 and r.json()["error"]["code"] == "ai_paused", r.text
    assert int(r.headers["Retry-After"]) > 0
    r = await stu.api("GET", "/services/models/v1/policy")
    assert r.json()["ai"]["available"] is False and r.json()["cohorts"] == [name]

    # agents and voice are refused before any work (the server keeps the policy a few seconds)
    async def agents_refused() -> bool:
        r = await stu.api(
            "POST", f"/user/{stu.name}/api/v1/agents/runs", json={"goal": "x", "agents": ["a"]}
        )
        return r.status_code == 403 and r.json()["type"] == "ai_paused"

    await until(agents_refused, "agents to be refused")
    ws_url = cohort["hub"].url.replace("http://", "ws://") + f"/user/{stu.name}/api/v1/voice"
    with pytest.raises(websockets.InvalidStatus) as refused_ws:
        async with websockets.connect(ws_url, additional_headers=stu.auth):
            pass
    assert refused_ws.value.response.status_code == 403

    # plain code runs on, in a kernel and through the execute API; %%chat says why it is not
    r = await stu.api(
        "POST", f"/user/{stu.name}/api/v1/execute", json={"code": "print(6 * 7)"}, timeout=120
    )
    assert r.status_code == 200 and r.json()["stdout"].strip() == "42", r.text
    kernel = await stu.start_kernel()
    out = await stu.execute(kernel, "%%chat\nSay hi.", timeout=120)
    assert f"cohort '{name}'" in out["stderr"] and "exam window" in out["stderr"], out
    out = await stu.execute(kernel, "print(sum(range(10)))")
    assert out["stdout"].strip() == "45"

    # someone outside the cohort is not affected
    assert (await model_chat(other)).status_code == 200

    # the instructor ends the window: chat answers again, nothing restarted
    await put_policy(ivy, name, {"exam_windows": []})

    async def answers() -> bool:
        return (await server_chat(stu)).status_code == 200

    took = await until(answers, "chat to answer again")
    print(f"exam window lifted after {took:.1f}s")
    assert (await model_chat(stu)).status_code == 200


async def test_models_ai_switch_and_daily_tokens(cohort: dict[str, Any]) -> None:
    name, ivy, stu = cohort["name"], cohort["ivy"], cohort["stu"]
    r = await model_chat(stu)
    assert r.status_code == 200, r.text
    model = r.json()["model"]  # its name; the policy names it, the request says "default"

    await put_policy(ivy, name, {"models": ["some-other-model"]})

    async def model_refused() -> bool:
        return (await model_chat(stu)).status_code == 403

    await until(model_refused, "the model to be refused")
    err = (await model_chat(stu)).json()["error"]
    assert err["code"] == "model_not_allowed" and err["param"] == "model"
    assert model in err["message"] and name in err["message"]

    await put_policy(ivy, name, {"models": [model], "ai": False})

    async def switched_off() -> bool:
        r = await server_chat(stu)
        return r.status_code == 403 and "switched off" in r.json()["message"]

    await until(switched_off, "AI switched off")
    # agents off alone: chat answers, agents do not
    await put_policy(ivy, name, {"agents": False, "voice": False})

    async def agents_off() -> bool:
        return (await server_chat(stu)).status_code == 200

    await until(agents_off, "chat back with agents off")

    async def agents_off_refused() -> bool:
        r = await stu.api(
            "POST", f"/user/{stu.name}/api/v1/agents/runs", json={"goal": "x", "agents": ["a"]}
        )
        return r.status_code == 403 and r.json()["type"] == "feature_off"

    await until(agents_off_refused, "agents to be off")
    r = await stu.api(
        "POST", f"/user/{stu.name}/api/v1/agents/runs", json={"goal": "x", "agents": ["a"]}
    )
    assert f"Agents is not available in cohort '{name}'" in r.json()["message"], r.text

    # a daily token budget per student: the student has used tokens today, 1 is spent
    await put_policy(ivy, name, {"tokens_per_day": 1})

    async def over_budget() -> bool:
        return (await model_chat(stu)).status_code == 429

    await until(over_budget, "the daily token budget")
    r = await model_chat(stu)
    assert r.json()["error"]["code"] == "budget_exceeded", r.text
    assert f"cohort '{name}' allows 1 tokens per student per day" in r.json()["error"]["message"]
    assert int(r.headers["Retry-After"]) > 0
    await put_policy(ivy, name, {})

    async def back() -> bool:
        return (await model_chat(stu)).status_code == 200

    await until(back, "chat back without a budget")


async def test_sandbox_limits_apply_at_the_next_kernel_start(cohort: dict[str, Any]) -> None:
    name, ivy, stu = cohort["name"], cohort["ivy"], cohort["stu"]
    nofile = "import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    before = await stu.start_kernel()
    assert (await stu.execute(before, nofile))["stdout"].strip() == "1024"
    await put_policy(ivy, name, {"sandbox": {"open_files": 77, "memory_mb": 999999}})

    async def known() -> bool:
        r = await stu.api("GET", "/services/models/v1/policy")
        return bool(r.json()["sandbox"])

    await until(known, "the policy's sandbox limits")
    after = await stu.start_kernel()
    assert (await stu.execute(after, nofile))["stdout"].strip() == "77"
    # a cohort lowers limits, never raises one past the operator's (4096 MiB by default)
    data = "import resource; print(resource.getrlimit(resource.RLIMIT_DATA)[0] // 2**20)"
    assert (await stu.execute(after, data))["stdout"].strip() == "4096"
    # the kernel that was running keeps what it started with
    assert (await stu.execute(before, nofile))["stdout"].strip() == "1024"
    await put_policy(ivy, name, {})


async def test_instructors_read_their_cohorts_usage_per_student(cohort: dict[str, Any]) -> None:
    name, ivy, stu, other = cohort["name"], cohort["ivy"], cohort["stu"], cohort["other"]
    path = "/services/models/v1/usage/summary"

    async def readable() -> bool:
        r = await ivy.api("GET", path, params={"group": name, "period": "day"})
        return r.status_code == 200

    await until(readable, "the instructor to read the cohort's usage")
    r = await ivy.api("GET", path, params={"group": name, "period": "day"})
    per_student = {u["user"]: u for u in r.json()["users"]}
    assert per_student[stu.name]["tokens"] > 0, r.json()
    # a member reads the cohort's totals, not each student's; an outsider nothing
    r = await stu.api("GET", path, params={"group": name, "period": "day"})
    assert r.status_code == 200 and "users" not in r.json()
    r = await other.api("GET", path, params={"group": name, "period": "day"})
    assert r.status_code == 403 and r.json()["error"]["param"] == "group"
    r = await ivy.api("GET", path, params={"user": stu.name, "period": "day"})
    assert r.status_code == 403
