"""One LanceDB table with a unique key, a full-text index and a vector column.

Shared by the memories (``memories``, keyed by ``key``) and the workspace index (``passages``,
keyed by ``id``). It opens the database lazily and creates nothing on disk until the first write,
so a server that never stores anything leaves no ``~/.oraculo`` behind. Callers serialise writes
(each service holds its own ``asyncio.Lock``); LanceDB reads see the last committed version.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from oraculo.extensions.base.errors import Conflict
from oraculo.extensions.memory.tables import TableSpec

if TYPE_CHECKING:  # numpy and pyarrow load with the first store use, not at server start
    import pyarrow as pa

#: Reciprocal-rank fusion constant (as in LanceDB's RRFReranker and the RRF paper).
RRF_K = 60


def default_path() -> str:
    """The one LanceDB folder that memories and the workspace index share: ~/.oraculo/memory."""
    return os.path.join(os.path.expanduser("~"), ".oraculo", "memory")


def sql_string(value: str) -> str:
    """``value`` as a SQL string literal for a LanceDB filter (quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


class _PandasKeptOut(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Fails ``import pandas`` in one thread while it is on ``sys.meta_path``.

    Importing LanceDB imports ``pyarrow.dataset``, whose module set-up asks pyarrow's pandas
    shim whether pandas is there, which imports pandas (~35 MB of a server's memory; measured
    with ``benchmarks/density.py``). Neither the memory store nor the workspace index uses
    pandas: they read Arrow tables as lists. The spec is found (LanceDB's own lazy
    ``find_spec("pandas")`` still sees pandas installed) but loading it fails, so pyarrow
    carries on without it; pyarrow and LanceDB import it for real when something asks them for
    a DataFrame. Other threads, which may import pandas meanwhile, are not affected.
    """

    def __init__(self) -> None:
        self.thread = threading.get_ident()

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "pandas" or threading.get_ident() != self.thread:
            return None
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: Any) -> None:
        raise ImportError("pandas is not loaded with LanceDB (oraculo.extensions.memory.store)")


def import_lancedb() -> Any:
    """``import lancedb``, without pandas (see :class:`_PandasKeptOut`)."""
    if "lancedb" in sys.modules:
        return sys.modules["lancedb"]
    finder = _PandasKeptOut()
    sys.meta_path.insert(0, finder)
    try:
        import lancedb
    finally:
        sys.meta_path.remove(finder)
    return lancedb


def _fts() -> Any:
    from lancedb.index import FTS

    return FTS()


def _ivf_sq() -> Any:
    from lancedb.index import IvfSq

    return IvfSq(distance_type="cosine")


class LanceStore:
    """Upsert/get/delete by key, exact filters, and hybrid (vector + BM25) search."""

    #: Rows live in this process's LanceDB folder (see RemoteLanceStore for the other kind).
    remote = False

    def __init__(
        self,
        path: str,
        spec: TableSpec,
        *,
        log: logging.Logger | logging.LoggerAdapter[Any],
        vector_index_rows: int = 0,
    ) -> None:
        self.path = path
        self.spec = spec
        self.name = spec.name
        self.key = spec.key
        self.text_column = spec.text_column
        self.log = log
        self.vector_index_rows = vector_index_rows
        self._db: Any = None
        self._table: Any = None
        self._has_vector_index = False

    async def _connect(self, create: bool) -> Any:
        if self._db is None:
            # Nothing on disk until the first write (a stat and a mkdir: not worth a thread).
            if not create and not os.path.isdir(self.path):  # noqa: ASYNC240
                return None
            if create:
                os.makedirs(self.path, mode=0o700, exist_ok=True)
            # Imported here: lancedb takes ~1 s to import, and every user server start would
            # pay for it before the hub sees the server ready.
            lancedb = import_lancedb()
            self._db = await lancedb.connect_async(self.path)
        return self._db

    async def table(self, create_with: pa.Schema | None = None) -> Any:
        """The open table; None when it does not exist and ``create_with`` is None."""
        if self._table is not None:
            return self._table
        db = await self._connect(create=create_with is not None)
        if db is None:
            return None
        names = (await db.list_tables()).tables
        if self.name in names:
            self._table = await db.open_table(self.name)
            indices = await self._table.list_indices()
            self._has_vector_index = any(i.columns == ["vector"] for i in indices)
            if not any(i.columns == [self.text_column] for i in indices):
                await self._table.create_index(self.text_column, config=_fts(), replace=True)
        elif create_with is not None:
            table = await db.create_table(self.name, schema=create_with)
            await table.create_index(self.text_column, config=_fts(), replace=True)
            self._table = table
        return self._table

    async def vector_dim(self) -> int | None:
        table = await self.table()
        if table is None:
            return None
        vtype = (await table.schema()).field("vector").type
        return int(vtype.list_size)

    async def exists(self) -> bool:
        """Whether the table has been created (by a first write)."""
        return await self.table() is not None

    async def upsert(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows``, replacing those whose key is already stored."""
        schema = self.spec.schema(len(rows[0]["vector"]))
        table = await self.table(create_with=schema)
        dim = schema.field("vector").type.list_size
        have = await self.vector_dim()
        if have != dim:
            raise Conflict(
                f"The store at {self.path} holds {have}-dimensional vectors but the embedding "
                f"model gives {dim}: the embedding model changed."
            )
        import pyarrow as pa

        data = pa.Table.from_pylist(rows, schema=schema)
        await (
            table.merge_insert(self.key)
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(data)
        )

    async def add(self, rows: list[dict[str, Any]]) -> None:
        """Append rows whose keys are known to be new (faster than a merge)."""
        schema = self.spec.schema(len(rows[0]["vector"]))
        table = await self.table(create_with=schema)
        import pyarrow as pa

        await table.add(pa.Table.from_pylist(rows, schema=schema))

    async def get(self, key: str) -> dict[str, Any] | None:
        rows = await self.where(f"{self.key} = {sql_string(key)}", limit=1)
        return rows[0] if rows else None

    async def where(
        self, condition: str, exclude: list[str] | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        table = await self.table()
        if table is None:
            return []
        query = table.query().where(condition)
        if exclude:
            names = [f.name for f in await table.schema() if f.name not in exclude]
            query = query.select(names)
        if limit is not None:
            query = query.limit(limit)
        result: list[dict[str, Any]] = (await query.to_arrow()).to_pylist()
        return result

    async def keys_newest_first(self, column: str, offset: int, limit: int) -> list[str]:
        """Keys ordered by ``column`` descending, then key ascending: ``limit`` from ``offset``."""
        table = await self.table()
        if table is None:
            return []
        order = await table.query().select([self.key, column]).to_arrow()
        if offset >= order.num_rows:
            return []
        import pyarrow.compute as pc

        idx = pc.sort_indices(order, [(column, "descending"), (self.key, "ascending")])
        keys: list[str] = order[self.key].take(idx).slice(offset, limit).to_pylist()
        return keys

    @property
    def is_open(self) -> bool:
        """Whether LanceDB has been loaded and the database opened."""
        return self._db is not None

    async def count(self, condition: str | None = None) -> int:
        table = await self.table()
        return 0 if table is None else int(await table.count_rows(condition))

    async def delete(self, condition: str) -> None:
        table = await self.table()
        if table is not None:
            await table.delete(condition)

    async def hybrid(
        self,
        vector: list[float],
        text: str,
        k: int,
        exclude: list[str] | None = None,
        text_weight: float = 1.0,
    ) -> list[dict[str, Any]]:
        """The ``k`` best rows by reciprocal-rank fusion of vector and BM25 rankings.

        Each row has ``_score`` (the fused relevance; higher is better), ``_similarity`` (the
        cosine similarity of ``vector`` and the row's: an absolute measure, unlike the rank-based
        score, that a caller may threshold) and ``_text_match`` (the row is in the BM25
        ranking: it shares a word with ``text``). Each ranking is taken deeper than ``k`` so
        that a row ranked well by only one of them still fuses fairly; the BM25 ranking counts
        ``text_weight`` times the vector ranking.
        """
        table = await self.table()
        if table is None:
            return []
        depth = max(4 * k, 20)
        # The two rankings run concurrently and are fused here (reciprocal rank, K=60, as
        # LanceDB's RRFReranker): measured faster than LanceDB's own hybrid query, and the
        # vector ranking's distances give the similarities directly.
        by_vector, by_text = await asyncio.gather(
            table.query().nearest_to(vector).distance_type("cosine").limit(depth).to_arrow(),
            table.query().nearest_to_text(text).limit(depth).to_arrow(),
        )
        rows: dict[Any, dict[str, Any]] = {}
        scores: dict[Any, float] = {}
        text_rows = by_text.to_pylist()
        matched = {row[self.key] for row in text_rows}
        for weight, ranking in ((1.0, by_vector.to_pylist()), (text_weight, text_rows)):
            for rank, row in enumerate(ranking, start=1):
                key = row[self.key]
                scores[key] = scores.get(key, 0.0) + weight / (RRF_K + rank)
                rows.setdefault(key, row)
        best = sorted(scores, key=lambda key: -scores[key])[:k]
        import numpy as np

        q = np.asarray(vector, dtype=np.float32)
        q_norm = float(np.linalg.norm(q)) or 1.0
        drop = {*(exclude or []), "vector", "_distance", "_score"}
        out = []
        for key in best:
            row = rows[key]
            if row.get("_distance") is not None:
                similarity = 1.0 - float(row["_distance"])
            else:
                v = np.asarray(row["vector"], dtype=np.float32)
                similarity = float(q @ v) / (q_norm * (float(np.linalg.norm(v)) or 1.0))
            out.append(
                {
                    **{c: val for c, val in row.items() if c not in drop},
                    "_score": scores[key],
                    "_similarity": round(similarity, 4),
                    "_text_match": key in matched,
                }
            )
        return out

    async def nearest(self, vector: list[float], k: int) -> list[dict[str, Any]]:
        """The ``k`` rows nearest ``vector`` (cosine); each with ``_distance``."""
        table = await self.table()
        if table is None:
            return []
        query = table.query().nearest_to(vector).distance_type("cosine").limit(k)
        rows: list[dict[str, Any]] = (await query.to_arrow()).to_pylist()
        return rows

    async def optimize(self) -> None:
        """Compact files, fold new rows into the indexes, and build the vector index once big."""
        table = await self.table()
        if table is None:
            return
        await table.optimize()
        if (
            self.vector_index_rows
            and not self._has_vector_index
            and await table.count_rows() >= self.vector_index_rows
        ):
            self.log.info("building the vector index of %s", self.name)
            # IVF with 8-bit scalar quantization: at 100k rows it builds in ~5 s on 2 busy cores
            # and answers in ~5 ms; IVF-PQ and IVF-HNSW-SQ took 170-430 s to build here.
            await table.create_index("vector", config=_ivf_sq(), replace=True)
            self._has_vector_index = True

    async def close(self) -> None:
        self._table = None
        self._db = None
