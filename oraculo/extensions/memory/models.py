"""The memory feature's pydantic models: a memory, the body that stores one, a search hit, and a
workspace passage."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field, StrictStr


class Memory(BaseModel):
    """One stored memory."""

    key: str
    value: str
    scope: str | None = None
    created_at: dt.datetime
    updated_at: dt.datetime


class MemoryBody(BaseModel):
    """``POST /api/v1/memory``; the sizes are checked by the service."""

    model_config = ConfigDict(extra="forbid")

    key: StrictStr
    value: StrictStr
    scope: StrictStr | None = None
    user_id: StrictStr | None = None


class MemoryHit(BaseModel):
    """A memory found by :meth:`MemoryService.search`; higher ``score`` ranks first.

    ``score`` is the reciprocal-rank fusion of the semantic and full-text rankings (about
    0.016-0.033: it orders, it does not measure); ``similarity`` is the cosine similarity of
    the query's and the memory's embeddings (-1..1; all-MiniLM-L6-v2 gives ~0.5+ for related
    texts, ~0 for unrelated), to threshold on.
    """

    key: str
    value: str
    scope: str | None = None
    score: float
    updated_at: dt.datetime
    similarity: float = 0.0


class Passage(BaseModel):
    """A chunk of a workspace file found by :meth:`WorkspaceIndex.search`.

    ``path`` is relative to the server's root (absolute for a shared folder outside it);
    ``cell`` is the notebook cell index (0-based; ``cell_id`` its nbformat id) or None;
    ``start_line``/``end_line`` are 1-based and inclusive, within the cell for notebooks and
    within the page for PDFs (``page``, 1-based). ``kind``: markdown, code, output, text, table
    or pdf. Higher ``score`` (rank fusion, ~0.016-0.033) ranks first; ``similarity`` is the
    cosine similarity of query and passage embeddings (-1..1), to threshold on.
    """

    path: str
    cell: int | None = None
    start_line: int
    end_line: int
    text: str
    score: float
    kind: str = "text"
    cell_id: str | None = None
    page: int | None = None
    similarity: float = 0.0


class MemoryQuery(BaseModel):
    """The query of ``GET``/``DELETE /api/v1/memory`` (one of ``key``, ``q``, or a page)."""

    key: str | None = Field(None, description="One memory by key (DELETE: remove it).")
    q: str | None = Field(None, description="Search the memories (semantic + full text).")
    k: int = Field(5, ge=1, le=100, description="How many hits a search returns.")
    limit: int = Field(50, ge=1, le=500, description="Page size of the list.")
    offset: int = Field(0, ge=0, description="Where the page starts.")
    confirm: str | None = Field(None, description="DELETE without key: 'delete-all'.")
    user_id: str | None = Field(None, description="Must be the caller when given.")


class MemoryPage(BaseModel):
    """``GET /api/v1/memory``: a page of memories, most recently updated first."""

    items: list[Memory]
    total: int
    limit: int
    offset: int


class MemoryHits(BaseModel):
    """``GET /api/v1/memory?q=``."""

    hits: list[MemoryHit]


class IndexQuery(BaseModel):
    """The query of ``GET /api/v1/memory/index``."""

    q: str | None = Field(None, description="Search the workspace's passages.")
    k: int = Field(5, ge=1, le=100, description="How many passages.")
    user_id: str | None = Field(None, description="Must be the caller when given.")


class PassageHits(BaseModel):
    """``GET /api/v1/memory/index?q=``."""

    passages: list[Passage]
