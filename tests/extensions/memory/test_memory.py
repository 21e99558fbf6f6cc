"""``/api/v1/memory`` and the workspace index, through a real hub with its model service.

A user of this module's own (``memo-…``) signs up on the session hub (``models_hub``, which runs
the model service, so embeddings are real all-MiniLM-L6-v2 vectors), spawns a server and talks
to it through the proxy with their token; mallory (the session's other user) must be refused
everywhere. Files reach the user's home through the Jupyter contents API, as a browser's would.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import itertools
import json
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from oraculo.extensions.base.embeddings import EmbeddingClient
from oraculo.extensions.base.modelclient import ModelClient
from oraculo.extensions.memory.rag import WorkspaceIndex
from oraculo.extensions.memory.rag_files import chunk_file, split_lines
from tests.harness import HubClient, HubProcess, User, new_user, wait_for

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CORPUS = FIXTURES / "workspace"
MEMORY = "api/v1/memory"
INDEX = "api/v1/memory/index"


def assert_envelope(r: httpx.Response, status: int, type_: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"message", "reason", "type"}, body
    assert all(isinstance(v, str) and v for v in body.values()), body
    if type_:
        assert body["type"] == type_, body
    assert "Traceback" not in r.text
    return dict(body)


@pytest.fixture(scope="module")
async def memo(models_hub: HubProcess) -> AsyncIterator[User]:
    client = HubClient(models_hub)
    user = await new_user(client, f"memo-{uuid.uuid4().hex[:6]}")
    await user.spawn()
    try:
        yield user
    finally:
        await user.client.aclose()
        await client.aclose()


async def call(user: User, method: str, path: str, **kw: Any) -> httpx.Response:
    return await user.api(method, f"/user/{user.name}/{path}", **kw)


async def put_file(user: User, path: str, data: bytes | str | dict[str, Any]) -> None:
    """Write a file (or a notebook, given a dict) into the user's home, folders included."""
    parts = path.split("/")
    for i in range(1, len(parts)):
        r = await call(
            user, "PUT", f"api/contents/{'/'.join(parts[:i])}", json={"type": "directory"}
        )
        assert r.status_code in (200, 201), r.text
    if isinstance(data, dict):
        body: dict[str, Any] = {"type": "notebook", "format": "json", "content": data}
    elif isinstance(data, bytes):
        body = {"type": "file", "format": "base64", "content": base64.b64encode(data).decode()}
    else:
        body = {"type": "file", "format": "text", "content": data}
    r = await call(user, "PUT", f"api/contents/{path}", json=body)
    assert r.status_code in (200, 201), r.text


async def reindex(user: User, timeout: float = 120) -> dict[str, Any]:
    """Trigger an indexing run and wait for one that started after the trigger to finish."""
    since = dt.datetime.now(dt.UTC).isoformat()
    r = await call(user, "POST", INDEX)
    assert r.status_code == 202, r.text

    async def done() -> dict[str, Any] | None:
        status = (await call(user, "GET", INDEX)).json()
        run = status.get("last_run") or {}
        if status["state"] != "running" and run.get("started", "") >= since:
            return dict(status)
        return None

    result: dict[str, Any] = await wait_for(done, timeout, "an indexing run", 0.2)
    return result


# --- memories: the happy path ------------------------------------------------------------------


async def test_upsert_get_list_search_delete(memo: User) -> None:
    r = await call(memo, "POST", MEMORY, json={"key": "favourite colour", "value": "teal"})
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"/user/{memo.name}/{MEMORY}?key=favourite%20colour"
    created = r.json()
    assert created["key"] == "favourite colour" and created["scope"] is None

    r = await memo.api("GET", r.headers["Location"])
    assert r.status_code == 200 and r.json()["value"] == "teal"

    r = await call(
        memo,
        "POST",
        MEMORY,
        json={"key": "favourite colour", "value": "dark teal", "scope": "prefs"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["value"] == "dark teal" and r.json()["created_at"] == created["created_at"]

    for key, value in [
        ("team's deadline", "The quarterly report is due on Friday the 14th."),
        ("preferred plotting library", "Use Altair for charts, never matplotlib's defaults."),
        ("manager", "Maria manages the analytics team."),
    ]:
        r = await call(
            memo, "POST", MEMORY, json={"key": key, "value": value, "user_id": memo.name}
        )
        assert r.status_code == 201, r.text

    r = await call(memo, "GET", MEMORY, params={"limit": 2})
    page = r.json()
    assert page["total"] == 4 and page["limit"] == 2 and page["offset"] == 0
    assert [m["key"] for m in page["items"]] == ["manager", "preferred plotting library"]
    rest = (await call(memo, "GET", MEMORY, params={"limit": 2, "offset": 2})).json()["items"]
    assert [m["key"] for m in rest] == ["team's deadline", "favourite colour"]

    hits = (await call(memo, "GET", MEMORY, params={"q": "when is the report due?"})).json()["hits"]
    assert hits[0]["key"] == "team's deadline", hits
    assert hits[0]["score"] >= hits[-1]["score"]
    # Full text finds an exact word the embedding may not weigh: "Altair".
    hits = (await call(memo, "GET", MEMORY, params={"q": "Altair", "k": 1})).json()["hits"]
    assert [h["key"] for h in hits] == ["preferred plotting library"]

    r = await call(memo, "DELETE", MEMORY, params={"key": "team's deadline"})
    assert r.status_code == 204 and not r.content
    assert_envelope(
        await call(memo, "GET", MEMORY, params={"key": "team's deadline"}), 404, "not_found"
    )
    assert_envelope(
        await call(memo, "DELETE", MEMORY, params={"key": "team's deadline"}), 404, "not_found"
    )


async def test_delete_all_needs_confirmation(memo: User) -> None:
    r = await call(memo, "POST", MEMORY, json={"key": "doomed", "value": "x"})
    assert r.status_code in (200, 201)
    assert_envelope(await call(memo, "DELETE", MEMORY), 400, "invalid_request")
    r = await call(memo, "DELETE", MEMORY, params={"confirm": "yes"})
    assert_envelope(r, 400, "invalid_request")
    assert (await call(memo, "GET", MEMORY)).json()["total"] > 0
    r = await call(memo, "DELETE", MEMORY, params={"confirm": "delete-all"})
    assert r.status_code == 204
    assert (await call(memo, "GET", MEMORY)).json() == {
        "items": [],
        "total": 0,
        "limit": 50,
        "offset": 0,
    }


# --- bad input, other users ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"not json", "JSON"),
        (b"[1, 2]", "object"),
        (b"", "object"),
        ({"value": "no key"}, "key"),
        ({"key": "k"}, "value"),
        ({"key": 5, "value": "v"}, "key"),
        ({"key": "k", "value": {"nested": True}}, "value"),
        ({"key": "k", "value": 3}, "value"),
        ({"key": "", "value": "v"}, "key"),
        ({"key": "   ", "value": "v"}, "key"),
        ({"key": "a\x00b", "value": "v"}, "control"),
        ({"key": "k" * 257, "value": "v"}, "256"),
        ({"key": "k", "value": "x" * 16385}, "16384"),
        ({"key": "k", "value": "v", "scope": "no spaces please"}, "scope"),
        ({"key": "k", "value": "v", "scope": 7}, "scope"),
        ({"key": "k", "value": "v", "extra": 1}, "extra"),
    ],
)
async def test_bad_bodies_are_400(memo: User, body: Any, why: str) -> None:
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = await call(memo, "POST", MEMORY, **kw)
    assert why.lower() in assert_envelope(r, 400, "invalid_request")["message"].lower()


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "ten"},
        {"limit": "0"},
        {"limit": "100000"},
        {"offset": "-1"},
        {"q": ""},
        {"q": "x", "k": "0"},
        {"q": "x" * 5000},
        {"key": ""},
    ],
)
async def test_bad_queries_are_400(memo: User, params: dict[str, str]) -> None:
    assert_envelope(await call(memo, "GET", MEMORY, params=params), 400, "invalid_request")


async def test_index_bad_queries_are_400(memo: User) -> None:
    for params in ({"q": " "}, {"q": "x", "k": "many"}, {"q": "x", "k": "101"}):
        assert_envelope(await call(memo, "GET", INDEX, params=params), 400, "invalid_request")


async def test_user_id_of_someone_else_is_403(memo: User, mallory: User) -> None:
    body = {"key": "k", "value": "v", "user_id": mallory.name}
    assert_envelope(await call(memo, "POST", MEMORY, json=body), 403, "forbidden")
    for method, path in [("GET", MEMORY), ("DELETE", MEMORY), ("GET", INDEX), ("POST", INDEX)]:
        params = {"user_id": mallory.name, "key": "k"}
        assert_envelope(await call(memo, method, path, params=params), 403, "forbidden")
    r = await call(
        memo, "POST", MEMORY, params={"user_id": "someone"}, json={"key": "k", "value": "v"}
    )
    assert_envelope(r, 403, "forbidden")
    assert_envelope(await call(memo, "GET", MEMORY, params={"key": "k"}), 404, "not_found")


async def test_another_users_token_is_refused_everywhere(memo: User, mallory: User) -> None:
    await call(memo, "POST", MEMORY, json={"key": "secret", "value": "the vault code is 4711"})
    attempts: list[tuple[str, str, Any]] = [
        ("GET", MEMORY, {}),
        ("GET", MEMORY, {"params": {"key": "secret"}}),
        ("GET", MEMORY, {"params": {"q": "vault"}}),
        ("POST", MEMORY, {"json": {"key": "secret", "value": "overwritten"}}),
        ("DELETE", MEMORY, {"params": {"key": "secret"}}),
        ("DELETE", MEMORY, {"params": {"confirm": "delete-all"}}),
        ("GET", INDEX, {}),
        ("GET", INDEX, {"params": {"q": "vault"}}),
        ("POST", INDEX, {}),
    ]
    async with httpx.AsyncClient(base_url=memo.client.hub.url, timeout=30) as anonymous:
        for method, path, kw in attempts:
            url = f"/user/{memo.name}/{path}"
            r = await anonymous.request(method, url, headers=mallory.auth, **kw)
            assert r.status_code == 403, (method, path, r.status_code)
            assert "4711" not in r.text
            r = await anonymous.request(method, url, **kw)
            assert r.status_code in (302, 401, 403), (method, path, r.status_code)
    r = await call(memo, "GET", MEMORY, params={"key": "secret"})
    assert r.json()["value"] == "the vault code is 4711"


# --- nothing is lost ----------------------------------------------------------------------------


async def test_two_tabs_writing_at_once_lose_nothing(memo: User) -> None:
    tabs = [
        User(memo.name, memo.token, HubClient(memo.client.hub)) for _ in range(2)
    ]  # two independent connections, as two browser tabs have
    try:

        async def write(tab: int, i: int) -> int:
            r = await call(
                tabs[tab], "POST", MEMORY, json={"key": f"tab{tab}-{i}", "value": f"v{i}"}
            )
            return r.status_code

        async def update(tab: int, i: int) -> int:
            body = {"key": "shared", "value": f"tab {tab} write {i}"}
            return (await call(tabs[tab], "POST", MEMORY, json=body)).status_code

        jobs = [write(t, i) for t in (0, 1) for i in range(15)]
        jobs += [update(t, i) for t in (0, 1) for i in range(5)]
        codes = await asyncio.gather(*jobs)
        assert codes.count(201) == 31 and codes.count(200) == 9, codes
    finally:
        for tab in tabs:
            await tab.client.aclose()
    listing = (await call(memo, "GET", MEMORY, params={"limit": 500})).json()
    keys = {m["key"] for m in listing["items"]}
    assert {f"tab{t}-{i}" for t in (0, 1) for i in range(15)} | {"shared"} <= keys
    shared = (await call(memo, "GET", MEMORY, params={"key": "shared"})).json()
    assert shared["value"].startswith("tab ")


def server_process(hub: HubProcess, name: str) -> psutil.Process:
    assert hub.proc is not None
    for p in psutil.Process(hub.proc.pid).children(recursive=True):
        try:
            if "oraculo.singleuser" in " ".join(p.cmdline()):
                if p.environ().get("JUPYTERHUB_USER") == name:
                    return p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    raise AssertionError(f"no server process for {name}")


async def test_server_killed_mid_writes_leaves_a_readable_store(
    memo: User, models_hub: HubProcess
) -> None:
    acknowledged: list[str] = []
    server = server_process(models_hub, memo.name)

    async def writer(w: int) -> None:
        for i in range(1000):
            key = f"kill-{w}-{i}"
            try:
                r = await call(memo, "POST", MEMORY, json={"key": key, "value": f"write {i}"})
            except httpx.HTTPError:
                return
            if r.status_code not in (200, 201):
                return
            acknowledged.append(key)

    writers = [asyncio.ensure_future(writer(w)) for w in range(4)]

    async def enough() -> bool:
        return len(acknowledged) >= 20

    await wait_for(enough, 60, "20 acknowledged writes")
    server.send_signal(signal.SIGKILL)  # while four writes are in flight
    await asyncio.wait_for(asyncio.gather(*writers), 60)

    async def gone() -> bool:  # the kernel may take a moment on a loaded machine
        try:
            return not server.is_running() or server.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    await wait_for(gone, 30, "the killed server to be gone")

    await memo.stop_server()
    await memo.spawn()
    r = await call(memo, "GET", MEMORY, params={"limit": 500})
    assert r.status_code == 200, r.text
    keys = {m["key"] for m in r.json()["items"]}
    assert set(acknowledged) <= keys
    hits = (await call(memo, "GET", MEMORY, params={"q": acknowledged[0], "k": 3})).json()["hits"]
    assert hits
    r = await call(memo, "POST", MEMORY, json={"key": "after the crash", "value": "still writable"})
    assert r.status_code == 201, r.text


# --- the workspace index --------------------------------------------------------------------------


async def test_retrieval_quality_on_the_fixture_corpus(memo: User) -> None:
    for path in sorted(CORPUS.rglob("*")):
        if path.is_file():
            rel = f"corpus/{path.relative_to(CORPUS).as_posix()}"
            if path.suffix == ".ipynb":
                await put_file(memo, rel, json.loads(path.read_text()))
            elif path.suffix == ".pdf":
                await put_file(memo, rel, path.read_bytes())
            else:
                await put_file(memo, rel, path.read_text())
    status = await reindex(memo)
    assert status["state"] == "idle", status
    assert status["files"] >= 10 and status["chunks"] >= 10, status

    questions = json.loads((FIXTURES / "questions.json").read_text())
    first = 0
    for item in questions:
        r = await call(memo, "GET", INDEX, params={"q": item["q"], "k": 3})
        passages = r.json()["passages"]
        top = passages[0]["path"] if passages else None
        expected = "corpus/" + item["path"]
        first += top == expected
        print("ok  " if top == expected else "MISS", repr(item["q"]), "->", top)
    rate = first / len(questions)
    print(f"retrieval hit rate (right file ranked first): {first}/{len(questions)} = {rate:.0%}")
    assert rate >= 0.8

    # A notebook passage cites its cell; text outputs are indexed with it.
    r = await call(memo, "GET", INDEX, params={"q": "EMEA revenue grew year over year", "k": 5})
    cited = [
        p for p in r.json()["passages"] if p["path"] == "corpus/notebooks/sales_analysis.ipynb"
    ]
    assert any(p["cell"] == 2 and p["kind"] == "output" and "12%" in p["text"] for p in cited)
    assert all(p["start_line"] >= 1 and p["end_line"] >= p["start_line"] for p in cited)


async def test_indexing_is_incremental(memo: User, models_hub: HubProcess) -> None:
    await put_file(memo, "inc/a.md", "# Alpha\n\nThe alpha project ships in May.\n")
    await put_file(memo, "inc/b.txt", "Bravo notes: the bravo server lives in rack 12.\n")
    await put_file(memo, "inc/c.py", "def charlie():\n    return 'charlie'\n")
    # The contents API refuses hidden paths; the server's home is its working directory.
    home = Path(server_process(models_hub, memo.name).cwd())
    for rel, text in [
        ("inc/.hidden/secret.md", "hidden zulu words"),
        ("inc/.ipynb_checkpoints/a-checkpoint.md", "checkpoint yankee words"),
    ]:
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text(text)
    await put_file(memo, "inc/blob.txt", b"binary\x00\x01\x02 xray")
    first = await reindex(memo)
    assert first["state"] == "idle", first

    await put_file(memo, "inc/b.txt", "Bravo notes: the bravo server moved to rack 14.\n")
    await put_file(memo, "inc/d.md", "Delta: the delta dashboard refreshes hourly.\n")
    r = await call(memo, "DELETE", "api/contents/inc/c.py")
    assert r.status_code == 204
    second = await reindex(memo)
    # The watcher may have run the index already (any part of it): count files, not runs.
    assert second["files"] == first["files"], (first, second)  # d added, c removed
    assert second["chunks"] == first["chunks"]  # b changed, d added, c removed: one chunk each

    third = (await reindex(memo))["last_run"]
    assert (third["indexed"], third["removed"], third["failed"]) == (0, 0, 0), third

    async def search(q: str) -> list[dict[str, Any]]:
        r = await call(memo, "GET", INDEX, params={"q": q, "k": 10})
        return list(r.json()["passages"])

    assert any("rack 14" in p["text"] for p in await search("where is the bravo server"))
    assert not any("rack 12" in p["text"] for p in await search("where is the bravo server"))
    assert not any(p["path"] == "inc/c.py" for p in await search("charlie function"))
    paths = {p["path"] for p in await search("zulu yankee xray words")}
    assert not paths & {"inc/.hidden/secret.md", "inc/.ipynb_checkpoints/a-checkpoint.md"}
    assert "inc/blob.txt" not in paths

    # A restarted server whose files did not change runs the index without loading LanceDB
    # (a user who does not use memory keeps a light server), and counts what is there.
    before = (await call(memo, "GET", INDEX)).json()
    await memo.stop_server()
    await memo.spawn()

    async def started_run() -> dict[str, Any] | None:
        status = (await call(memo, "GET", INDEX)).json()
        return dict(status) if status["last_run"] and status["state"] == "idle" else None

    after = await wait_for(started_run, 120, "the index's start-up run")
    assert after["last_run"]["indexed"] == 0 and after["chunks"] == before["chunks"], after
    maps = Path(f"/proc/{server_process(models_hub, memo.name).pid}/maps").read_text()
    assert "_lancedb" not in maps
    assert any("rack 14" in p["text"] for p in await search("where is the bravo server"))
    assert any(e["path"] == "inc/blob.txt" for e in second["errors"]), second["errors"]


# --- chunking and the file walk, in-process ------------------------------------------------------


def test_split_lines_overlaps_at_line_boundaries() -> None:
    text = "\n".join(f"line {i:03d} " + "x" * 40 for i in range(1, 101))
    windows = split_lines(text, size=500, overlap=120)
    assert windows[0][0] == 1 and windows[-1][1] == 100
    for (a1, b1, t1), (a2, _, _) in itertools.pairwise(windows):
        assert a1 < a2 <= b1, "neighbours overlap by whole lines"
        assert t1.splitlines()[0].startswith(f"line {a1:03d}")
        assert len(t1) <= 500
    assert split_lines("", 500, 100) == []
    assert split_lines("one very long line " * 100, 200, 50)[0][:2] == (1, 1)


def test_notebook_chunks_keep_cells_and_outputs() -> None:
    path = CORPUS / "notebooks" / "churn_model.ipynb"
    chunks = chunk_file(path, path.read_bytes(), 900, 150)
    kinds = [(c.cell, c.kind) for c in chunks]
    assert kinds == [
        (0, "markdown"),
        (1, "code"),
        (1, "output"),
        (2, "code"),
        (2, "output"),
        (3, "markdown"),
    ]
    assert chunks[2].text == "AUC 0.87" and chunks[2].cell_id == "c1"
    csv = chunk_file(
        CORPUS / "data" / "weather.csv", (CORPUS / "data" / "weather.csv").read_bytes(), 900, 150
    )
    assert len(csv) == 1 and "columns: date, city, temperature_c" in csv[0].text
    assert "180 rows" in csv[0].text
    pdf = CORPUS / "reports" / "incident_postmortem.pdf"
    (page,) = chunk_file(pdf, pdf.read_bytes(), 900, 150)
    assert page.page == 1 and "WAL archiving" in page.text


def test_the_walk_skips_what_it_should(tmp_path: Path) -> None:
    root = tmp_path / "home"
    for rel, data in {
        "a.md": b"ok",
        "sub/b.py": b"ok",
        ".git/config.txt": b"no",
        "sub/.ipynb_checkpoints/b-checkpoint.py": b"no",
        ".hidden.md": b"no",
        "node_modules/x.md": b"no",
        "agents/cleaner.md": b"no",  # ~/agents: skip_paths
        "sub/agents/c.md": b"ok",  # only the root's agents/ folder
        "big.txt": b"x" * 2000,
        "image.png": b"no",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "link.md").symlink_to(root / "a.md")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "course.md").write_bytes(b"ok")
    index = WorkspaceIndex(
        EmbeddingClient(), root=str(root), extra_paths=[str(shared)], path=str(tmp_path / "store"),
        max_file_bytes=1000,
    )  # fmt: skip
    found, too_many = index._scan()
    assert sorted(found) == sorted(
        ["a.md", str(shared / "course.md"), "sub/agents/c.md", "sub/b.py"]
    )
    assert not too_many


async def test_a_query_is_embedded_once(memo: User, models_hub: HubProcess) -> None:
    """Chat searches memories and the workspace with the same query: one embeddings request."""
    sent: list[str] = []

    async def count(request: httpx.Request) -> None:
        sent.append(json.loads(request.content)["input"][0])

    models = ModelClient(models_url=f"{models_hub.url}/services/models/", token=memo.token)
    client = EmbeddingClient(models=models)
    models._http().event_hooks["request"].append(count)
    try:
        a, b = await asyncio.gather(
            client.embed_query("where is the bravo server"),
            client.embed_query("where is the bravo server"),
        )
        again = await client.embed_query("where is the bravo server")
        other = await client.embed_query("charlie function")
    finally:
        await models.aclose()
    assert a == b == again and len(a) == 384
    assert other != a
    assert sent == ["where is the bravo server", "charlie function"]
