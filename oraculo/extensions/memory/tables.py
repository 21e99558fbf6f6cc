"""The two LanceDB tables of a user's store, by name: their key, full-text column and schema.

One registry for the user's server (a local store) and the store service (which builds the
schema on its side, so a server using the service never loads pyarrow)::

    memories  key → value notes (oraculo.extensions.memory.service)
    passages  the workspace index (oraculo.extensions.memory.rag)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pyarrow loads with the first store use, not at server start
    import pyarrow as pa


def memories_schema(dim: int) -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("value", pa.string()),
            pa.field("scope", pa.string()),
            pa.field("text", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            pa.field("created_at", pa.timestamp("us", tz="UTC")),
            pa.field("updated_at", pa.timestamp("us", tz="UTC")),
        ]
    )


def passages_schema(dim: int) -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("path", pa.string()),
            pa.field("kind", pa.string()),
            pa.field("cell", pa.int32()),
            pa.field("cell_id", pa.string()),
            pa.field("page", pa.int32()),
            pa.field("start_line", pa.int32()),
            pa.field("end_line", pa.int32()),
            pa.field("text", pa.string()),
            pa.field("search_text", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )


@dataclass(frozen=True)
class TableSpec:
    """A table's name, unique key column, full-text (BM25) column and schema by vector size."""

    name: str
    key: str
    text_column: str
    schema: Callable[[int], pa.Schema]
    #: Timestamp columns (they travel as ISO 8601 strings between a server and the service).
    timestamps: tuple[str, ...] = ()


TABLES = {
    "memories": TableSpec(
        "memories", "key", "text", memories_schema, timestamps=("created_at", "updated_at")
    ),
    "passages": TableSpec("passages", "id", "search_text", passages_schema),
}
