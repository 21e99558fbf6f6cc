"""The audit log of executions that did not come from the user typing in a notebook.

One JSON object per line, appended (``O_APPEND``) to ``~/.oraculo/audit/executions.jsonl``
(mode 0600): who or what started each execution (``actor``, ``origin``: ``api``, ``chat``,
``agent:<name>``), the code, when, on which kernel, and how it ended. Nothing in Oráculo rewrites or
truncates it; the user reads it and an admin with access to the server exports it through
``GET /api/v1/execute/audit``.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from traitlets import Int, Unicode, default
from traitlets.config import LoggingConfigurable


class AuditLog(LoggingConfigurable):
    """Append-only JSON-lines log of executions."""

    path = Unicode(
        help="""File the execution audit log is appended to. Default
        ~/.oraculo/audit/executions.jsonl (in the user's home, mode 0600).""",
    ).tag(config=True)
    max_code_chars = Int(
        100_000, help="Code longer than this is recorded truncated (and marked so)."
    ).tag(config=True)

    _lock = threading.Lock()

    @default("path")
    def _default_path(self) -> str:
        return str(Path.home() / ".oraculo" / "audit" / "executions.jsonl")

    def append(self, record: dict[str, Any]) -> None:
        """Append one record; a failure is logged, never raised to the execution."""
        code = record.get("code")
        if isinstance(code, str) and len(code) > self.max_code_chars:
            record = {**record, "code": code[: self.max_code_chars], "code_truncated": True}
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

    def read(self, limit: int = 1000, execution_id: str = "") -> list[dict[str, Any]]:
        """The newest ``limit`` records (oldest first), optionally of one execution."""
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

    def export(self) -> bytes:
        """The whole log, as stored."""
        try:
            return Path(self.path).read_bytes()
        except FileNotFoundError:
            return b""
