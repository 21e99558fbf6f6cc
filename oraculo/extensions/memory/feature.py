"""The memory feature: the user's memories and retrieval over their workspace.

HTTP: ``/api/v1/memory`` and ``/api/v1/memory/index`` (see
:mod:`oraculo.extensions.memory.handlers`).

In-process API (stable; what chat, ``%memory`` and agents call)::

    memory = extension.feature("memory")       # a handler: self.feature("memory")

    # memory.memories: MemoryService (oraculo.extensions.memory.service)
    mem, created = await memory.memories.upsert(key, value, scope=None)  # -> (Memory, bool)
    mem = await memory.memories.get(key)                 # -> Memory | None
    page = await memory.memories.list(limit=50, offset=0)  # -> list[Memory], newest first
    n = await memory.memories.count()                    # -> int
    hits = await memory.memories.search(q, k=5)          # -> list[MemoryHit], best first
    gone = await memory.memories.delete(key)             # -> bool
    n = await memory.memories.clear()                    # -> int removed

    # memory.index: WorkspaceIndex (oraculo.extensions.memory.rag)
    passages = await memory.index.search(q, k=5)         # -> list[Passage], best first
    status = await memory.index.refresh()                # run now (after any run), -> status
    status = memory.index.status()                       # -> dict, never blocks
    memory.index.trigger()                               # start a run in the background

``Memory``: key, value, scope, created_at, updated_at. ``MemoryHit``: key, value, scope, score,
updated_at, similarity. ``Passage``: path, cell (0-based or None), start_line, end_line (1-based,
inclusive, within the cell or PDF page), text, score, kind, cell_id, page, similarity. All are
pydantic models. ``score`` is a rank fusion (orders results, ~0.016-0.033); ``similarity`` is
the cosine similarity of query and result embeddings (-1..1), the one to threshold on.

Errors are :mod:`oraculo.extensions.base.errors`: ``BadRequest`` (400) for invalid keys, values,
scopes or queries; ``Conflict`` (409) when the store is full or was built with another embedding
model; ``EmbeddingsUnavailable`` (an ``Unavailable``, 503, with ``retry_after``) when the model
service is not configured or does not answer — writes and searches need it, ``get``/``list``/
``delete`` do not.
"""

from __future__ import annotations

from typing import Any

from traitlets import Instance, Type

from oraculo.extensions.base.embeddings import EmbeddingClient
from oraculo.extensions.base.feature import Feature
from oraculo.extensions.memory.handlers import MemoryHandler, MemoryIndexHandler
from oraculo.extensions.memory.rag import WorkspaceIndex
from oraculo.extensions.memory.service import MemoryService


class MemoryFeature(Feature):
    """Memories and the workspace index, sharing one embeddings client and one LanceDB folder."""

    name = "memory"

    embeddings_class = Type(
        EmbeddingClient, klass=EmbeddingClient, config=True, help="Client of the embeddings API."
    )
    memories_class = Type(
        MemoryService, klass=MemoryService, config=True, help="The memory store service."
    )
    index_class = Type(
        WorkspaceIndex, klass=WorkspaceIndex, config=True, help="The workspace (RAG) index."
    )
    embeddings = Instance(EmbeddingClient)
    memories = Instance(MemoryService)
    index = Instance(WorkspaceIndex)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embeddings = self.embeddings_class(parent=self, models=self.models)
        self.memories = self.memories_class(parent=self, embeddings=self.embeddings)
        root: dict[str, Any] = {}
        serverapp = getattr(self.extension, "serverapp", None)
        if serverapp is not None and "root" not in self.config.get("WorkspaceIndex", {}):
            root = {"root": serverapp.root_dir}
        self.index = self.index_class(parent=self, embeddings=self.embeddings, **root)
        # jupyter_server's io_loop is there for extensions to start background tasks on; it
        # runs once the server starts.
        io_loop = getattr(serverapp, "io_loop", None)
        if io_loop is not None:
            io_loop.add_callback(self.index.start)

    def handlers(self) -> list[tuple[str, Any]]:
        return [
            (r"/api/v1/memory", MemoryHandler),
            (r"/api/v1/memory/index", MemoryIndexHandler),
        ]

    async def stop(self) -> None:
        await self.index.stop()
        await self.memories.close()
        await self.embeddings.close()
