"""The audit trail of executions that did not come from the user typing in a notebook.

Each record says who or what started an execution (``actor``, ``origin``: ``api``, ``chat``,
``agent:<name>``), the code, when, on which kernel, and how it ended.

Where the server has a model service (always under the hub), the records go there
(:mod:`oraculo.models.audit`): an append-only store in the service's database, written with the
server's own credential (which a kernel never holds), so the code being audited, which runs as
the user's OS account, can neither change nor delete what was recorded. Records are sent in the
background in batches; one that cannot be sent yet stays queued and is sent with the next. The
user reads their own records through ``GET /api/v1/execute/audit``; operators export everyone's
from the model service (``GET /services/models/v1/audit/export``).

Without a model service (a plain ``jupyter server``) the records are appended (``O_APPEND``) to
``~/.oraculo/audit/executions.jsonl`` (0600), which the user's own code could rewrite.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

from traitlets import Float, Instance, Int, Unicode, default
from traitlets.config import LoggingConfigurable

from oraculo.extensions.base.modelclient import ModelClient

#: Records sent to the model service in one request (its limit is 100).
BATCH = 100


class AuditLog(LoggingConfigurable):
    """Append-only log of executions: the model service's audit store, else a local file."""

    path = Unicode(
        help="""File the execution audit log is appended to where no model service is
        configured. Default ~/.oraculo/audit/executions.jsonl (mode 0600).""",
    ).tag(config=True)
    max_code_chars = Int(
        100_000, help="Code longer than this is recorded truncated (and marked so)."
    ).tag(config=True)
    max_queued = Int(
        100_000,
        help="""Records kept while the model service cannot be reached; beyond that the oldest
        are dropped (and the drop is logged).""",
    ).tag(config=True)
    retry_seconds = Float(
        2.0, help="Seconds before a batch the model service did not take is sent again."
    ).tag(config=True)
    models = Instance(
        ModelClient,
        allow_none=True,
        help="The extension's model-service client (its credential is the server's own).",
    )

    _lock = threading.Lock()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._queue: list[dict[str, Any]] = []
        self._sender: asyncio.Task[None] | None = None
        self._sending = asyncio.Lock()

    @default("path")
    def _default_path(self) -> str:
        return str(Path.home() / ".oraculo" / "audit" / "executions.jsonl")

    @property
    def remote(self) -> bool:
        """Whether records go to the model service's audit store."""
        return self.models is not None and self.models.configured

    def append(self, record: dict[str, Any]) -> None:
        """Record one event; a failure is logged, never raised to the execution."""
        code = record.get("code")
        if isinstance(code, str) and len(code) > self.max_code_chars:
            record = {**record, "code": code[: self.max_code_chars], "code_truncated": True}
        if not self.remote:
            self._append_file(record)
            return
        self._queue.append(json.loads(json.dumps(record, default=str)))
        if len(self._queue) > self.max_queued:
            dropped = len(self._queue) - self.max_queued
            del self._queue[:dropped]
            self.log.error("Dropped %d audit records the model service did not take", dropped)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # sent by the next flush
        if self._sender is None or self._sender.done():
            self._sender = loop.create_task(self._send_until_empty())

    async def _send_until_empty(self) -> None:
        while self._queue:
            if not await self.flush():
                await asyncio.sleep(self.retry_seconds)

    async def flush(self) -> bool:
        """Send what is queued; True when nothing is left."""
        if not self.remote:
            return True
        async with self._sending:
            while self._queue:
                batch = self._queue[:BATCH]
                try:
                    assert self.models is not None
                    await self.models.request(
                        "POST", "v1/audit/executions", json={"records": batch}, timeout=30
                    )
                except Exception as e:
                    self.log.warning("Audit records not sent yet: %s", e)
                    return False
                del self._queue[: len(batch)]
        return True

    async def read(self, limit: int = 1000, execution_id: str = "") -> list[dict[str, Any]]:
        """This user's newest ``limit`` records (oldest first), optionally of one execution."""
        if not self.remote:
            return await asyncio.to_thread(self._read_file, limit, execution_id)
        assert self.models is not None
        await self.flush()
        params: dict[str, Any] = {"limit": limit}
        if execution_id:
            params["execution_id"] = execution_id
        r = await self.models.request("GET", "v1/audit/executions", params=params, timeout=30)
        records: list[dict[str, Any]] = r.json()["data"]
        return records

    async def export(self) -> bytes:
        """This user's whole log, as JSON lines."""
        if not self.remote:
            return await asyncio.to_thread(self._export_file)
        records = await self.read(limit=0)
        return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()

    async def stop(self) -> None:
        await self.flush()
        if self._sender is not None:
            self._sender.cancel()

    # --- the local file (no model service) ----------------------------------------------------

    def _append_file(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        try:
            folder = os.path.dirname(self.path)
            os.makedirs(folder, 0o700, exist_ok=True)
            with self._lock:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
        except OSError:
            self.log.exception("Could not append to the execution audit log %s", self.path)

    def _read_file(self, limit: int, execution_id: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        try:
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if execution_id and rec.get("execution_id") != execution_id:
                        continue
                    records.append(rec)
        except FileNotFoundError:
            return []
        return records[-limit:] if limit else records

    def _export_file(self) -> bytes:
        try:
            return Path(self.path).read_bytes()
        except FileNotFoundError:
            return b""
