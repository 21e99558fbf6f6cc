"""Chat conversations, kept per user in ``~/.oraculo/conversations.sqlite``.

SQLite in WAL mode gives atomic writes (a server killed mid-write leaves the last committed
state) and lets two tabs append to one conversation without losing a message. Calls run in a
worker thread so that the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from traitlets import Int, Unicode, default
from traitlets.config import LoggingConfigurable

from oraculo.extensions.base.errors import NotFound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    model TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    meta TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, seq);
"""

#: Longest title kept (characters); longer ones are cut.
MAX_TITLE = 120


class ConversationStore(LoggingConfigurable):
    """List, create, read, rename, delete conversations and append messages to them."""

    path = Unicode(
        config=True,
        help="SQLite file holding the conversations. Default: ~/.oraculo/conversations.sqlite.",
    )
    max_list = Int(500, config=True, help="Most conversations a listing returns (newest first).")

    @default("path")
    def _default_path(self) -> str:
        return str(Path.home() / ".oraculo" / "conversations.sqlite")

    _lock: threading.Lock
    _conn: sqlite3.Connection | None = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lock = threading.Lock()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            folder = Path(self.path).parent
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
            columns = {r[1] for r in conn.execute("PRAGMA table_info(conversations)")}
            if "notebook" not in columns:  # conversations kept before bindings existed
                conn.execute("ALTER TABLE conversations ADD COLUMN notebook TEXT")
            conn.row_factory = sqlite3.Row
            self._conn = conn
        return self._conn

    async def _run(self, fn: Any, *args: Any) -> Any:
        def locked() -> Any:
            with self._lock:
                return fn(self._db(), *args)

        return await asyncio.to_thread(locked)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- conversations ------------------------------------------------------------------------

    async def create(
        self, title: str = "", model: str = "", cid: str = "", notebook: str | None = None
    ) -> dict[str, Any]:
        """A new, empty conversation (``cid`` chosen by the caller, or a fresh one), bound to
        ``notebook`` (a path) or to none."""

        def run(db: sqlite3.Connection) -> dict[str, Any]:
            now = time.time()
            cid_ = cid or new_id()
            db.execute(
                "INSERT INTO conversations (id, title, model, created_at, updated_at, notebook)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (cid_, _title(title) or "New conversation", model, now, now, notebook),
            )
            return _conversation(_get_row(db, cid_), 0)

        result: dict[str, Any] = await self._run(run)
        return result

    async def list_all(self) -> list[dict[str, Any]]:
        def run(db: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = db.execute(
                "SELECT c.*, (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id)"
                " AS n FROM conversations c ORDER BY updated_at DESC LIMIT ?",
                (self.max_list,),
            ).fetchall()
            return [_conversation(r, r["n"]) for r in rows]

        result: list[dict[str, Any]] = await self._run(run)
        return result

    async def get(self, cid: str, with_messages: bool = True) -> dict[str, Any]:
        """One conversation and (by default) its messages, oldest first; 404 when unknown."""

        def run(db: sqlite3.Connection) -> dict[str, Any]:
            row = _get_row(db, cid)
            messages = db.execute(
                "SELECT role, content, meta, created_at FROM messages"
                " WHERE conversation_id = ? ORDER BY seq",
                (cid,),
            ).fetchall()
            conv = _conversation(row, len(messages))
            if with_messages:
                conv["messages"] = [_message(m) for m in messages]
            return conv

        result: dict[str, Any] = await self._run(run)
        return result

    async def rename(self, cid: str, title: str) -> dict[str, Any]:
        def run(db: sqlite3.Connection) -> dict[str, Any]:
            _get_row(db, cid)
            db.execute(
                "UPDATE conversations SET title = ?, updated_at = ? WHERE id = ?",
                (_title(title), time.time(), cid),
            )
            n = db.execute("SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (cid,))
            return _conversation(_get_row(db, cid), n.fetchone()[0])

        result: dict[str, Any] = await self._run(run)
        return result

    async def bind(self, cid: str, notebook: str | None) -> dict[str, Any]:
        """Bind the conversation to the notebook at ``notebook`` (None: unbind)."""

        def run(db: sqlite3.Connection) -> dict[str, Any]:
            _get_row(db, cid)
            db.execute("UPDATE conversations SET notebook = ? WHERE id = ?", (notebook, cid))
            n = db.execute("SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (cid,))
            return _conversation(_get_row(db, cid), n.fetchone()[0])

        result: dict[str, Any] = await self._run(run)
        return result

    async def delete(self, cid: str) -> None:
        def run(db: sqlite3.Connection) -> None:
            _get_row(db, cid)
            db.execute("DELETE FROM conversations WHERE id = ?", (cid,))

        await self._run(run)

    async def append(self, cid: str, messages: list[dict[str, Any]], model: str = "") -> None:
        """Append ``{role, content, meta?}`` messages in one transaction."""

        def run(db: sqlite3.Connection) -> None:
            now = time.time()
            db.execute("BEGIN IMMEDIATE")
            try:
                _get_row(db, cid)
                db.executemany(
                    "INSERT INTO messages (conversation_id, role, content, meta, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [
                        (
                            cid,
                            m["role"],
                            m["content"],
                            json.dumps(m["meta"]) if m.get("meta") else None,
                            now,
                        )
                        for m in messages
                    ],
                )
                db.execute(
                    "UPDATE conversations SET updated_at = ?,"
                    " model = CASE WHEN ? = '' THEN model ELSE ? END WHERE id = ?",
                    (now, model, model, cid),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        await self._run(run)


def new_id() -> str:
    """A fresh conversation id."""
    return uuid.uuid4().hex


def _title(title: str) -> str:
    title = " ".join(title.split())
    return title if len(title) <= MAX_TITLE else title[: MAX_TITLE - 1] + "…"


def _get_row(db: sqlite3.Connection, cid: str) -> sqlite3.Row:
    row = db.execute("SELECT * FROM conversations WHERE id = ?", (cid,)).fetchone()
    if row is None:
        raise NotFound(f"No conversation {cid!r}.", reason="Unknown conversation")
    return row


def _conversation(row: sqlite3.Row, n: int) -> dict[str, Any]:
    return {
        "id": row["id"],
        "title": row["title"],
        "model": row["model"],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
        "message_count": n,
        "notebook": row["notebook"],
    }


def _message(row: sqlite3.Row) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "role": row["role"],
        "content": row["content"],
        "created_at": _iso(row["created_at"]),
    }
    if row["meta"]:
        msg["oraculo"] = json.loads(row["meta"])
    return msg


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
