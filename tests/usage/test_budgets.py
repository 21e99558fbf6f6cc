"""Budgets through a real model service: real chat, speech and kernel-compute usage, then a
refusal for each unit that names the budget and when it resets; changes apply without restart."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import httpx
import openai
import pytest

from oraculo.models.usage import EVENT_COLUMNS
from tests.harness import wait_for
from tests.models.conftest import ModelServer, assert_envelope, bearer

from .conftest import ADA, BOB, OPERATOR, STUDENT1, STUDENT2


def _tomorrow() -> str:
    d = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    return f"{d.isoformat()}T00:00:00Z"


def _next_month() -> str:
    d = dt.datetime.now(dt.UTC).date().replace(day=1) + dt.timedelta(days=32)
    return f"{d.replace(day=1).isoformat()}T00:00:00Z"


async def put_budget(http: httpx.AsyncClient, **budget: Any) -> None:
    r = await http.put("/v1/budgets", json=budget, headers=bearer(OPERATOR))
    assert r.status_code == 200, r.text
    assert r.json() == budget


async def delete_budget(http: httpx.AsyncClient, **key: str) -> None:
    r = await http.delete("/v1/budgets", params=key, headers=bearer(OPERATOR))
    assert r.status_code == 204, r.text


async def week(http: httpx.AsyncClient, key: str, **params: str) -> dict[str, Any]:
    r = await http.get("/v1/usage/summary", params=params, headers=bearer(key))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def used(http: httpx.AsyncClient, key: str, unit: str, more_than: float = 0) -> Any:
    async def check() -> Any:
        totals = (await week(http, key))["totals"]
        return totals if totals[unit] > more_than else None

    return await wait_for(check, 20, f"{unit} usage to be recorded")


async def test_token_budget_refuses_chat_until_changed(
    usage_server: ModelServer, http: httpx.AsyncClient
) -> None:
    async with openai.AsyncOpenAI(base_url=usage_server.v1, api_key=ADA, max_retries=0) as ada:
        r = await ada.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Say hi"}], max_tokens=4
        )
        assert r.usage is not None and r.usage.total_tokens > 0
        totals = await used(http, ADA, "tokens")
        assert totals["tokens"] == r.usage.total_tokens

        await put_budget(http, scope="user", name="ada", period="day", unit="tokens", limit=1)
        with pytest.raises(openai.RateLimitError) as e:
            await ada.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": "again"}], max_tokens=4
            )
        assert e.value.code == "budget_exceeded"
        raw = await http.post(
            "/v1/chat/completions",
            json={"model": "smollm2", "messages": [{"role": "user", "content": "x"}]},
            headers=bearer(ADA),
        )
        err = assert_envelope(raw, 429)
        assert err["type"] == "insufficient_quota" and err["code"] == "budget_exceeded"
        assert "daily token budget of user ada (1 tokens)" in err["message"]
        assert f"resets at {_tomorrow()}" in err["message"]
        assert 1 <= int(raw.headers["Retry-After"]) <= 86400
        # bob is not bound by ada's budget; speech is another unit
        async with openai.AsyncOpenAI(base_url=usage_server.v1, api_key=BOB, max_retries=0) as b:
            await b.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )

        # the operator raises it: in force at once, no restart
        await put_budget(http, scope="user", name="ada", period="day", unit="tokens", limit=1e6)
        await ada.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "ok?"}], max_tokens=2
        )
        await delete_budget(http, scope="user", name="ada", period="day", unit="tokens")


async def test_voice_budget_refuses_speech_and_transcription(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/v1/audio/speech",
        json={"model": "tts-1", "input": "Budgets are counted in seconds.", "voice": "alloy"},
        headers=bearer(BOB),
    )
    assert r.status_code == 200, r.text
    spoken = r.content
    totals = await used(http, BOB, "voice_seconds")
    assert 1.0 < totals["voice_seconds"] < 10.0

    await put_budget(http, scope="user", name="bob", period="month", unit="voice_seconds", limit=1)
    r = await http.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", spoken, "audio/wav")},
        data={"model": "whisper-1"},
        headers=bearer(BOB),
    )
    err = assert_envelope(r, 429)
    assert "monthly voice-seconds budget of user bob (1 voice_seconds)" in err["message"]
    assert f"resets at {_next_month()}" in err["message"]
    r = await http.post(
        "/v1/audio/speech",
        json={"model": "tts-1", "input": "more", "voice": "alloy"},
        headers=bearer(BOB),
    )
    assert_envelope(r, 429)
    # a voice budget does not bound chat
    r = await http.post(
        "/v1/chat/completions",
        json={"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
        headers=bearer(BOB),
    )
    assert r.status_code == 200, r.text
    # the refusals are recorded (the operator's dashboard counts them)
    r = await http.get("/v1/usage", params={"user": "bob"}, headers=bearer(OPERATOR))
    assert any(d["error_type"] == "budget_exceeded" for d in r.json()["data"])
    await delete_budget(http, scope="user", name="bob", period="month", unit="voice_seconds")


async def test_group_compute_budget_refuses_new_executions(http: httpx.AsyncClient) -> None:
    # what a user's server reports for its kernels (the real sampler: test_sampler.py)
    r = await http.post(
        "/v1/usage/kernels",
        json={"samples": [{"kernel_id": "k1", "cpu_seconds": 4.5, "kernel_name": "oraculo"}]},
        headers=bearer(STUDENT1),
    )
    assert r.status_code == 204, r.text
    r = await http.get("/v1/budget", params={"units": "cpu_seconds"}, headers=bearer(STUDENT2))
    assert r.status_code == 200, r.text  # no budget yet

    await put_budget(http, scope="group", name="cohort", period="day", unit="cpu_seconds", limit=4)
    # student2 has used nothing, but the cohort's budget is shared
    r = await http.get(
        "/v1/budget", params={"units": "cpu_seconds,gpu_seconds"}, headers=bearer(STUDENT2)
    )
    err = assert_envelope(r, 429)
    assert "daily CPU-seconds budget of group cohort (4 cpu_seconds)" in err["message"]
    assert f"resets at {_tomorrow()}" in err["message"]
    # the budget's state, for the user's own panel
    r = await http.get("/v1/budget", headers=bearer(STUDENT2))
    (b,) = r.json()["data"]
    assert b["exceeded"] and b["used"] == 4.5 and b["counted_for"] == "group:cohort"
    # the group's week, for a member and for the operator (who also sees per-user totals)
    g = await week(http, STUDENT2, group="cohort")
    assert g["totals"]["cpu_seconds"] == 4.5 and "users" not in g
    g = await week(http, OPERATOR, group="cohort")
    by_user = {u["user"]: u["cpu_seconds"] for u in g["users"]}
    assert by_user == {"student1": 4.5, "student2": 0}  # student2's row: the refusal
    assert g["users"][0]["user"] == "student1"
    assert g["totals"]["cost"] == pytest.approx(4.5 / 3600 * 36.0)
    await delete_budget(http, scope="group", name="cohort", period="day", unit="cpu_seconds")


async def test_cost_budget_bounds_every_unit(http: httpx.AsyncClient) -> None:
    await put_budget(http, scope="group", name="cohort", period="month", unit="cost", limit=0.01)
    r = await http.post(
        "/v1/chat/completions",
        json={"model": "smollm2", "messages": [{"role": "user", "content": "x"}]},
        headers=bearer(STUDENT1),
    )
    err = assert_envelope(r, 429)
    assert "monthly cost budget of group cohort (0.01)" in err["message"]
    await delete_budget(http, scope="group", name="cohort", period="month", unit="cost")


async def test_only_operators_see_and_change_budgets(http: httpx.AsyncClient) -> None:
    budget = {"scope": "user", "name": "ada", "period": "day", "unit": "tokens", "limit": 0}
    assert_envelope(await http.put("/v1/budgets", json=budget), 401)
    assert_envelope(await http.put("/v1/budgets", json=budget, headers=bearer(ADA)), 403)
    assert_envelope(await http.get("/v1/budgets", headers=bearer(ADA)), 403)
    r = await http.delete("/v1/budgets", params={**budget, "limit": ""}, headers=bearer(ADA))
    assert_envelope(r, 403)
    r = await http.get("/v1/budgets", headers=bearer(OPERATOR))
    assert {b["name"] for b in r.json()["data"]} >= {"nobody"}  # from the config file
    for bad in ({**budget, "unit": "bananas"}, {**budget, "limit": -1}, {**budget, "x": 1}):
        err = assert_envelope(
            await http.put("/v1/budgets", json=bad, headers=bearer(OPERATOR)), 400
        )
        assert err["type"] == "invalid_request_error"
    r = await http.put("/v1/budgets", content=b"[", headers=bearer(OPERATOR))
    assert_envelope(r, 400)
    r = await http.delete("/v1/budgets", params={"scope": "user"}, headers=bearer(OPERATOR))
    assert_envelope(r, 400)
    r = await http.delete(
        "/v1/budgets",
        params={"scope": "user", "name": "zz", "period": "day", "unit": "tokens"},
        headers=bearer(OPERATOR),
    )
    assert_envelope(r, 404)


async def test_users_read_only_their_own_usage_and_report_only_their_own(
    http: httpx.AsyncClient,
) -> None:
    assert_envelope(await http.get("/v1/usage/summary"), 401)
    r = await http.get("/v1/usage/summary", params={"user": "bob"}, headers=bearer(ADA))
    assert_envelope(r, 403)
    r = await http.get("/v1/usage/summary", params={"group": "cohort"}, headers=bearer(ADA))
    assert_envelope(r, 403)
    r = await http.get("/v1/budget", params={"units": "bananas"}, headers=bearer(ADA))
    assert_envelope(r, 400)
    r = await http.get("/v1/usage/summary", params={"period": "year"}, headers=bearer(ADA))
    assert_envelope(r, 400)
    now = time.time()
    r = await http.get(
        "/v1/usage/summary", params={"since": now, "until": now - 1}, headers=bearer(ADA)
    )
    assert_envelope(r, 400)
    for bad in (
        {"samples": [{"kernel_id": "k", "cpu_seconds": -1}]},
        {"samples": [{"kernel_id": "", "cpu_seconds": 1}]},
        {"samples": [{"kernel_id": "k", "cpu_seconds": 1, "user": "bob"}]},
        {"samples": "x"},
        {"samples": [], "running": [{"kernel_id": ""}]},
        {"samples": [], "running": "x"},
    ):
        r = await http.post("/v1/usage/kernels", json=bad, headers=bearer(ADA))
        assert_envelope(r, 400)
    # a report counts for whoever the credential names, never for a name in the body
    before = (await week(http, BOB))["totals"]["cpu_seconds"]
    r = await http.post(
        "/v1/usage/kernels",
        json={"samples": [{"kernel_id": "bob-kernel", "cpu_seconds": 2}]},
        headers=bearer(ADA),
    )
    assert r.status_code == 204
    assert (await week(http, BOB))["totals"]["cpu_seconds"] == before
    mine = await week(http, ADA)
    assert mine["user"] == "ada" and mine["totals"]["cpu_seconds"] >= 2


async def test_billing_export_is_for_operators(http: httpx.AsyncClient) -> None:
    import io

    import polars as pl

    r = await http.get("/v1/usage/export", params={"by": "user"}, headers=bearer(OPERATOR))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = pl.read_csv(io.BytesIO(r.content))
    assert {"ada", "bob", "student1"} <= set(rows["user"])
    r = await http.get(
        "/v1/usage/export", params={"by": "group", "format": "parquet"}, headers=bearer(OPERATOR)
    )
    assert r.status_code == 200, r.text
    groups = pl.read_parquet(io.BytesIO(r.content))
    assert "cohort" in set(groups["group"])
    assert_envelope(await http.get("/v1/usage/export", headers=bearer(ADA)), 403)
    r = await http.get("/v1/usage/export", params={"format": "xls"}, headers=bearer(OPERATOR))
    assert_envelope(r, 400)
    r = await http.get("/v1/usage/export", params={"by": "model"}, headers=bearer(OPERATOR))
    assert_envelope(r, 400)


async def test_a_request_names_its_conversation_and_the_row_carries_it(
    http: httpx.AsyncClient,
) -> None:
    """``X-Oraculo-Ref`` (what chat and agents send) labels the caller's own usage row, so the
    Usage panel can rank conversations and runs; junk in it is dropped, not stored."""
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 4,
        "temperature": 0,
    }
    for ref in ("conversation:c0ffee-ref-test", "x" * 300, "tab\there"):
        r = await http.post(
            "/v1/chat/completions",
            json=body,
            headers={**bearer(STUDENT2), "X-Oraculo-Ref": ref},
        )
        assert r.status_code == 200, r.text

    async def rows() -> list[list[Any]] | None:
        r = await http.get("/v1/usage/events", headers=bearer(STUDENT2))
        assert r.status_code == 200, r.text
        got = r.json()
        chats = [
            row
            for row in got["rows"]
            if row[got["columns"].index("endpoint")] == "chat.completions"
        ]
        return chats if len(chats) >= 3 else None

    chats = await wait_for(rows, 20, "three chat rows")
    refs = sorted(str(row[EVENT_COLUMNS.index("ref")]) for row in chats[:3])
    assert refs == ["None", "None", "conversation:c0ffee-ref-test"]


async def test_the_root_is_a_page_standalone_too(http: httpx.AsyncClient) -> None:
    r = await http.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "smollm2-135m-instruct" in r.text and "Bearer" in r.text
    assert "default-src 'none'" in r.headers["content-security-policy"]
