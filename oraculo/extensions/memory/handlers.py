"""``/api/v1/memory`` (the user's memories) and ``/api/v1/memory/index`` (workspace RAG).

- ``GET /api/v1/memory`` → ``{items, total, limit, offset}`` (most recently updated first);
  ``?key=K`` → one memory (404 if none); ``?q=TEXT[&k=5]`` → ``{hits: [...]}``.
- ``POST /api/v1/memory`` ``{key, value, scope?, user_id?}`` → 201 + ``Location`` on create,
  200 on update; the memory as JSON.
- ``DELETE /api/v1/memory?key=K`` → 204 (404 if none); ``?confirm=delete-all`` (and no key)
  removes every memory → 204.
- ``GET /api/v1/memory/index`` → indexing status; ``?q=TEXT[&k=5]`` → ``{passages: [...]}``.
- ``POST /api/v1/memory/index`` → 202, starts a run in the background; poll the status.

A ``user_id`` in the query or body that is not the caller's is 403.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from jupyter_server.auth.decorator import authorized
from jupyter_server.utils import url_path_join
from tornado import web

from oraculo.extensions.base.embeddings import EmbeddingsUnavailable
from oraculo.extensions.base.errors import BadRequest, Forbidden, NotFound
from oraculo.extensions.base.handlers import OraculoAPIHandler
from oraculo.extensions.memory.models import (
    IndexQuery,
    Memory,
    MemoryBody,
    MemoryHits,
    MemoryPage,
    MemoryQuery,
    PassageHits,
)
from oraculo.openapi import operation

#: The value of ``confirm`` that DELETE needs to remove every memory.
DELETE_ALL = "delete-all"


class _MemoryHandler(OraculoAPIHandler):
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        if exc_info and isinstance(exc_info[1], EmbeddingsUnavailable):
            self.set_header("Retry-After", str(exc_info[1].retry_after))
        super().write_error(status_code, **kwargs)

    def check_user(self, user_id: str | None = None) -> None:
        """403 unless every ``user_id`` given (query or body) names the caller."""
        caller = self.current_user.username
        for given in (self.get_query_argument("user_id", None), user_id):
            if given is not None and given != caller:
                raise Forbidden("user_id does not match the caller; memories are per user")

    def int_arg(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise BadRequest(f"{name} must be an integer") from None
        if not low <= value <= high:
            raise BadRequest(f"{name} must be between {low} and {high}")
        return value

    @property
    def memory(self) -> Any:
        return self.feature("memory")


class MemoryHandler(_MemoryHandler):
    @operation(query=MemoryQuery, responses={200: Memory | MemoryHits | MemoryPage})
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.check_user()
        memories = self.memory.memories
        key, q = self.get_query_argument("key", None), self.get_query_argument("q", None)
        if key is not None:
            found = await memories.get(key)
            if found is None:
                raise NotFound(f"No memory with key {key!r}")
            self.finish(found.model_dump_json())
        elif q is not None:
            hits = await memories.search(q, self.int_arg("k", 5, 1, 100))
            self.finish({"hits": [h.model_dump(mode="json") for h in hits]})
        else:
            limit = self.int_arg("limit", 50, 1, 500)
            offset = self.int_arg("offset", 0, 0, 10**9)
            items = await memories.list(limit, offset)
            self.finish(
                {
                    "items": [m.model_dump(mode="json") for m in items],
                    "total": await memories.count(),
                    "limit": limit,
                    "offset": offset,
                }
            )

    @operation(request=MemoryBody, responses={200: Memory, 201: Memory})
    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.parse_body(MemoryBody)
        self.check_user(body.user_id)
        memory, created = await self.memory.memories.upsert(body.key, body.value, body.scope)
        if created:
            self.set_status(201)
            url = url_path_join(self.base_url, "api/v1/memory")
            self.set_header("Location", f"{url}?key={quote(memory.key, safe='')}")
        self.finish(memory.model_dump_json())

    @operation(query=MemoryQuery, responses={204: None})
    @web.authenticated
    @authorized
    async def delete(self) -> None:
        self.check_user()
        key = self.get_query_argument("key", None)
        if key is None:
            if self.get_query_argument("confirm", None) != DELETE_ALL:
                raise BadRequest(f"Give ?key=..., or ?confirm={DELETE_ALL} to remove every memory")
            await self.memory.memories.clear()
        elif not await self.memory.memories.delete(key):
            raise NotFound(f"No memory with key {key!r}")
        self.set_status(204)
        self.finish()


class MemoryIndexHandler(_MemoryHandler):
    @operation(query=IndexQuery, responses={200: dict[str, Any] | PassageHits})
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.check_user()
        q = self.get_query_argument("q", None)
        if q is None:
            self.finish(json.dumps(self.memory.index.status()))
            return
        passages = await self.memory.index.search(q, self.int_arg("k", 5, 1, 100))
        self.finish({"passages": [p.model_dump(mode="json") for p in passages]})

    @operation(summary="Start indexing the workspace", responses={202: dict[str, Any]})
    @web.authenticated
    @authorized
    async def post(self) -> None:
        self.check_user()
        self.set_status(202)
        self.finish(json.dumps(self.memory.index.trigger()))
