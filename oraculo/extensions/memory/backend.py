"""Which backend holds a user's tables: the hub's store service or LanceDB in this process.

Its own module so that :mod:`~oraculo.extensions.memory.store` and
:mod:`~oraculo.extensions.memory.remote` need not import each other.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from oraculo.extensions.memory.remote import RemoteLanceStore, StoreClient
from oraculo.extensions.memory.store import LanceStore, default_path
from oraculo.extensions.memory.tables import TableSpec


def open_store(
    path: str,
    spec: TableSpec,
    *,
    log: logging.Logger | logging.LoggerAdapter[Any],
    vector_index_rows: int = 0,
) -> LanceStore | RemoteLanceStore:
    """The user's table: in the hub's store service when the hub runs one
    (``$ORACULO_STORES_URL``) and ``path`` is the default folder, else in LanceDB at ``path``."""
    url = os.environ.get("ORACULO_STORES_URL", "")
    if url and os.path.abspath(path) == os.path.abspath(default_path()):
        return RemoteLanceStore(StoreClient.shared(url, legacy_path=path), spec)
    return LanceStore(path, spec, log=log, vector_index_rows=vector_index_rows)
