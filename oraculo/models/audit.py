"""The execution audit trail, kept by the model service where the audited code cannot write.

A user's server records every execution that did not come from the user typing in a notebook
(API, chat, agents: :mod:`oraculo.extensions.execute.audit`). Its kernels run as the user's OS
account, so a file in the user's home is no audit trail: the code it audits could rewrite it.
The server sends the records here instead, with its own credential; the store is append-only
(no route changes or removes a record) and lives in the model service's database, out of the
users' reach.

- ``POST v1/audit/executions`` ``{"records": [{...}, ...]}`` (1-100 JSON objects): appends them
  for the user the credential names. Only the user's server (its token has
  ``users:activity``, which a kernel's or the panel server's token lacks) or the user's own full
  token may; a kernel's token gets 403.
- ``GET v1/audit/executions[?limit=N&execution_id=...]``: the caller's newest ``limit`` records
  (oldest first); ``user=`` someone else needs ``custom:oraculo:audit:read-all``.
- ``GET v1/audit/export[?user=...]``: every record (or one user's) as JSON lines, for operators
  (``custom:oraculo:audit:read-all``).

Each stored record gets ``id`` (increasing), ``user`` and ``received_at`` (the service's clock),
which no caller sets.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import sqlalchemy as sa

from .basehandler import BaseHandler
from .errors import Forbidden, InvalidRequest
from .metering import schema_lock
from .service import ModelService

#: Most records one request may append, and the largest one (serialised).
MAX_RECORDS = 100
MAX_RECORD_BYTES = 512 * 1024

metadata = sa.MetaData()
execution_audit = sa.Table(
    "execution_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user", sa.String(255), nullable=False, index=True),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("execution_id", sa.String(64), nullable=False, default="", index=True),
    sa.Column("record", sa.Text, nullable=False),
)


class AuditStore:
    """Append and read; nothing else. Calls block: the handlers run them in a thread."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        with schema_lock(engine):  # several processes may share one database
            metadata.create_all(engine)

    def append(self, user: str, records: list[dict[str, Any]]) -> list[int]:
        now = time.time()
        ids = []
        with self.engine.begin() as conn:
            for rec in records:
                row = conn.execute(
                    execution_audit.insert().values(
                        user=user,
                        received_at=now,
                        execution_id=str(rec.get("execution_id") or "")[:64],
                        record=json.dumps(rec, separators=(",", ":")),
                    )
                )
                key = row.inserted_primary_key
                assert key is not None
                ids.append(int(key[0]))
        return ids

    def read(
        self, user: str | None, limit: int = 0, execution_id: str = ""
    ) -> list[dict[str, Any]]:
        """Records oldest first: the newest ``limit`` (0: all), of one user or of everyone."""
        t = execution_audit
        q = sa.select(t).order_by(t.c.id.desc())
        if user is not None:
            q = q.where(t.c.user == user)
        if execution_id:
            q = q.where(t.c.execution_id == execution_id)
        if limit:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return [_record(r) for r in reversed(rows)]


def _record(row: Any) -> dict[str, Any]:
    try:
        rec = json.loads(row.record)
    except ValueError:
        rec = {}
    return {**rec, "id": row.id, "user": row.user, "received_at": row.received_at}


class _AuditHandler(BaseHandler):
    # endpoint "": bookkeeping, not model use, so no usage row (ModelService.UNMETERED).
    endpoint = ""

    def initialize(self, service: ModelService, audit: AuditStore) -> None:  # type: ignore[override]
        super().initialize(service)
        self.audit = audit

    def _user(self) -> str | None:
        """Whose records: the caller's own, or ``user=`` (anyone's for operators)."""
        who = self.identity
        assert who is not None
        user = self.get_argument("user", None) or None
        if user not in (None, who.name) and not who.can_read_all_audit:
            raise Forbidden("You may only read your own audit records.", param="user")
        return user or who.name


class AuditRecordsHandler(_AuditHandler):
    async def post(self) -> None:
        who = self.identity
        assert who is not None
        if not who.can_write_audit:
            raise Forbidden(
                "Only the user's server appends audit records (a kernel's token may not)."
            )
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError:
            raise InvalidRequest("The body must be JSON.") from None
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list) or not 1 <= len(records) <= MAX_RECORDS:
            raise InvalidRequest(
                f"'records' must be a list of 1 to {MAX_RECORDS} objects.", param="records"
            )
        for rec in records:
            if not isinstance(rec, dict):
                raise InvalidRequest("Each record must be a JSON object.", param="records")
            if len(json.dumps(rec)) > MAX_RECORD_BYTES:
                raise InvalidRequest(
                    f"A record is larger than {MAX_RECORD_BYTES} bytes.", param="records"
                )
        ids = await asyncio.to_thread(self.audit.append, who.name, records)
        self.set_status(201)
        self.write_json({"object": "audit.append", "appended": len(ids), "ids": ids})

    async def get(self) -> None:
        user = self._user()
        try:
            limit = int(self.get_argument("limit", "1000"))
        except ValueError:
            raise InvalidRequest("'limit' must be an integer.", param="limit") from None
        if not 0 <= limit <= 100_000:
            raise InvalidRequest("'limit' must be between 0 and 100000.", param="limit")
        execution_id = self.get_argument("execution_id", "")
        records = await asyncio.to_thread(self.audit.read, user, limit, execution_id)
        self.write_json({"object": "list", "data": records})


class AuditExportHandler(_AuditHandler):
    async def get(self) -> None:
        who = self.identity
        assert who is not None
        if not who.can_read_all_audit:
            raise Forbidden("Exporting the audit trail needs custom:oraculo:audit:read-all.")
        user = self.get_argument("user", None) or None
        records = await asyncio.to_thread(self.audit.read, user, 0, "")
        self.set_header("Content-Type", "application/x-ndjson")
        self.set_header("Content-Disposition", 'attachment; filename="executions.jsonl"')
        self.finish("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))


def audit_routes(prefix: str, service: ModelService) -> list[Any]:
    """The audit routes under ``prefix``, on the usage store's database."""
    kw = {"service": service, "audit": AuditStore(service.store.engine)}
    return [
        (rf"{prefix}v1/audit/executions", AuditRecordsHandler, kw),
        (rf"{prefix}v1/audit/export", AuditExportHandler, kw),
    ]
