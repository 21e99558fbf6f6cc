"""The user's tables in the hub's store service (:mod:`oraculo.stores`), for servers under a hub
that runs one (``$ORACULO_STORES_URL``).

:class:`RemoteLanceStore` answers what :class:`~oraculo.extensions.memory.store.LanceStore`
answers, over HTTP: the server loads neither LanceDB nor pyarrow nor numpy (about 100 MB of
each user's server, ``benchmarks/density.py``). The service keeps each user's tables out of
reach of their own code and knows the user only from the token: the server's hub token, whose
``access:services!service=stores`` scope the hub grants to servers and never to a kernel's
narrow token.

A store the server kept itself before (``~/.oraculo/memory``, LanceDB) moves to the service on
first use: it is sent as a tar of its tables, then the folder is renamed
(``memory.moved-to-store-service``), never deleted. The service takes it only while the user's
store there is empty; otherwise the folder stays where it is and the server says so in its log.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import os
import tarfile
import time
from typing import Any, ClassVar

import httpx

from oraculo.extensions.base.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    OraculoError,
    PayloadTooLarge,
    Unavailable,
)
from oraculo.extensions.memory.store import sql_string
from oraculo.extensions.memory.tables import TABLES, TableSpec
from oraculo.kernels.credentials import server_token

log = logging.getLogger("oraculo.memory.remote")

#: The name a migrated local store's folder gets (a number is added if it is taken).
MOVED_SUFFIX = ".moved-to-store-service"
#: The workspace index's manifest, which stays in the server (next to the old folder).
MANIFEST = "workspace-manifest.json"

_ERRORS: dict[int, type[OraculoError]] = {
    400: BadRequest,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
}


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} does not travel to the store service")


def dumps(body: Any) -> bytes:
    return json.dumps(body, default=_default, separators=(",", ":")).encode()


class StoreClient:
    """One pooled HTTP client of the store service per server, and the one-time migration."""

    _shared: ClassVar[dict[str, StoreClient]] = {}

    def __init__(self, url: str, legacy_path: str, timeout: float = 60.0) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self.legacy_path = legacy_path
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._migrated = False
        self._migrating: asyncio.Lock | None = None

    @classmethod
    def shared(cls, url: str, legacy_path: str) -> StoreClient:
        """The server's client of ``url`` (memories and the workspace index share it)."""
        client = cls._shared.get(url)
        if client is None:
            client = cls._shared[url] = cls(url, legacy_path)
        return client

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout, trust_env=False)
        return self._client

    def _headers(self, content_type: str = "application/json") -> dict[str, str]:
        return {"Authorization": f"Bearer {server_token()}", "Content-Type": content_type}

    async def call(self, table: str, op: str, **args: Any) -> Any:
        """``op`` on the user's ``table`` in the service; raises the service's error."""
        await self._migrate_once()
        r = await self._post(f"api/v1/tables/{table}", dumps({"op": op, **args}))
        return r.json()["result"]

    async def _post(self, path: str, body: bytes, content_type: str = "application/json") -> Any:
        try:
            r = await self._http().post(
                self.url + path, content=body, headers=self._headers(content_type)
            )
        except httpx.HTTPError as e:
            raise Unavailable(
                f"The store service at {self.url} does not answer ({type(e).__name__}); "
                "memories and the workspace index are unavailable until it does."
            ) from e
        if r.status_code >= 400:
            raise _error(r)
        return r

    async def _migrate_once(self) -> None:
        if self._migrated:
            return
        if self._migrating is None:
            self._migrating = asyncio.Lock()
        async with self._migrating:
            if self._migrated:
                return
            await self._migrate()
            self._migrated = True

    async def _migrate(self) -> None:
        folder = self.legacy_path
        tables = await asyncio.to_thread(_legacy_tables, folder)
        if not tables:
            return
        t0 = time.perf_counter()
        data = await asyncio.to_thread(_tar, folder, tables)
        try:
            await self._post("api/v1/import", data, "application/x-tar")
        except Conflict as e:
            log.warning("the local store at %s stays where it is: %s", folder, e.message)
            return
        moved = await asyncio.to_thread(_set_aside, folder)
        log.info(
            "moved the local store (%s, %d bytes) to the store service in %.1fs; the folder "
            "is now %s",
            ", ".join(tables),
            len(data),
            time.perf_counter() - t0,
            moved,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _error(r: httpx.Response) -> OraculoError:
    try:
        body = r.json()
        message = str(body["message"])
    except (ValueError, KeyError, TypeError):
        message = f"The store service answered {r.status_code}."
    cls = _ERRORS.get(r.status_code)
    if cls is not None:
        return cls(message)
    return Unavailable(message) if r.status_code in (502, 503, 504) else OraculoError(message)


def _legacy_tables(folder: str) -> list[str]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(
        n
        for n in names
        if n.endswith(".lance")
        and n[: -len(".lance")] in TABLES
        and not os.path.islink(os.path.join(folder, n))
    )


def _tar(folder: str, tables: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in tables:
            # symlinks inside are stored as links, which the service refuses
            tar.add(os.path.join(folder, name), arcname=name)
    return buf.getvalue()


def _set_aside(folder: str) -> str:
    """Rename ``folder`` (never delete it), keeping the index's manifest in the server."""
    parent = os.path.dirname(folder)
    manifest = os.path.join(folder, MANIFEST)
    if os.path.isfile(manifest):
        os.replace(manifest, os.path.join(parent, MANIFEST))
    target = folder + MOVED_SUFFIX
    n = 1
    while os.path.exists(target):
        n += 1
        target = f"{folder}{MOVED_SUFFIX}.{n}"
    os.rename(folder, target)
    return target


def _timestamps(spec: TableSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in rows:
        for column in spec.timestamps:
            value = row.get(column)
            if isinstance(value, str):
                row[column] = dt.datetime.fromisoformat(value)
    return rows


class RemoteLanceStore:
    """:class:`~oraculo.extensions.memory.store.LanceStore`'s methods, answered by the service."""

    remote = True
    #: Nothing heavy is loaded in this process, so counting is always cheap.
    is_open = True

    def __init__(self, client: StoreClient, spec: TableSpec) -> None:
        self.client = client
        self.spec = spec
        self.name = spec.name
        self.key = spec.key

    async def _call(self, op: str, **args: Any) -> Any:
        return await self.client.call(self.name, op, **args)

    async def exists(self) -> bool:
        return bool(await self._call("exists"))

    async def vector_dim(self) -> int | None:
        dim = await self._call("vector_dim")
        return None if dim is None else int(dim)

    async def upsert(self, rows: list[dict[str, Any]]) -> None:
        await self._call("upsert", rows=rows)

    async def add(self, rows: list[dict[str, Any]]) -> None:
        await self._call("add", rows=rows)

    async def get(self, key: str) -> dict[str, Any] | None:
        rows = await self.where(f"{self.key} = {sql_string(key)}", limit=1)
        return rows[0] if rows else None

    async def where(
        self, condition: str, exclude: list[str] | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        rows = await self._call("where", condition=condition, exclude=exclude, limit=limit)
        return _timestamps(self.spec, rows)

    async def count(self, condition: str | None = None) -> int:
        return int(await self._call("count", condition=condition))

    async def delete(self, condition: str) -> None:
        await self._call("delete", condition=condition)

    async def keys_newest_first(self, column: str, offset: int, limit: int) -> list[str]:
        keys: list[str] = await self._call(
            "keys_newest_first", column=column, offset=offset, limit=limit
        )
        return keys

    async def hybrid(
        self,
        vector: list[float],
        text: str,
        k: int,
        exclude: list[str] | None = None,
        text_weight: float = 1.0,
    ) -> list[dict[str, Any]]:
        rows = await self._call(
            "hybrid", vector=vector, text=text, k=k, exclude=exclude, text_weight=text_weight
        )
        return _timestamps(self.spec, rows)

    async def nearest(self, vector: list[float], k: int) -> list[dict[str, Any]]:
        return _timestamps(self.spec, await self._call("nearest", vector=vector, k=k))

    async def optimize(self) -> None:
        await self._call("optimize")

    async def close(self) -> None:
        await self.client.aclose()
