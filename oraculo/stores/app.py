"""``python -m oraculo.stores``: every user's memories and workspace index, in one process per hub.

Each user's server used to load LanceDB, pyarrow and numpy (about 100 MB of its memory,
``benchmarks/density.py``) to keep its tables in ``~/.oraculo/memory``. Under a hub that runs
this service, servers send their reads and writes here instead
(:class:`oraculo.extensions.memory.remote.RemoteLanceStore`), and the tables live in
``<data_dir>/stores/<user>/`` (mode 0700, owned by the hub's account): out of reach of the
user's own code, which only ever holds a narrow kernel token without this service's scope.

Who is calling comes only from the token (``HubAuth``; the caller needs
``access:services!service=stores``, which the hub grants to user servers), never from the request:
there is no way to name another user's tables. Open databases are kept in a least-recently-used
set (``max_open``); writes to one table are serialised here too.

Routes, under ``$JUPYTERHUB_SERVICE_PREFIX``::

    GET  health                       {"status": "ok"} (no token)
    POST api/v1/tables/<table>        {"op": ..., args} → {"result": ...}
    POST api/v1/import                a tar of a server's old local tables → 201, or 409 when
                                      the user's store here already holds data
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import logging
import os
import re
import shutil
import signal
import tarfile
import tempfile
from typing import Any
from urllib.parse import urlparse

from tornado import httpserver, web
from tornado.http1connection import HTTP1Connection
from traitlets import Integer, Unicode, default
from traitlets.config import Application

from oraculo.extensions.base.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    OraculoError,
    PayloadTooLarge,
)
from oraculo.extensions.memory.store import LanceStore
from oraculo.extensions.memory.tables import TABLES, TableSpec
from oraculo.models import auth as hub_auth
from oraculo.models import errors as model_errors

log = logging.getLogger("oraculo.stores")

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")


def user_folder(root: str, name: str) -> str:
    """``root/<name>``: the name itself where it is a plain file name, else ``_`` and its UTF-8
    bytes in hex (one folder per user, whatever the authenticator allows in names)."""
    safe = name if _SAFE.match(name) and ".." not in name else "_" + name.encode().hex()
    return os.path.join(root, safe)


def _row_in(spec: TableSpec, row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise BadRequest("each row must be an object")
    vector = row.get("vector")
    if not isinstance(vector, list) or not vector:
        raise BadRequest("each row needs a non-empty 'vector' list")
    if not isinstance(row.get(spec.key), str):
        raise BadRequest(f"each row needs a string '{spec.key}'")
    out = dict(row)
    for column in spec.timestamps:
        value = out.get(column)
        if isinstance(value, str):
            try:
                out[column] = dt.datetime.fromisoformat(value)
            except ValueError as e:
                raise BadRequest(f"{column} must be an ISO 8601 time") from e
    return out


def _rows_in(spec: TableSpec, rows: Any) -> list[dict[str, Any]]:
    if not isinstance(rows, list) or not rows:
        raise BadRequest("rows must be a non-empty list")
    out = [_row_in(spec, r) for r in rows]
    dims = {len(r["vector"]) for r in out}
    if len(dims) != 1:
        raise BadRequest("every row's vector must have the same length")
    return out


def _str(args: dict[str, Any], name: str, optional: bool = False) -> Any:
    value = args.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name} must be a non-empty string")
    return value


def _int(args: dict[str, Any], name: str, lo: int, hi: int, optional: bool = False) -> Any:
    value = args.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(f"{name} must be an integer from {lo} to {hi}")
    return value


def _names(args: dict[str, Any], name: str) -> list[str] | None:
    value = args.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{name} must be a list of column names")
    return value


def _vector(args: dict[str, Any]) -> list[float]:
    value = args.get("vector")
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise BadRequest("vector must be a non-empty list of numbers")
    return value


async def run_op(store: LanceStore, op: Any, args: dict[str, Any]) -> Any:
    """One operation of :class:`LanceStore` on the caller's table, its arguments checked."""
    spec = store.spec
    if op == "exists":
        return await store.exists()
    if op == "vector_dim":
        return await store.vector_dim()
    if op == "upsert":
        await store.upsert(_rows_in(spec, args.get("rows")))
        return None
    if op == "add":
        await store.add(_rows_in(spec, args.get("rows")))
        return None
    if op == "where":
        return await store.where(
            _str(args, "condition"),
            exclude=_names(args, "exclude"),
            limit=_int(args, "limit", 1, 100_000, optional=True),
        )
    if op == "count":
        return await store.count(_str(args, "condition", optional=True))
    if op == "delete":
        await store.delete(_str(args, "condition"))
        return None
    if op == "keys_newest_first":
        column = _str(args, "column")
        if column not in spec.timestamps:
            raise BadRequest(f"column must be one of {', '.join(spec.timestamps) or '(none)'}")
        return await store.keys_newest_first(
            column, _int(args, "offset", 0, 10**9), _int(args, "limit", 1, 10_000)
        )
    if op == "hybrid":
        weight = args.get("text_weight", 1.0)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
            raise BadRequest("text_weight must be a number ≥ 0")
        return await store.hybrid(
            _vector(args),
            _str(args, "text"),
            _int(args, "k", 1, 1000),
            exclude=_names(args, "exclude"),
            text_weight=float(weight),
        )
    if op == "nearest":
        rows = await store.nearest(_vector(args), _int(args, "k", 1, 1000))
        return [{k: v for k, v in r.items() if k != "vector"} for r in rows]
    if op == "optimize":
        await store.optimize()
        return None
    raise BadRequest(f"unknown op {op!r}")


#: Operations that change a table (serialised per user and table).
WRITES = {"upsert", "add", "delete", "optimize"}


class Stores:
    """Each user's open tables, the least recently used closed past ``max_open`` users."""

    def __init__(self, root: str, max_open: int, vector_index_rows: int) -> None:
        self.root = root
        self.max_open = max_open
        self.vector_index_rows = vector_index_rows
        self._open: collections.OrderedDict[str, dict[str, LanceStore]] = collections.OrderedDict()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._user_locks: dict[str, asyncio.Lock] = {}

    def folder(self, user: str) -> str:
        return user_folder(self.root, user)

    def table(self, user: str, name: str) -> LanceStore:
        tables = self._open.get(user)
        if tables is None:
            tables = self._open[user] = {}
            while len(self._open) > self.max_open:
                _, evicted = self._open.popitem(last=False)
                for old in evicted.values():
                    old._table = old._db = None  # LanceDB closes with its last reference
        self._open.move_to_end(user)
        found = tables.get(name)
        if found is not None:
            return found
        store = tables[name] = LanceStore(
            self.folder(user),
            TABLES[name],
            log=log,
            vector_index_rows=self.vector_index_rows,
        )
        return store

    def write_lock(self, user: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((user, name), asyncio.Lock())

    def user_lock(self, user: str) -> asyncio.Lock:
        return self._user_locks.setdefault(user, asyncio.Lock())

    def forget(self, user: str) -> None:
        self._open.pop(user, None)


class BaseHandler(web.RequestHandler):
    """The extension's error shape (``{"message", "reason", "type"}``) and hub-token callers."""

    @property
    def stores(self) -> Stores:
        stores: Stores = self.settings["stores"]
        return stores

    async def caller(self) -> str:
        scheme, _, credential = self.request.headers.get("Authorization", "").partition(" ")
        token = credential.strip() if scheme.lower() in ("bearer", "token") else None
        auth: hub_auth.Authenticator = self.settings["auth"]
        try:
            identity = await auth.authenticate(token)
        except model_errors.Unauthenticated as e:
            raise _Unauthenticated(e.message) from e
        except model_errors.Forbidden as e:
            raise Forbidden(
                "This token does not grant access to the store service (a user server's token "
                "does; a kernel's does not)."
            ) from e
        if identity.kind != "user":
            raise Forbidden("Only users have stores.")
        return identity.name

    def check_xsrf_cookie(self) -> None:  # token-authenticated API, no cookies
        pass

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, OraculoError):
            body = exc.to_json()
        elif isinstance(exc, web.HTTPError) and exc.status_code < 500:
            body = {
                "message": exc.log_message or self._reason,
                "reason": self._reason,
                "type": "invalid_request" if exc.status_code == 400 else "http_error",
            }
        else:
            body = {
                "message": "The store service failed this request; nothing was changed.",
                "reason": "Internal error",
                "type": "internal_error",
            }
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def _fail(self, exc: OraculoError) -> None:
        self.set_status(exc.status, exc.reason)
        self.write_error(exc.status, exc_info=(type(exc), exc, None))


class _Unauthenticated(OraculoError):
    status = 401
    type = "unauthenticated"
    reason = "Unauthorized"


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.finish({"status": "ok"})


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


class TableHandler(BaseHandler):
    async def post(self, name: str) -> None:
        try:
            user = await self.caller()
            if name not in TABLES:
                raise NotFound(f"no table {name!r}: the tables are {', '.join(sorted(TABLES))}")
            try:
                args = json.loads(self.request.body)
            except ValueError as e:
                raise BadRequest("the body must be JSON") from e
            if not isinstance(args, dict):
                raise BadRequest("the body must be a JSON object")
            op = args.pop("op", None)
            async with self.stores.user_lock(user):  # not while the user's store is imported
                pass
            store = self.stores.table(user, name)
            try:
                if op in WRITES:
                    async with self.stores.write_lock(user, name):
                        result = await run_op(store, op, args)
                else:
                    result = await run_op(store, op, args)
            except (ValueError, TypeError) as e:
                # LanceDB's answer to a filter it cannot parse, a row that does not fit
                raise BadRequest(f"the store refused this {op}: {e}") from e
        except OraculoError as e:
            self._fail(e)
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"result": result}, default=_json_default))


def _extract(archive: str, staging: str) -> None:
    """Unpack a server's old tables into ``staging``: only ``memories.lance`` and
    ``passages.lance`` folders of plain files (no links, devices or paths outside)."""
    allowed = {f"{name}.lance" for name in TABLES}
    try:
        with tarfile.open(archive, mode="r:") as tar:
            members = tar.getmembers()
            for m in members:
                top = m.name.split("/", 1)[0]
                if top not in allowed or not (m.isfile() or m.isdir()):
                    raise BadRequest(
                        f"the archive may hold only {' and '.join(sorted(allowed))} folders of "
                        f"plain files; {m.name!r} is not allowed"
                    )
            tar.extractall(staging, members=members, filter="data")
    except tarfile.TarError as e:
        raise BadRequest(f"the body is not a readable tar archive ({e})") from e


def _install(archive: str, root: str, target: str) -> list[str]:
    """Unpack ``archive`` as the user's store at ``target``, unless it already holds data;
    returns the tables it held."""
    if os.path.isdir(target) and os.listdir(target):
        raise Conflict(
            "your store in the store service already holds data; the old local store was not "
            "imported"
        )
    staging = tempfile.mkdtemp(dir=root, prefix=".staging-")
    try:
        _extract(archive, staging)
        if not os.listdir(staging):
            raise BadRequest("the archive holds no tables")
        if os.path.isdir(target):
            os.rmdir(target)  # empty (checked above)
        os.chmod(staging, 0o700)
        os.rename(staging, target)
        return sorted(n[: -len(".lance")] for n in os.listdir(target))
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _prepare_root(root: str) -> None:
    """Make the stores' folder (0700) and clear what an import cut short by a crash left."""
    os.makedirs(root, mode=0o700, exist_ok=True)
    os.chmod(root, 0o700)
    for name in os.listdir(root):
        if name.startswith((".staging-", ".import-")):
            path = os.path.join(root, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)


@web.stream_request_body
class ImportHandler(BaseHandler):
    """A server's old local store, moved here once (see oraculo.extensions.memory.remote)."""

    user: str | None = None
    _file: Any = None
    _size = 0
    _refused: OraculoError | None = None

    async def prepare(self) -> None:
        try:
            self.user = await self.caller()
        except OraculoError as e:
            self._fail(e)
            return
        limit = int(self.settings["max_import_bytes"])
        if isinstance(self.request.connection, HTTP1Connection):
            self.request.connection.set_max_body_size(limit)
        self._file = tempfile.NamedTemporaryFile(
            dir=self.stores.root, prefix=".import-", suffix=".tar"
        )

    def data_received(self, chunk: bytes) -> None:
        if self._file is None or self._refused is not None:
            return
        self._size += len(chunk)
        if self._size > int(self.settings["max_import_bytes"]):
            self._refused = PayloadTooLarge("the archive is larger than the service accepts")
            return
        self._file.write(chunk)

    async def post(self) -> None:
        assert self.user is not None and self._file is not None
        user = self.user
        failed: OraculoError | None = None
        try:
            if self._refused is not None:
                raise self._refused
            self._file.flush()
            async with self.stores.user_lock(user):
                target = self.stores.folder(user)
                imported = await asyncio.to_thread(
                    _install, self._file.name, self.stores.root, target
                )
                self.stores.forget(user)
        except OraculoError as e:
            failed = e
        # The upload goes before the answer does: whoever reads the answer finds it gone.
        self._file.close()
        if failed is not None:
            self._fail(failed)
            return
        log.info("imported %s's old local store (%d bytes)", user, self._size)
        self.set_status(201)
        self.finish({"imported": imported})

    def on_finish(self) -> None:
        if self._file is not None:
            self._file.close()


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        self._fail(NotFound(f"no route {self.request.path}"))


def application(base_url: str, stores: Stores, **settings: Any) -> web.Application:
    return web.Application(
        [
            (f"{base_url}health", HealthHandler),
            (f"{base_url}api/v1/tables/([^/]+)", TableHandler),
            (f"{base_url}api/v1/import", ImportHandler),
        ],
        default_handler_class=NotFoundHandler,
        stores=stores,
        **settings,
    )


class StoreServiceApp(Application):
    """The hub's store service."""

    name = "oraculo-stores"
    description = "Every user's memories and workspace index, kept by the hub."

    aliases = {
        "ip": "StoreServiceApp.ip",
        "port": "StoreServiceApp.port",
        "base-url": "StoreServiceApp.base_url",
        "data-dir": "StoreServiceApp.data_dir",
        "log-level": "Application.log_level",
    }

    ip = Unicode(help="Address to bind. Default: host of $JUPYTERHUB_SERVICE_URL.").tag(config=True)
    port = Integer(help="Port to bind. Default: port of $JUPYTERHUB_SERVICE_URL.").tag(config=True)
    base_url = Unicode(help="Route prefix. Default $JUPYTERHUB_SERVICE_PREFIX, else '/'.").tag(
        config=True
    )
    data_dir = Unicode(
        help="Folder of every user's store (<data_dir>/<user>/). Default $ORACULO_DATA_DIR/stores."
    ).tag(config=True)
    max_open = Integer(
        256, help="Users whose databases are kept open (least recently used closed first)."
    ).tag(config=True)
    max_body_bytes = Integer(
        64 * 1024 * 1024, help="Largest request (a batch of passages with their vectors)."
    ).tag(config=True)
    max_import_bytes = Integer(
        8 * 1024**3, help="Largest old local store a server may move here, in bytes."
    ).tag(config=True)
    vector_index_rows = Integer(
        10_000,
        help="Build an approximate vector index once a table holds this many rows; 0 never.",
    ).tag(config=True)

    @default("log_level")
    def _default_log_level(self) -> int:
        return logging.INFO

    @default("ip")
    def _default_ip(self) -> str:
        url = os.environ.get("JUPYTERHUB_SERVICE_URL")
        return (urlparse(url).hostname or "127.0.0.1") if url else "127.0.0.1"

    @default("port")
    def _default_port(self) -> int:
        url = os.environ.get("JUPYTERHUB_SERVICE_URL")
        return (urlparse(url).port or 80) if url else 8104

    @default("base_url")
    def _default_base_url(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return os.path.abspath(os.path.join(os.environ.get("ORACULO_DATA_DIR", ".data"), "stores"))

    async def serve(self) -> None:
        root = self.data_dir
        await asyncio.to_thread(_prepare_root, root)
        stores = Stores(root, self.max_open, self.vector_index_rows)
        app = application(
            self.base_url,
            stores,
            auth=hub_auth.HubAuthenticator(parent=self),
            max_import_bytes=self.max_import_bytes,
            log_function=self._log_request,
        )
        server = httpserver.HTTPServer(app, max_body_size=self.max_body_bytes, xheaders=True)
        server.listen(self.port, self.ip)
        self.log.info(
            "store service at http://%s:%d%s (%s)", self.ip, self.port, self.base_url, root
        )
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await stop.wait()
        finally:
            server.stop()

    def _log_request(self, handler: web.RequestHandler) -> None:
        # method, route and status only: never headers (tokens) or bodies
        status = handler.get_status()
        level = self.log.warning if status >= 500 else self.log.debug
        level(
            "%d %s %s %.1fms",
            status,
            handler.request.method,
            handler.request.path,
            1000 * handler.request.request_time(),
        )

    def start(self) -> None:
        # a hub started in the background ignores SIGINT; its children inherit that: restore it
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            asyncio.run(self.serve())
        except KeyboardInterrupt:
            self.log.info("interrupted")


def main(argv: list[str] | None = None) -> None:
    app = StoreServiceApp()
    app.parse_command_line(argv)
    if not app.base_url.endswith("/"):
        app.base_url += "/"
    app.start()
