"""``/api/v1/chat`` (also ``/api/v1/chat/completions``), its models and its conversations."""

from __future__ import annotations

import json
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from oraculo.extensions.base.errors import OraculoError
from oraculo.extensions.base.handlers import OraculoAPIHandler
from oraculo.extensions.chat.models import (
    CellInsert,
    ChatRequest,
    ConversationCreate,
    ConversationUpdate,
)
from oraculo.extensions.chat.service import StreamingReply


def _dumps(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


class ChatCompletionsHandler(OraculoAPIHandler):
    """OpenAI's chat completions: JSON, or SSE of chunks when ``stream`` is true."""

    _reply: StreamingReply | None = None
    _gone = False

    @web.authenticated
    @authorized
    async def post(self) -> None:
        req = self.parse_body(ChatRequest)
        await self.oraculo.models.check_policy("chat")  # an exam window: 403 (oraculo.policy)
        chat = self.feature("chat").service
        if not req.stream:
            self.finish(await chat.complete(req))
            return
        self._reply = reply = await chat.open_stream(req)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        try:
            async for chunk in reply:
                self.write(f"data: {_dumps(chunk)}\n\n")
                await self.flush()
            self.write("data: [DONE]\n\n")
        except StreamClosedError:
            reply.cancel()
            return
        except Exception as e:
            if self._gone:
                return
            if not isinstance(e, OraculoError):
                self.log.exception("chat stream failed")
                e = OraculoError("Unhandled error")
            # after a streaming 200, an error goes in-band, then the stream ends
            self.write(f"event: error\ndata: {_dumps({'error': e.to_json()})}\n\n")
            self.write("data: [DONE]\n\n")
        finally:
            await reply.close()
        if not self._gone:
            self.finish()

    def on_connection_close(self) -> None:
        self._gone = True
        if self._reply is not None:
            self._reply.cancel()


class ChatModelsHandler(OraculoAPIHandler):
    """The chat models the model service offers, and which one is the default."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        client = self.feature("chat").models
        models = await client.models()
        default = await client.resolve(None)
        features = {name: name in self.oraculo.loaded for name in ("execute", "memory")}
        self.finish(
            {"default": default.id, "models": [m.to_json() for m in models], "features": features}
        )


class ConversationsHandler(OraculoAPIHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        conversations = await self.feature("chat").conversations.list_all()
        self.finish({"conversations": conversations})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.parse_body(ConversationCreate)
        conv = await self.feature("chat").conversations.create(body.title, notebook=body.notebook)
        self.set_status(201)
        self.set_header("Location", f"{self.request.path.rstrip('/')}/{conv['id']}")
        self.finish(conv)


class ConversationHandler(OraculoAPIHandler):
    @web.authenticated
    @authorized
    async def get(self, cid: str) -> None:
        self.finish(await self.feature("chat").conversations.get(cid))

    @web.authenticated
    @authorized
    async def patch(self, cid: str) -> None:
        body = self.parse_body(ConversationUpdate)
        conversations = self.feature("chat").conversations
        conv = await conversations.get(cid, with_messages=False)
        if body.title is not None:
            conv = await conversations.rename(cid, body.title)
        if "notebook" in body.model_fields_set:
            conv = await conversations.bind(cid, body.notebook)
        self.finish(conv)

    @web.authenticated
    @authorized
    async def delete(self, cid: str) -> None:
        await self.feature("chat").conversations.delete(cid)
        self.set_status(204)
        self.finish()


class NotebooksHandler(OraculoAPIHandler):
    """The user's open notebooks (their sessions), for binding a conversation to one."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish({"notebooks": await self.feature("chat").notebooks.list_open()})


class CellsHandler(OraculoAPIHandler):
    """Code into an open notebook, through the JupyterLab pages that show it (202: asked)."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.parse_body(CellInsert)
        sent = await self.feature("chat").cells.insert(body.notebook, body.code, body.mode)
        self.set_status(202)
        self.finish(sent)
