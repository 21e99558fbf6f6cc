"""The user's memories: small ``key → value`` notes the assistant recalls, in LanceDB.

Storage: the ``memories`` table of the LanceDB database at :attr:`MemoryService.path`
(``~/.oraculo/memory/`` by default), one row per key::

    key: string (unique)   value: string   scope: string|null   text: string ("key: value")
    vector: fixed_size_list<float32>[dim]  created_at, updated_at: timestamp[us, UTC]

``text`` carries LanceDB's native full-text (BM25) index; ``vector`` is the embedding of
``text`` from the model service. Search runs both and fuses the rankings (reciprocal rank).

Nothing is lost: every write is one LanceDB commit (a new manifest version written atomically,
so a process killed mid-write leaves the previous version readable), and writes to one store go
through one ``asyncio.Lock`` and ``merge_insert`` on ``key``, so two tabs writing at once both
land. Vectors are computed before the lock is taken, so a slow model service does not hold it.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import re
import unicodedata
from typing import Any

from traitlets import Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from oraculo.extensions.base.embeddings import EmbeddingClient
from oraculo.extensions.base.errors import BadRequest, Conflict
from oraculo.extensions.memory.backend import open_store
from oraculo.extensions.memory.models import Memory, MemoryHit
from oraculo.extensions.memory.store import default_path, sql_string
from oraculo.extensions.memory.tables import TABLES

TABLE = "memories"
SCOPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$")


class MemoryService(LoggingConfigurable):
    """Upsert, get, list, search and delete one user's memories."""

    path = Unicode(
        config=True,
        help="""LanceDB database folder holding the memories (and the workspace index).
        Default ~/.oraculo/memory (the server's user's home).""",
    )
    max_key_chars = Integer(256, config=True, help="Longest key accepted, in characters.")
    max_value_bytes = Integer(16384, config=True, help="Largest value accepted, in UTF-8 bytes.")
    max_memories = Integer(
        100_000, config=True, help="Most memories one user may keep; a new key past it is 409."
    )
    optimize_every = Integer(
        200,
        config=True,
        help="""Compact the table and fold new rows into the full-text and vector indexes
        after this many writes (searches still see unindexed rows meanwhile).""",
    )
    vector_index_rows = Integer(
        10_000,
        config=True,
        help="""Build an approximate (IVF, 8-bit scalar quantized) vector index once the table
        holds this many rows (at the next compaction); below it an exact scan is as fast
        (~10 ms at 10k), above it an exact scan grows linearly. 0 never builds one.""",
    )

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
        self._writes = 0

    # --- validation --------------------------------------------------------------------------

    def validate(self, key: Any, value: Any = "", scope: Any = None) -> None:
        """Raise :class:`BadRequest` (400) unless key, value and scope are acceptable."""
        check_key(key, self.max_key_chars)
        if not isinstance(value, str):
            raise BadRequest("value must be a string")
        if not value.strip():
            raise BadRequest("value must not be empty")
        if len(value.encode("utf-8")) > self.max_value_bytes:
            raise BadRequest(f"value is longer than {self.max_value_bytes} bytes (UTF-8)")
        if scope is not None and (not isinstance(scope, str) or not SCOPE_RE.match(scope)):
            raise BadRequest(
                "scope must be 1-64 characters: letters, digits and _ . : / - "
                "(starting with a letter or digit)"
            )

    # --- writes ------------------------------------------------------------------------------

    async def upsert(self, key: str, value: str, scope: str | None = None) -> tuple[Memory, bool]:
        """Store ``value`` under ``key``; returns ``(memory, created)``."""
        self.validate(key, value, scope)
        (vector,) = await self.embeddings.embed([embed_text(key, value)])
        async with self._lock:
            now = dt.datetime.now(dt.UTC)
            existing = await self.store.get(key)
            if existing is None and self.max_memories:
                if await self.store.count() >= self.max_memories:
                    raise Conflict(f"The memory store is full ({self.max_memories} memories).")
            row: dict[str, Any] = {
                "key": key,
                "value": value,
                "scope": scope,
                "text": embed_text(key, value),
                "vector": vector,
                "created_at": existing["created_at"] if existing else now,
                "updated_at": now,
            }
            await self.store.upsert([row])
            await self._wrote()
        return _memory(row), existing is None

    async def delete(self, key: str) -> bool:
        """Remove ``key``; False when there was no such memory."""
        check_key(key, self.max_key_chars)
        async with self._lock:
            if await self.store.get(key) is None:
                return False
            await self.store.delete(f"key = {sql_string(key)}")
            await self._wrote()
        return True

    async def clear(self) -> int:
        """Remove every memory; returns how many there were."""
        async with self._lock:
            n = await self.store.count()
            if n:
                await self.store.delete("true")
                await self._wrote()
        return n

    async def _wrote(self) -> None:
        self._writes += 1
        if self.optimize_every and self._writes % self.optimize_every == 0:
            await self.store.optimize()

    # --- reads -------------------------------------------------------------------------------

    async def get(self, key: str) -> Memory | None:
        """The memory stored under ``key``, or None."""
        check_key(key, self.max_key_chars)
        row = await self.store.get(key)
        return _memory(row) if row else None

    async def count(self) -> int:
        return await self.store.count()

    async def list(self, limit: int = 50, offset: int = 0) -> builtins.list[Memory]:
        """Memories, most recently updated first (ties by key)."""
        if limit < 1 or offset < 0:
            raise BadRequest("limit must be ≥ 1 and offset ≥ 0")
        keys = await self.store.keys_newest_first("updated_at", offset, limit)
        if not keys:
            return []
        rows = await self.store.where(
            "key IN (" + ", ".join(sql_string(k) for k in keys) + ")", exclude=["vector", "text"]
        )
        by_key = {r["key"]: r for r in rows}
        return [_memory(by_key[k]) for k in keys if k in by_key]

    async def search(self, q: str, k: int = 5) -> builtins.list[MemoryHit]:
        """The ``k`` memories best matching ``q``: semantic and full-text rankings fused."""
        if not isinstance(q, str) or not q.strip():
            raise BadRequest("q must be a non-empty string")
        if len(q) > 4096:
            raise BadRequest("q is longer than 4096 characters")
        if not 1 <= k <= 100:
            raise BadRequest("k must be between 1 and 100")
        # Embed first: without a model service this is a clear 503 even on an empty store.
        vector = await self.embeddings.embed_query(q)
        rows = await self.store.hybrid(vector, q, k, exclude=["text", "created_at"])
        return [
            MemoryHit(
                key=r["key"],
                value=r["value"],
                scope=r["scope"],
                score=r["_score"],
                updated_at=r["updated_at"],
                similarity=r["_similarity"],
            )
            for r in rows
        ]

    async def close(self) -> None:
        await self.store.close()


def check_key(key: Any, max_chars: int) -> None:
    if not isinstance(key, str):
        raise BadRequest("key must be a string")
    if not key.strip():
        raise BadRequest("key must not be empty")
    if len(key) > max_chars:
        raise BadRequest(f"key is longer than {max_chars} characters")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in key):
        raise BadRequest("key must not contain control characters")


def embed_text(key: str, value: str) -> str:
    return f"{key}: {value}"


def _memory(row: dict[str, Any]) -> Memory:
    return Memory(**{k: row[k] for k in Memory.model_fields})
