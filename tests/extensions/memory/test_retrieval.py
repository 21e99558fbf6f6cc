"""Workspace retrieval quality: passages cut by structure to fit the embedder's window, the
watcher that indexes new files without a Reindex, and citations kept for relevant questions only.

Chunking is checked against all-MiniLM-L6-v2's own tokenizer (from its package, as the model
service loads it); the index runs in-process against the session hub's real model service with a
user's token; the watcher is real inotify on a temporary folder.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.retrieval import _window_tokens, make_embeddings
from oraculo.extensions.memory.rag import (
    WorkspaceIndex,
    embedded_text,
    identifier_words,
    passage_budget,
)
from oraculo.extensions.memory.rag_files import chunk_file
from oraculo.extensions.memory.watch import TreeWatcher
from tests.harness import HubClient, HubProcess, new_user, wait_for

REPO = Path(__file__).resolve().parents[3]
CORPUS = REPO / "tests" / "fixtures" / "workspace"

GUIDE = """# Deploying the ledger

Intro paragraph about the ledger service.

## Rolling restarts

```bash
# this comment is not a heading
ledgerctl restart --rolling
```

## Backups

Run `ledgerctl snapshot --to=s3` nightly.
"""


def _lines(text: str, a: int, b: int) -> str:
    return "\n".join(text.splitlines()[a - 1 : b])


def test_markdown_passages_follow_headings_and_keep_fences_whole() -> None:
    chunks = chunk_file(Path("guide.md"), GUIDE.encode(), 2000, 150, 200)
    assert [c.heading for c in chunks] == [
        "Deploying the ledger",
        "Deploying the ledger › Rolling restarts",
        "Deploying the ledger › Backups",
    ]
    assert "ledgerctl restart --rolling" in chunks[1].text
    assert "# this comment is not a heading" in chunks[1].text
    for c in chunks:
        assert c.text == _lines(GUIDE, c.start_line, c.end_line), "line ranges are exact"


def test_rst_titles_and_python_definitions_are_headings() -> None:
    rst = "Wine data\n=========\n\nIntro.\n\nAttributes\n----------\n\n- Proline\n"
    chunks = chunk_file(Path("wine.rst"), rst.encode(), 2000, 150, 200)
    assert chunks[-1].heading == "Wine data › Attributes" and "Proline" in chunks[-1].text
    py = 'import os\n\n\nclass Store:\n    """A store."""\n\n    def get(self):\n        return 1\n'
    chunks = chunk_file(Path("store.py"), py.encode(), 2000, 150, 12)
    assert any(c.heading == "class Store › def get" and "return 1" in c.text for c in chunks)


def test_every_passage_fits_the_embedders_window() -> None:
    """Real token counts, with the path and heading path that are embedded with each passage,
    over this repository's code and the test corpus (notebooks, Markdown, text, PDF)."""
    tokenizer, window = _window_tokens()
    assert WorkspaceIndex.window_tokens.default_value == window
    files = [*CORPUS.rglob("*.*"), *(REPO / "oraculo").rglob("*.py"), REPO / "README.md"]
    n, biggest = 0, 0
    for path in files:
        display = str(path.relative_to(REPO))
        budget = passage_budget(window, display)
        for c in chunk_file(path, path.read_bytes(), 2000, 150, budget):
            tokens = len(tokenizer.encode(embedded_text(display, c)).ids)  # with [CLS], [SEP]
            assert tokens <= window, (display, c.start_line, tokens)
            n, biggest = n + 1, max(biggest, tokens)
    assert n > 300 and biggest > window // 2, (n, biggest)


def test_identifier_words_split_camel_case() -> None:
    words = identifier_words("call getComputedStyle(el) and parseHTTPResponse; snake_case stays")
    assert words == "get computed style parse http response"


async def test_the_watcher_sees_new_files_and_folders(tmp_path: Path) -> None:
    changes = asyncio.Queue[int]()
    (tmp_path / "node_modules").mkdir()
    watcher = TreeWatcher(
        [str(tmp_path)],
        descend=lambda folder, name: not name.startswith(".") and name != "node_modules",
        wanted=lambda name: name.endswith(".md") and not name.startswith("."),
        on_change=lambda: changes.put_nowait(1),
        log=logging.getLogger("test"),
        delay=0.05,
    )
    assert await watcher.start() and watcher.watching == 1
    try:
        (tmp_path / ".hidden.md").write_text("no")
        (tmp_path / "image.png").write_bytes(b"no")
        (tmp_path / "node_modules" / "x.md").write_text("no")
        (tmp_path / "new.md").write_text("yes")
        await asyncio.wait_for(changes.get(), 10)
        assert changes.empty(), "one burst, one call"
        (tmp_path / "sub" / "deeper").mkdir(parents=True)
        await asyncio.wait_for(changes.get(), 10)
        await wait_for(lambda: _async(watcher.watching == 3), 10, "the new folders watched")
        (tmp_path / "sub" / "deeper" / "note.md").write_text("yes")
        await asyncio.wait_for(changes.get(), 10)
        (tmp_path / "new.md").unlink()
        await asyncio.wait_for(changes.get(), 10)
    finally:
        watcher.close()


async def _async(value: Any) -> Any:
    return value


# --- the index against the real model service ----------------------------------------------------


@pytest.fixture(scope="module")
async def token(models_hub: HubProcess) -> AsyncIterator[str]:
    client = HubClient(models_hub)
    user = await new_user(client, f"rag-{uuid.uuid4().hex[:6]}")
    try:
        yield user.token
    finally:
        await user.client.aclose()
        await client.aclose()


async def test_index_watches_fits_and_cites_only_relevant(
    tmp_path: Path, models_hub: HubProcess, token: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "guide.md").write_text(GUIDE * 3)
    (home / "notes.txt").write_text(("Long prose about many unrelated matters. " * 60 + "\n") * 4)
    embeddings, http = make_embeddings(f"{models_hub.url}/services/models/", token)
    sent: list[int] = []

    async def count(request: httpx.Request) -> None:
        if request.url.path.endswith("/embeddings"):
            sent.append(1)

    http.event_hooks["request"].append(count)
    index = WorkspaceIndex(
        embeddings, root=str(home), path=str(tmp_path / "index"), interval=0, watch_delay=0.1
    )
    try:
        index.start()
        status = await wait_for(
            lambda: _async(index.status()["state"] == "idle" and index.status()), 60, "first run"
        )
        # every passage fitted the window: one request per batch, none refused and retried
        assert status["chunks"] > 10 and len(sent) == 1, (status, len(sent))

        # a new file is indexed without a Reindex or a periodic run
        (home / "deploy.md").write_text("# Pager\n\nThe on-call rota lives in `pagerRotaV2`.\n")

        async def found() -> Any:
            hits = await index.search("where is the on-call rota kept?", 3)
            return [h for h in hits if h.path == "deploy.md"]

        (hit,) = await wait_for(found, 30, "the new file to be indexed by the watcher")
        assert "pagerRotaV2" in hit.text and hit.start_line == 1

        # identifiers by their words; small talk gets no passages to cite
        hits = await index.search("pager rota v2", 3)
        assert hits and hits[0].path == "deploy.md"
        for small_talk in ("Hello!", "Thanks, that helps.", "Who are you?"):
            assert await index.search(small_talk, 5) == [], small_talk
    finally:
        await index.stop()
        await http.aclose()
