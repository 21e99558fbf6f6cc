"""Retrieval over the user's workspace: an incremental index of their files, in LanceDB.

:class:`WorkspaceIndex` walks the server's root folder (the user's home) and any configured
shared folders, reads notebooks (markdown, code and text outputs, by cell), ``.md``, ``.py``,
``.txt``, ``.rst``, ``.csv``/``.tsv`` (header and a sample) and PDFs (``pypdf``), cuts them into
passages that follow their structure and fit the embedding model's window
(:mod:`oraculo.extensions.memory.rag_files`) and stores each chunk with its
embedding in the ``passages`` table next to the memories (``~/.oraculo/memory/``)::

    id: "<path>#<n>"  path  kind  cell: int32|null  cell_id  page: int32|null
    start_line, end_line: int32   text (the chunk)
    search_text ("<path>\\n<heading path>\\n<chunk>\\n<camelCase words split>", BM25)
    vector: fixed_size_list<float32>[dim]

New, saved, moved and deleted files are noticed within seconds (``watch``, Linux inotify:
:mod:`oraculo.extensions.memory.watch`); the periodic run (``interval``) catches what a watch
cannot see. Incremental: ``workspace-manifest.json`` (same folder) records each file's mtime,
size and SHA-256. A run re-reads only files whose mtime or size changed, re-embeds only those
whose hash changed, and deletes the passages of files that are gone. It is crash-safe: a file's
manifest entry is dropped (and written) before its passages are replaced and written back after,
so a run killed half-way redoes that file next time. Skipped: hidden files and folders (``.git``,
``.ipynb_checkpoints``, ``.oraculo``), ``skip_dirs``, ``skip_paths`` (``~/agents``), symlinks,
binaries, files over ``max_file_bytes``. A search returns only passages relevant to the query
(``min_similarity``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, Integer, List, Set, Unicode, default
from traitlets.config import LoggingConfigurable

from oraculo.extensions.base.embeddings import EmbeddingClient
from oraculo.extensions.base.errors import BadRequest, OraculoError
from oraculo.extensions.memory.backend import open_store
from oraculo.extensions.memory.models import Passage
from oraculo.extensions.memory.nofollow import read_no_follow
from oraculo.extensions.memory.rag_chunks import estimate_tokens
from oraculo.extensions.memory.rag_files import SUFFIXES, Chunk, Unreadable, chunk_file
from oraculo.extensions.memory.store import default_path, sql_string
from oraculo.extensions.memory.tables import TABLES
from oraculo.extensions.memory.watch import TreeWatcher

TABLE = "passages"
MANIFEST = "workspace-manifest.json"
#: Version of the chunking; an index built by another is rebuilt.
CHUNKER = 2


def embedded_text(display: str, chunk: Chunk) -> str:
    """What is embedded for a passage: its path, its heading path and its text."""
    return "\n".join(p for p in (display, chunk.heading, chunk.text) if p)


def passage_budget(window: int, display: str) -> int:
    """Tokens a passage's text and heading path may take: the window, less 10 %, the [CLS] and
    [SEP] tokens and the path that is embedded with it (by :func:`estimate_tokens`)."""
    return int(window * 0.9) - 2 - estimate_tokens(display) - 1


_CAMEL = re.compile(r"[A-Za-z][a-z0-9]*[A-Z][A-Za-z0-9]*")
_PARTS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z0-9]+")


def identifier_words(text: str) -> str:
    """The words inside the camelCase identifiers of ``text`` (``getComputedStyle`` → ``get
    computed style``), for the full-text index: snake_case and kebab-case are split by its
    tokenizer already, camelCase is not."""
    seen: dict[str, None] = {}
    for m in _CAMEL.finditer(text):
        seen.setdefault(" ".join(p.lower() for p in _PARTS.findall(m.group())), None)
    return " ".join(seen)


class WorkspaceIndex(LoggingConfigurable):
    """Indexes the workspace's files in the background and searches them."""

    root = Unicode(
        config=True,
        help="Folder indexed, recursively. Default: the Jupyter server's root_dir, else ~.",
    )
    extra_paths = List(
        Unicode(),
        config=True,
        help="""More folders to index, e.g. a hub group's shared folder
        (/srv/oraculo/groups/cohort-a). Their passages carry absolute paths. Default:
        ORACULO_SHARED_DIRS (os.pathsep-separated), which the hub sets to the folders of the
        user's groups.""",
    )
    path = Unicode(
        config=True,
        help="""LanceDB database folder of the index (shared with the memories).
        Default ~/.oraculo/memory.""",
    )
    skip_dirs = Set(
        Unicode(),
        {"__pycache__", "node_modules", "site-packages", "venv", "env", "build", "dist"},
        config=True,
        help="Folder names never descended into (hidden folders are always skipped).",
    )
    skip_paths = Set(
        Unicode(),
        {"agents"},
        config=True,
        help="""Folders under the root (relative paths) not indexed. ~/agents holds the agent
        notebooks (their instructions and tools), which are not the user's material: cited
        with a question about the user's data they only mislead.""",
    )
    max_file_bytes = Integer(
        5 * 1024 * 1024, config=True, help="Files larger than this are skipped (bytes)."
    )
    max_files = Integer(
        20_000, config=True, help="Most files indexed; past it the run stops and says so."
    )
    window_tokens = Integer(
        256,
        config=True,
        help="""Tokens the embedding model reads (all-MiniLM-L6-v2: 256). Passages are cut so
        that path, heading and text fit it by a conservative estimate, with 10 % to spare:
        nothing is refused by the model service or silently cut.""",
    )
    chunk_chars = Integer(
        2000,
        config=True,
        help="Longest passage in characters (the token budget usually ends a passage first).",
    )
    overlap_chars = Integer(
        150, config=True, help="Characters repeated where a block too long for one passage is cut."
    )
    batch_chunks = Integer(256, config=True, help="Chunks embedded and written per batch.")
    interval = Float(
        600.0,
        config=True,
        help="Seconds between background re-indexing runs; 0 turns the periodic run off.",
    )
    index_on_start = Bool(True, config=True, help="Run the indexer once when the server starts.")
    watch = Bool(
        True,
        config=True,
        help="""Watch the indexed folders (Linux inotify) and index a new, saved, moved or
        deleted file within seconds, without waiting for the periodic run or Reindex.""",
    )
    watch_delay = Float(
        1.0,
        config=True,
        help="Seconds of quiet after a change before the index runs (a burst is one run).",
    )
    text_weight = Float(
        2.0,
        config=True,
        help="""Weight of the full-text (BM25) ranking against the semantic one in the fused
        ranking. Identifiers, flags and file names are found by their words far more reliably
        than by a small embedding model (benchmarks/retrieval.py).""",
    )
    min_similarity = Float(
        0.35,
        config=True,
        help="""A passage is returned only if its cosine similarity to the query reaches this,
        or reaches min_similarity_matched and it shares a word with the query. Keeps passages
        out of answers to "Hello!". -1 returns every passage found.""",
    )
    min_similarity_matched = Float(
        0.22,
        config=True,
        help="Least similarity of a passage that also matches the query's words (see above).",
    )
    vector_index_rows = Integer(
        10_000,
        config=True,
        help="Build an approximate vector index once this many passages are stored; 0 never.",
    )

    @default("root")
    def _default_root(self) -> str:
        return os.path.expanduser("~")

    @default("extra_paths")
    def _default_extra_paths(self) -> list[str]:
        raw = os.environ.get("ORACULO_SHARED_DIRS", "")
        return [p for p in raw.split(os.pathsep) if p]

    @default("path")
    def _default_path(self) -> str:
        return default_path()

    def __init__(self, embeddings: EmbeddingClient, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embeddings = embeddings
        self.store = open_store(
            self.path, TABLES[TABLE], log=self.log, vector_index_rows=self.vector_index_rows
        )
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._watcher: TreeWatcher | None = None
        self._status: dict[str, Any] = {
            "state": "never",
            "files": 0,
            "chunks": 0,
            "last_run": None,
            "errors": [],
        }

    # --- public API --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``{state, files, chunks, last_run, errors, root, extra_paths, embeddings}``.

        ``state``: never, running, idle or error; ``last_run``: started/finished (ISO),
        seconds, scanned, indexed, unchanged, removed, failed, chunks_added; ``errors``: up to
        50 ``{path, error}`` (files that could not be read, or why the whole run failed).
        """
        return {
            **self._status,
            "root": self.root,
            "extra_paths": list(self.extra_paths),
            "embeddings": self.embeddings.configured,
        }

    async def refresh(self) -> dict[str, Any]:
        """Run the indexer now (after any run in progress) and return the status."""
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        try:
            await self._run()
        finally:
            self._lock.release()
        return self.status()

    def trigger(self) -> dict[str, Any]:
        """Start a run in the background (unless one is already queued); return the status."""
        if self._waiting == 0:
            task = asyncio.ensure_future(self._quiet_refresh())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return {**self.status(), "queued": True}

    async def search(self, q: str, k: int = 5) -> list[Passage]:
        """Up to ``k`` passages best matching ``q`` (semantic and BM25 rankings fused), only
        those relevant to it (see ``min_similarity``): none for a greeting."""
        if not isinstance(q, str) or not q.strip():
            raise BadRequest("q must be a non-empty string")
        if len(q) > 4096:
            raise BadRequest("q is longer than 4096 characters")
        if not 1 <= k <= 100:
            raise BadRequest("k must be between 1 and 100")
        # Embed first: without a model service this is a clear 503 even on an empty store.
        vector = await self.embeddings.embed_query(q)
        rows = await self.store.hybrid(vector, q, k, text_weight=self.text_weight)
        rows = [r for r in rows if self._relevant(r)]
        return [
            Passage(
                **{f: r[f] for f in Passage.model_fields if f not in ("score", "similarity")},
                score=r["_score"],
                similarity=r["_similarity"],
            )
            for r in rows
        ]

    def _relevant(self, row: dict[str, Any]) -> bool:
        similarity = float(row["_similarity"])
        if similarity >= self.min_similarity:
            return True
        return bool(row.get("_text_match")) and similarity >= self.min_similarity_matched

    def start(self) -> None:
        """Begin background indexing (at once if ``index_on_start``, then every ``interval``)."""
        if self._loop_task is None:
            self._loop_task = asyncio.ensure_future(self._periodic())

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        tasks = [*self._tasks, *([self._loop_task] if self._loop_task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.store.close()

    # --- the run -----------------------------------------------------------------------------

    async def _periodic(self) -> None:
        if self.watch:  # before the first run, so that nothing saved during it is missed
            await self._start_watching()
        if self.index_on_start:
            await self._quiet_refresh()
        while self.interval > 0:
            await asyncio.sleep(self.interval)
            await self._quiet_refresh()

    async def _start_watching(self) -> None:
        watcher = TreeWatcher(
            [str(root) for root, _ in await asyncio.to_thread(self._roots)],
            descend=self._descend,
            wanted=lambda name: not name.startswith(".") and Path(name).suffix.lower() in SUFFIXES,
            on_change=self.trigger,
            log=self.log,
            delay=self.watch_delay,
        )
        try:
            if await watcher.start():
                self._watcher = watcher
                self.log.info("watching %d folders for changes to index", watcher.watching)
        except Exception:
            self.log.exception("watching the workspace failed: the periodic run stays")
            watcher.close()

    async def _quiet_refresh(self) -> None:
        try:
            await self.refresh()
        except Exception:
            self.log.exception("workspace indexing failed")

    async def _run(self) -> None:
        started = dt.datetime.now(dt.UTC)
        t0 = time.perf_counter()
        self._status["state"] = "running"
        stats = {"scanned": 0, "indexed": 0, "unchanged": 0, "removed": 0, "failed": 0}
        stats["chunks_added"] = 0
        errors: list[dict[str, str]] = []
        try:
            if not self.embeddings.configured:
                await self.embeddings.embed(["probe"])  # raises the clear 503
            await self._index(stats, errors)
        except OraculoError as e:
            self._status["state"] = "error"
            errors.insert(0, {"path": "", "error": e.message})
        except Exception as e:
            self.log.exception("workspace indexing failed")
            self._status["state"] = "error"
            errors.insert(0, {"path": "", "error": f"indexing failed ({type(e).__name__})"})
        else:
            self._status["state"] = "idle"
        manifest = await asyncio.to_thread(self._read_manifest)
        errors += [
            {"path": p, "error": e["error"]}
            for p, e in sorted(manifest["files"].items())
            if e.get("error")
        ]
        if self.store.is_open:
            chunks = await self.store.count()
        else:
            # A run that changed nothing leaves LanceDB unloaded (~55 MB of a server's memory,
            # benchmarks/density.py): a server whose user does not use memory stays light. The
            # manifest's counts are those of the last run that wrote.
            chunks = sum(int(e.get("chunks", 0)) for e in manifest["files"].values())
        self._status.update(
            files=sum(1 for e in manifest["files"].values() if not e.get("error")),
            chunks=chunks,
            errors=errors[:50],
            last_run={
                "started": started.isoformat(),
                "finished": dt.datetime.now(dt.UTC).isoformat(),
                "seconds": round(time.perf_counter() - t0, 3),
                **stats,
            },
        )

    async def _index(self, stats: dict[str, int], errors: list[dict[str, str]]) -> None:
        manifest = await asyncio.to_thread(self._read_manifest)
        if manifest.get("model") not in (None, self.embeddings.model):
            self.log.info("embedding model changed: rebuilding the workspace index")
            await self.store.delete("true")
            manifest = {"files": {}}
        elif manifest["files"] and manifest.get("chunker") != CHUNKER:
            self.log.info("passages are cut differently now: rebuilding the workspace index")
            await self.store.delete("true")
            manifest = {"files": {}}
        manifest["model"] = self.embeddings.model
        manifest["chunker"] = CHUNKER
        found, too_many = await asyncio.to_thread(self._scan)
        if too_many:
            errors.append(
                {"path": "", "error": f"more than {self.max_files} files; the rest skipped"}
            )
        stats["scanned"] = len(found)
        files: dict[str, Any] = manifest["files"]

        gone = [p for p in files if p not in found]
        for i in range(0, len(gone), 200):
            batch = gone[i : i + 200]
            for p in batch:
                del files[p]
            await asyncio.to_thread(self._write_manifest, manifest)
            await self._delete_paths(batch)
        stats["removed"] = len(gone)

        pending: list[tuple[str, dict[str, Any], list[Chunk]]] = []
        n_pending = 0
        for display, (abs_path, mtime_ns, size) in found.items():
            old = files.get(display)
            if old and old["mtime_ns"] == mtime_ns and old["size"] == size:
                stats["unchanged"] += 1
                continue
            entry, chunks = await asyncio.to_thread(self._read, display, abs_path, mtime_ns, size)
            if old and old.get("sha256") == entry["sha256"] and not old.get("error"):
                files[display] = {**old, "mtime_ns": mtime_ns, "size": size}
                stats["unchanged"] += 1
                continue
            if entry.get("error"):
                stats["failed"] += 1
            pending.append((display, entry, chunks))
            n_pending += len(chunks)
            if n_pending >= self.batch_chunks:
                await self._write(pending, manifest, stats)
                pending, n_pending = [], 0
        if pending:
            await self._write(pending, manifest, stats)
        await asyncio.to_thread(self._write_manifest, manifest)
        if stats["indexed"] or stats["removed"]:
            await self.store.optimize()

    async def _write(
        self,
        batch: list[tuple[str, dict[str, Any], list[Chunk]]],
        manifest: dict[str, Any],
        stats: dict[str, int],
    ) -> None:
        texts = [embedded_text(display, c) for display, _, chunks in batch for c in chunks]
        vectors = await self.embeddings.embed(texts) if texts else []
        # Forget these files first: a crash from here on re-indexes them next run.
        for display, _, _ in batch:
            manifest["files"].pop(display, None)
        await asyncio.to_thread(self._write_manifest, manifest)
        await self._delete_paths([display for display, _, _ in batch])
        rows: list[dict[str, Any]] = []
        for display, _, chunks in batch:
            for n, c in enumerate(chunks):
                rows.append(
                    {
                        "id": f"{display}#{n}",
                        "path": display,
                        "kind": c.kind,
                        "cell": c.cell,
                        "cell_id": c.cell_id,
                        "page": c.page,
                        "start_line": c.start_line,
                        "end_line": c.end_line,
                        "text": c.text,
                        "search_text": f"{texts[len(rows)]}\n{identifier_words(c.text)}",
                        "vector": vectors[len(rows)],
                    }
                )
        if rows:
            await self.store.add(rows)
        for display, entry, chunks in batch:
            manifest["files"][display] = {**entry, "chunks": len(chunks)}
            stats["indexed"] += 0 if entry.get("error") else 1
        stats["chunks_added"] += len(rows)
        await asyncio.to_thread(self._write_manifest, manifest)

    async def _delete_paths(self, paths: list[str]) -> None:
        for i in range(0, len(paths), 200):
            batch = paths[i : i + 200]
            await self.store.delete("path IN (" + ", ".join(sql_string(p) for p in batch) + ")")

    # --- files (run in a thread) -------------------------------------------------------------

    def _roots(self) -> list[tuple[Path, bool]]:
        roots = [(Path(self.root).resolve(), False)]
        roots += [(Path(p).expanduser().resolve(), True) for p in self.extra_paths]
        return [(r, absolute) for r, absolute in roots if r.is_dir()]

    def _descend(self, folder: str, name: str) -> bool:
        """Whether the walk (and the watcher) goes into ``folder/name``."""
        return (
            not name.startswith(".")
            and name not in self.skip_dirs
            and not os.path.islink(os.path.join(folder, name))
            and Path(folder, name).resolve() != Path(self.path).resolve()
            and not self._skipped_path(folder, name)
        )

    def _skipped_path(self, folder: str, name: str) -> bool:
        """Whether ``folder/name`` is one of ``skip_paths`` (relative to the root)."""
        if not self.skip_paths:
            return False
        try:
            rel = Path(folder, name).relative_to(Path(self.root).resolve())
        except ValueError:  # an extra path, not under the root
            return False
        return rel.as_posix() in {p.strip("/") for p in self.skip_paths}

    def _scan(self) -> tuple[dict[str, tuple[str, int, int]], bool]:
        """``{display path: (absolute path, mtime_ns, size)}`` of the files to index."""
        found: dict[str, tuple[str, int, int]] = {}
        for root, absolute in self._roots():
            for folder, dirs, names in os.walk(root):
                dirs[:] = sorted(d for d in dirs if self._descend(folder, d))
                for name in sorted(names):
                    if name.startswith(".") or Path(name).suffix.lower() not in SUFFIXES:
                        continue
                    full = os.path.join(folder, name)
                    try:
                        st = os.lstat(full)
                    except OSError:
                        continue
                    if not os.path.isfile(full) or os.path.islink(full):
                        continue
                    if st.st_size > self.max_file_bytes:
                        continue
                    display = full if absolute else os.path.relpath(full, root).replace(os.sep, "/")
                    found.setdefault(display, (full, st.st_mtime_ns, st.st_size))
                    if len(found) >= self.max_files:
                        return found, True
        return found, False

    def _read(
        self, display: str, abs_path: str, mtime_ns: int, size: int
    ) -> tuple[dict[str, Any], list[Chunk]]:
        entry: dict[str, Any] = {"mtime_ns": mtime_ns, "size": size, "sha256": ""}
        try:
            data = read_no_follow(abs_path, self.max_file_bytes)
        except OSError as e:
            return {**entry, "error": f"cannot read ({type(e).__name__})"}, []
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        try:
            chunks = chunk_file(
                Path(abs_path),
                data,
                self.chunk_chars,
                self.overlap_chars,
                passage_budget(self.window_tokens, display),
            )
        except Unreadable as e:
            return {**entry, "error": str(e)}, []
        return entry, chunks

    def _manifest_path(self) -> str:
        # With the store service the passages live there, and ~/.oraculo/memory (an old local
        # store, moved away once migrated) is not this server's to write.
        folder = os.path.dirname(self.path) if self.store.remote else self.path
        return os.path.join(folder, MANIFEST)

    def _read_manifest(self) -> dict[str, Any]:
        try:
            with open(self._manifest_path(), encoding="utf-8") as f:
                data = json.load(f)
            if isinstance(data, dict) and isinstance(data.get("files"), dict):
                return data
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            self.log.warning("workspace manifest unreadable; re-indexing everything")
        return {"files": {}}

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        os.makedirs(os.path.dirname(self._manifest_path()), mode=0o700, exist_ok=True)
        tmp = self._manifest_path() + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._manifest_path())
