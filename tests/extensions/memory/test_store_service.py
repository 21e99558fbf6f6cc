"""The hub's store service (``oraculo.stores``): every user's memories and workspace index in one
process, out of the users' servers, tried from the attacker's side.

The session hub runs it (it is on by default), so every memory and index test in the suite goes
through it; these tests check what only it promises: servers load no LanceDB, the tables live in
the hub's data folder, only a user's server (never a kernel, never another user) reaches a user's
tables, bad requests change nothing, and a server's old local store moves there once, its folder
renamed rather than deleted.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import tarfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from oraculo.extensions.memory.store import LanceStore
from oraculo.extensions.memory.tables import TABLES
from tests.extensions.memory.test_memory import (
    MEMORY,
    assert_envelope,
    call,
    put_file,
    reindex,
    server_process,
)
from tests.harness import HubClient, HubProcess, User, new_user

STORES = "/services/stores/api/v1"


@pytest.fixture(scope="module")
async def keeper(models_hub: HubProcess) -> AsyncIterator[User]:
    client = HubClient(models_hub)
    user = await new_user(client, f"keep-{uuid.uuid4().hex[:6]}")
    await user.spawn()
    try:
        yield user
    finally:
        await user.client.aclose()
        await client.aclose()


async def stores(
    user_or_token: User | str | None, method: str, path: str, hub: HubProcess, **kw: Any
) -> httpx.Response:
    """A request straight to the store service (through the proxy), as whoever holds the token."""
    headers = dict(kw.pop("headers", {}))
    if isinstance(user_or_token, User):
        headers.update(user_or_token.auth)
    elif user_or_token:
        headers["Authorization"] = f"Bearer {user_or_token}"
    async with httpx.AsyncClient(base_url=hub.url, timeout=60) as c:
        return await c.request(method, f"{STORES}/{path}", headers=headers, **kw)


async def op(who: User | str | None, hub: HubProcess, table: str, **body: Any) -> httpx.Response:
    return await stores(who, "POST", f"tables/{table}", hub, json=body)


async def test_a_servers_memories_and_index_live_in_the_service_and_it_loads_no_lancedb(
    keeper: User, models_hub: HubProcess
) -> None:
    r = await call(keeper, "POST", MEMORY, json={"key": "office", "value": "Room 4.12, Lisbon"})
    assert r.status_code == 201, r.text
    hits = (await call(keeper, "GET", MEMORY, params={"q": "where is the office?"})).json()
    assert hits["hits"][0]["key"] == "office", hits
    await put_file(keeper, "notes/plan.md", "# Plan\n\nShip the quarterly churn model by May.\n")
    status = await reindex(keeper)
    assert status["state"] == "idle" and status["chunks"] >= 1, status
    r = await call(keeper, "GET", "api/v1/memory/index", params={"q": "churn model"})
    assert r.status_code == 200 and r.json()["passages"][0]["path"] == "notes/plan.md", r.text

    # The tables are in the hub's data folder, not the user's home (which their code can write).
    folder = models_hub.data_dir / "stores" / keeper.name
    assert {p.name for p in folder.iterdir()} == {"memories.lance", "passages.lance"}
    assert (folder.stat().st_mode & 0o777) == 0o700
    assert ((models_hub.data_dir / "stores").stat().st_mode & 0o777) == 0o700
    home = models_hub.data_dir / "users" / keeper.name
    assert not (home / ".oraculo" / "memory").exists()
    assert (home / ".oraculo" / "workspace-manifest.json").is_file()

    # Neither LanceDB nor Arrow was loaded into the server to do all that.
    maps = Path(f"/proc/{server_process(models_hub, keeper.name).pid}/maps").read_text()
    loaded = {lib for lib in ("/lancedb/", "/pyarrow/", "/lance/") if lib in maps}
    assert loaded == set(), f"the server loaded {loaded}"


async def test_only_the_users_own_server_reaches_their_tables(
    keeper: User, mallory: User, models_hub: HubProcess
) -> None:
    r = await call(keeper, "POST", MEMORY, json={"key": "secret plan", "value": "acquire rival"})
    assert r.status_code in (200, 201), r.text
    mine = await op(keeper, models_hub, "memories", op="where", condition="true")
    assert mine.status_code == 200, mine.text
    assert "secret plan" in {m["key"] for m in mine.json()["result"]}

    # No token, a made-up one, and a JupyterHub token that is not a user's server's.
    assert_envelope(await op(None, models_hub, "memories", op="count"), 401, "unauthenticated")
    assert_envelope(await op("0" * 32, models_hub, "memories", op="count"), 401)
    # The kernel's own narrow token: code in the user's kernel cannot reach the tables.
    kernel = await keeper.start_kernel()
    out = await keeper.execute(kernel, "import os; print(os.environ['ORACULO_KERNEL_TOKEN'])")
    kernel_token = out["stdout"].strip()
    assert len(kernel_token) == 32, out
    for body in ({"op": "count"}, {"op": "where", "condition": "true"}):
        assert_envelope(await op(kernel_token, models_hub, "memories", **body), 403, "forbidden")
    r = await stores(kernel_token, "POST", "import", models_hub, content=b"x")
    assert_envelope(r, 403, "forbidden")

    # Another user's token reaches only her own tables: there is no way to name keeper's.
    theirs = await op(mallory, models_hub, "memories", op="where", condition="true")
    assert theirs.status_code == 200, theirs.text
    assert "secret plan" not in {m["key"] for m in theirs.json()["result"]}
    for path in (f"tables/{keeper.name}/memories", f"users/{keeper.name}/tables/memories"):
        r = await stores(mallory, "POST", path, models_hub, json={"op": "count"})
        assert_envelope(r, 404, "not_found")
    r = await op(mallory, models_hub, "memories", op="delete", condition="true")
    assert r.status_code == 200
    still = await op(keeper, models_hub, "memories", op="count", condition="key = 'secret plan'")
    assert still.json()["result"] == 1


@pytest.mark.parametrize(
    ("body", "status", "why"),
    [
        ({"op": "drop_table"}, 400, "unknown op"),
        ({"op": "where"}, 400, "condition"),
        ({"op": "where", "condition": "key = = 'x'"}, 400, "refused"),
        ({"op": "where", "condition": "true", "limit": 0}, 400, "limit"),
        ({"op": "upsert", "rows": []}, 400, "rows"),
        ({"op": "upsert", "rows": [{"key": "k"}]}, 400, "vector"),
        ({"op": "upsert", "rows": [{"key": "k", "vector": [0.1, 0.2]}]}, 409, "dimensional"),
        ({"op": "hybrid", "vector": ["a"], "text": "x", "k": 5}, 400, "vector"),
        ({"op": "keys_newest_first", "column": "value", "offset": 0, "limit": 5}, 400, "column"),
    ],
)
async def test_bad_requests_get_the_error_shape_and_change_nothing(
    keeper: User, models_hub: HubProcess, body: dict[str, Any], status: int, why: str
) -> None:
    r = await call(keeper, "POST", MEMORY, json={"key": "keepsake", "value": "grandma's ring"})
    assert r.status_code in (200, 201), r.text
    before = (await op(keeper, models_hub, "memories", op="count")).json()["result"]
    err = assert_envelope(await op(keeper, models_hub, "memories", **body), status)
    assert why in err["message"], err
    after = await op(keeper, models_hub, "memories", op="count")
    assert after.json()["result"] == before
    r = await call(keeper, "GET", MEMORY, params={"key": "keepsake"})
    assert r.status_code == 200 and r.json()["value"] == "grandma's ring"


async def test_bad_bodies_and_routes(keeper: User, models_hub: HubProcess) -> None:
    r = await stores(keeper, "POST", "tables/memories", models_hub, content=b"{not json")
    assert_envelope(r, 400, "invalid_request")
    r = await stores(keeper, "POST", "tables/memories", models_hub, json=[1, 2])
    assert_envelope(r, 400, "invalid_request")
    r = await stores(keeper, "POST", "tables/..%2F..%2Fetc", models_hub, json={"op": "count"})
    assert r.status_code in (400, 404)
    assert_envelope(await stores(keeper, "POST", "tables/users", models_hub, json={}), 404)
    async with httpx.AsyncClient(base_url=models_hub.url) as c:
        assert (await c.get("/services/stores/health")).json() == {"status": "ok"}


def legacy_store(home: Path) -> tuple[Path, LanceStore, dict[str, Any]]:
    """A server's own store from before the service: LanceDB in ~/.oraculo/memory, with a
    memory and the workspace index's manifest."""
    folder = home / ".oraculo" / "memory"
    folder.mkdir(parents=True)
    store = LanceStore(str(folder), TABLES["memories"], log=logging.getLogger("test"))
    vector = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    now = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    row = {
        "key": "dentist",
        "value": "Dr. Okafor, Tuesdays at 9",
        "scope": None,
        "text": "dentist: Dr. Okafor, Tuesdays at 9",
        "vector": (vector / np.linalg.norm(vector)).tolist(),
        "created_at": now,
        "updated_at": now,
    }
    return folder, store, row


async def test_an_old_local_store_moves_to_the_service_once_and_is_kept(
    models_hub: HubProcess,
) -> None:
    client = HubClient(models_hub)
    user = await new_user(client, f"old-{uuid.uuid4().hex[:6]}")
    try:
        home = models_hub.data_dir / "users" / user.name
        folder, store, row = legacy_store(home)
        await store.upsert([row])
        await store.close()
        manifest = {"files": {"a.md": {"mtime_ns": 1, "size": 1, "chunks": 0}}}
        (folder / "workspace-manifest.json").write_text(json.dumps(manifest))
        await user.spawn()

        r = await call(user, "GET", MEMORY, params={"key": "dentist"})
        assert r.status_code == 200, r.text
        assert r.json()["value"] == "Dr. Okafor, Tuesdays at 9"
        assert r.json()["created_at"].startswith("2026-03-01")
        oraculo = home / ".oraculo"
        assert not folder.exists()
        moved = oraculo / "memory.moved-to-store-service"
        assert (moved / "memories.lance").is_dir()  # renamed, never deleted
        assert json.loads((oraculo / "workspace-manifest.json").read_text()) == manifest
        assert (models_hub.data_dir / "stores" / user.name / "memories.lance").is_dir()

        # A second import would overwrite what the service now holds: refused.
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(moved / "memories.lance", arcname="memories.lance")
        r = await stores(user, "POST", "import", models_hub, content=buf.getvalue())
        assert_envelope(r, 409, "conflict")
        r = await call(user, "POST", MEMORY, json={"key": "gym", "value": "Mondays"})
        assert r.status_code == 201, r.text
        keys = {m["key"] for m in (await call(user, "GET", MEMORY)).json()["items"]}
        assert keys == {"dentist", "gym"}
    finally:
        await user.client.aclose()
        await client.aclose()


def tar_of(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    "entries",
    [
        [(member("memories.lance/../../../escaped"), b"x")],
        [(member("/etc/evil"), b"x")],
        [(member("memories.lance/link", tarfile.SYMTYPE, "/etc/shadow"), None)],
        [(member("memories.lance/hard", tarfile.LNKTYPE, "/etc/shadow"), None)],
        [(member("bob/memories.lance/data"), b"x")],
        [(member("memories.lance/dev", tarfile.CHRTYPE), None)],
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink", "other-folder", "device"],
)
async def test_an_import_that_reaches_outside_is_refused_and_writes_nothing(
    models_hub: HubProcess, entries: list[tuple[tarfile.TarInfo, bytes | None]]
) -> None:
    client = HubClient(models_hub)
    user = await new_user(client, f"imp-{uuid.uuid4().hex[:6]}")
    try:
        root = models_hub.data_dir / "stores"
        before = sorted(p.name for p in root.iterdir())
        r = await stores(user, "POST", "import", models_hub, content=tar_of(entries))
        assert_envelope(r, 400, "invalid_request")
        assert sorted(p.name for p in root.iterdir()) == before
        assert not (models_hub.data_dir / "escaped").exists()
        assert not (root.parent.parent / "escaped").exists()
        r = await stores(user, "POST", "import", models_hub, content=b"not a tar at all")
        assert_envelope(r, 400, "invalid_request")
    finally:
        await user.client.aclose()
        await client.aclose()
