"""``WS /api/v1/voice``: a spoken conversation with the assistant.

Authenticated and authorised (hub scopes, through jupyter_server's authorizer) *before* the
upgrade, as jupyter_server's kernel websocket is: a token of another user is a 403 and no
websocket is opened.

Protocol
--------
Client → server:

- **binary frames**: audio, **16 kHz mono signed 16-bit little-endian PCM** (``pcm_s16le``), any
  length up to ``max_message_size`` (64 KiB, 2 s); an odd number of bytes is an ``error`` event and
  the frame is dropped.
- **text frames**: JSON objects with a ``type``:
  ``{"type": "start", "mode": "hands_free"|"push_to_talk", "conversation_id"?: str}`` (optional:
  settings; continuing a stored chat conversation), ``{"type": "commit"}`` (end of the utterance
  now: push-to-talk released), ``{"type": "cancel"}`` (stop the reply and its playback),
  ``{"type": "ping"}``.

Server → client (text frames are JSON with a ``type``):

- ``ready`` ``{session, format: "pcm_s16le", sample_rate: 16000, max_message_size}`` on open;
- ``speech_start`` ``{utterance}``: the VAD heard speech;
- ``partial`` ``{utterance, text}`` while the user speaks; ``final`` ``{utterance, text, forced}``
  at the end of the utterance (``forced``: the length cap or a ``commit`` ended it);
- ``reply`` ``{utterance, delta}``: the assistant's text as it streams;
- ``audio`` ``{utterance, sentence, text, format: "pcm_s16le", sample_rate, bytes}``, immediately
  followed by **one binary frame** holding that sentence's speech (mono s16le PCM at
  ``sample_rate``); the first of a reply also has ``timing_ms`` ``{to_final, to_first_token,
  to_first_audio}``, the server's split of the time since the end of the utterance;
- ``reply_end`` ``{utterance, text, conversation_id, cancelled}``;
- ``barge_in`` / ``cancelled`` ``{utterance}``: stop playing what was sent;
- ``error`` ``{utterance?, error: {message, reason, type}}``; the connection stays open
  unless a close follows;
- ``pong``.

A text frame that is not a JSON object with a known ``type`` is an ``error`` event. A frame larger
than ``max_message_size`` closes the connection (1009). A client that does not read what it is
sent (``max_queued`` messages waiting) or that sends audio faster than it can be processed is
disconnected (1008), so it holds up no other session.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado import web
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from oraculo.extensions.base.errors import BadRequest, OraculoError, PayloadTooLarge

#: Largest frame accepted (64 KiB: 2 s of audio); a larger one is answered with a close (1009).
MAX_MESSAGE_SIZE = 64 * 1024
#: Largest frame read at all: tornado drops the TCP connection past this without a close frame,
#: so frames between the two limits get the orderly close a client can read.
HARD_MESSAGE_SIZE = 1024 * 1024
#: Messages waiting for a slow client before it is disconnected.
MAX_QUEUED = 256


class VoiceHandler(WebSocketMixin, WebSocketHandler, JupyterHandler):
    """One voice session per connection (see the module docstring for the protocol)."""

    auth_resource = "oraculo"

    session: Any = None
    _writer: asyncio.Task[None] | None = None
    _closing: asyncio.Future[None] | None = None
    _outbox: asyncio.Queue[dict[str, Any] | bytes | None]

    def set_default_headers(self) -> None:
        """No JupyterHandler headers on a websocket upgrade."""

    @property
    def max_message_size(self) -> int:
        return HARD_MESSAGE_SIZE

    async def pre_get(self) -> None:
        user = self.current_user
        authorized = await ensure_async(
            self.authorizer.is_authorized(self, user, "write", self.auth_resource)
        )
        if not authorized:
            raise web.HTTPError(403)
        if "voice" not in self.settings["oraculo"].loaded:
            raise web.HTTPError(503, "The voice feature is not loaded.")
        try:  # cohort policy (oraculo.policy): refused before the upgrade
            await self.settings["oraculo"].models.check_policy("voice")
        except OraculoError as e:
            raise web.HTTPError(e.status, e.message) from e

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await self.pre_get()
        await super().get(*args, **kwargs)

    def open(self, *args: Any, **kwargs: Any) -> None:
        super().open()
        self._outbox = asyncio.Queue(MAX_QUEUED)
        self._writer = asyncio.ensure_future(self._write_loop())
        self.session = self.settings["oraculo"].feature("voice").service.session(self.enqueue)
        self.enqueue(
            {
                "type": "ready",
                "session": self.session.id,
                "format": "pcm_s16le",
                "sample_rate": 16000,
                "max_message_size": MAX_MESSAGE_SIZE,
            }
        )

    def enqueue(self, message: dict[str, Any] | bytes) -> bool:
        """Queue ``message`` for the client; a full queue means a client too slow: close."""
        if self._writer is None or self._writer.done():
            return False
        try:
            self._outbox.put_nowait(message)
            return True
        except asyncio.QueueFull:
            self.log.warning("voice session %s: client too slow, closing", self.session.id)
            self._shutdown(1008, "client too slow")
            return False

    async def _write_loop(self) -> None:
        while (msg := await self._outbox.get()) is not None:
            try:
                if isinstance(msg, bytes):
                    await self.write_message(msg, binary=True)
                else:
                    await self.write_message(json.dumps(msg, separators=(",", ":")))
            except WebSocketClosedError:
                return

    def on_message(self, message: str | bytes) -> None:
        if self.session is None:
            return
        if len(message) > MAX_MESSAGE_SIZE:
            self._shutdown(1009, f"frames are at most {MAX_MESSAGE_SIZE} bytes")
            return
        if isinstance(message, bytes):
            try:
                self.session.audio(message)
            except ValueError as e:
                self.enqueue({"type": "error", "error": BadRequest(str(e)).to_json()})
            except OverflowError as e:
                self.enqueue({"type": "error", "error": PayloadTooLarge(str(e)).to_json()})
                self._shutdown(1008, "audio backlog")
            return
        self._control(message)

    def _control(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            msg = None
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "ping":
            self.enqueue({"type": "pong"})
        elif kind in ("commit", "cancel"):
            self.session.command(kind)
        elif kind == "start":
            cid = msg.get("conversation_id") if isinstance(msg, dict) else None
            if isinstance(cid, str) and len(cid) == 32:
                self.session.conversation_id = cid
            if isinstance(msg, dict) and msg.get("mode") in ("hands_free", "push_to_talk"):
                self.session.mode = msg["mode"]
        else:
            err = BadRequest("Control messages are JSON objects with a known 'type'.")
            self.enqueue({"type": "error", "error": err.to_json()})

    def _shutdown(self, code: int, reason: str) -> None:
        if self.ws_connection is not None:
            self.close(code, reason)

    def on_close(self) -> None:
        super().on_close()
        if self._writer is not None:
            self._outbox = asyncio.Queue()
            self._outbox.put_nowait(None)
            self._writer.cancel()
        if self.session is not None:
            session, self.session = self.session, None
            self._closing = asyncio.ensure_future(session.close())
