"""The Chat panel: Panel's ChatInterface on the extension's ``/api/v1/chat``.

Like the Workspace panel it is a client of the public API of the Jupyter server that started it
(``ORACULO_SERVER_*``, see :func:`oraculo.extensions.panels.proxy.server_connection`): replies
stream from ``POST api/v1/chat``; the model list, the conversations and the features available
come from ``api/v1/chat/models`` and ``api/v1/chat/conversations``; "Run" on a code block posts
it to ``api/v1/execute`` and is shown only when the server has the execute feature.

Stable hooks for tests: ``[data-testid=oraculo-chat]`` (``data-state`` loading, idle,
streaming, done, stopped or error), ``chat-citations``, ``chat-error``, ``chat-run-output``;
the widgets carry the CSS classes ``chat-model``, ``chat-conversations``, ``chat-new``,
``chat-rename``, ``chat-delete`` and ``chat-run``.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import panel as pn
import param

from oraculo.extensions.panels.client import ServerAPIError, ServerClient

TEST_ID = "oraculo-chat"
ASSISTANT = "Oráculo"

CSS = """
.och-status { font: 13px system-ui, sans-serif; color: #616e7c; }
.och-cites { font: 12px system-ui, sans-serif; color: #3e4c59; margin: 4px 0 0; }
.och-cites li { margin: 2px 0; }
.och-cites code { font-size: 12px; }
.och-error { color: #c92a2a; }
.och-out { font: 12px ui-monospace, monospace; white-space: pre-wrap; background: #f5f7fa;
           border-radius: 6px; padding: 6px 8px; margin: 4px 0 0; }
"""

# Inline icons: Bokeh fetches its Tabler icon font from a CDN, and the hub may be offline.
_SEND_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16" height="16" '
    'fill="none" stroke="currentColor" stroke-width="2"><path d="M4 12h14M13 6l6 6-6 6"/></svg>'
)
_STOP_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16" height="16" '
    'fill="currentColor"><rect x="6" y="6" width="12" height="12" rx="2"/></svg>'
)

# ChatMessage always builds Tabler icons (its edit button), and Bokeh's TablerIconView loads
# the icon font's style sheet from cdn.jsdelivr.net. Pointing it at an empty data: URL keeps the
# page offline; the buttons that show use the inline SVGs above.
_OFFLINE_ICONS_JS = """(function () {
  var models = window.Bokeh && window.Bokeh.Models;
  if (!models) { return; }
  try { models.get("TablerIcon").prototype.default_view._url = "data:text/css,"; } catch (e) {}
})();"""

_MESSAGE_PARAMS = {"show_reaction_icons": False, "show_copy_icon": False}

_CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)


class ChatAPIError(ServerAPIError):
    """The server refused or failed; the message is safe to show."""


class ChatClient(ServerClient):
    """The chat API of this user's server, with the server's own credential."""

    timeout = 300.0

    error = ChatAPIError

    def error_message(self, status: int, content: bytes) -> str:
        return _message(status, content)

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yield ``(text delta, oraculo extra)`` for each chunk of a streamed reply."""
        async with self.connect() as c, c.stream("POST", self.base + "api/v1/chat", json=body) as r:
            if r.status_code != 200:
                raise ChatAPIError(_message(r.status_code, await r.aread()))
            event = ""
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                    continue
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if event == "error" or "error" in chunk:
                    raise ChatAPIError(str((chunk.get("error") or {}).get("message", "error")))
                text = "".join(
                    (ch.get("delta") or {}).get("content") or "" for ch in chunk.get("choices", [])
                )
                yield text, chunk.get("oraculo") or {}


def _message(status: int, content: bytes) -> str:
    try:
        body = json.loads(content)
        return f"{body.get('message') or body} (HTTP {status})"
    except ValueError:
        return f"HTTP {status}"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render_citations(citations: list[dict[str, Any]], memories: list[dict[str, Any]]) -> str:
    """The sources a reply used, as escaped HTML."""
    items: list[str] = []
    for c in citations:
        where = _e(c.get("path"))
        if c.get("cell") is not None:
            where += f", cell {_e(c['cell'])}"
        if c.get("start_line"):
            where += f", lines {_e(c['start_line'])}–{_e(c.get('end_line'))}"
        items.append(f"<li>[{_e(c.get('index', len(items) + 1))}] <code>{where}</code></li>")
    for m in memories:
        items.append(f"<li>memory <code>{_e(m.get('key'))}</code></li>")
    if not items:
        return ""
    return f'<ul class="och-cites" data-testid="chat-citations">{"".join(items)}</ul>'


class ChatPanel(pn.viewable.Viewer):
    """Chat with the workspace's assistant; conversations are kept by the server."""

    model = param.String(default="", doc="The model replies come from (empty: the default).")
    conversation_id = param.String(
        default="", doc="The conversation new messages go to (empty: a new one)."
    )
    state: Any = param.Selector(
        default="loading",
        objects=["loading", "idle", "streaming", "done", "stopped", "error"],
        doc="What the last reply did; mirrored in the root's data-state for tests.",
    )
    can_execute = param.Boolean(
        default=False, doc="Whether the server runs code (POST api/v1/execute)."
    )

    def __init__(self, client: ChatClient, **params: Any) -> None:
        super().__init__(**params)
        self._client = client
        self._status = pn.pane.HTML(
            self._status_html(""), stylesheets=[CSS], sizing_mode="stretch_width", min_height=24
        )
        self._models = pn.widgets.Select(
            name="Model", options=[], width=240, css_classes=["chat-model"]
        )
        self._models.param.watch(self._on_model, "value")
        self._conversations = pn.widgets.Select(
            name="Conversations", options={}, size=14, width=240, css_classes=["chat-conversations"]
        )
        self._conversations.param.watch(self._on_pick, "value")
        self._new = pn.widgets.Button(
            name="New chat", button_type="primary", css_classes=["chat-new"]
        )
        self._new.on_click(self._on_new)
        self._title = pn.widgets.TextInput(placeholder="Title", width=160)
        self._rename = pn.widgets.Button(name="Rename", width=72, css_classes=["chat-rename"])
        self._rename.on_click(self._on_rename)
        self._delete = pn.widgets.Button(
            name="Delete", button_type="danger", button_style="outline", css_classes=["chat-delete"]
        )
        self._delete.on_click(self._on_delete)
        self.interface = pn.chat.ChatInterface(
            callback=self._respond,
            callback_user=ASSISTANT,
            callback_exception="verbose",
            show_rerun=False,
            show_undo=False,
            show_clear=False,
            show_stop=True,
            button_properties={"send": {"icon": _SEND_SVG}, "stop": {"icon": _STOP_SVG}},
            placeholder_text="Thinking…",
            message_params=dict(_MESSAGE_PARAMS),
            user="You",
            avatar="Y",
            sizing_mode="stretch_both",
            min_height=480,
        )
        self._layout = pn.Row(
            pn.Column(
                pn.pane.HTML(
                    '<h1 style="margin:0;font:600 22px system-ui,sans-serif;color:#1f2933">'
                    "Chat</h1>"
                ),
                self._new,
                self._conversations,
                pn.Row(self._title, self._rename),
                self._delete,
                width=260,
            ),
            pn.Column(
                pn.Row(self._models, self._status, align="end"),
                self.interface,
                sizing_mode="stretch_both",
            ),
            sizing_mode="stretch_both",
            styles={"padding": "16px"},
        )

    # --- state --------------------------------------------------------------------------------

    def _status_html(self, text: str, error: str = "") -> str:
        err = (
            f' <span class="och-error" data-testid="chat-error">{_e(error)}</span>' if error else ""
        )
        return (
            f'<div data-testid="{TEST_ID}" data-state="{self.state}" class="och-status">'
            f"{_e(text)}{err}</div>"
        )

    def _set_state(self, state: str, text: str = "", error: str = "") -> None:
        self.state = state
        self._status.object = self._status_html(text, error)

    async def load(self) -> None:
        """Read the models and the conversations (on page load)."""
        try:
            info = await self._client.request("GET", "api/v1/chat/models")
            self.can_execute = bool(info.get("features", {}).get("execute"))
            self._models.options = [m["id"] for m in info["models"]]
            self._models.value = self.model or info["default"]
            await self._refresh_conversations()
        except (ChatAPIError, httpx.HTTPError) as e:
            self._set_state("error", error=str(e) or type(e).__name__)
            return
        self._set_state("idle", "Ready")

    async def _refresh_conversations(self) -> None:
        data = await self._client.request("GET", "api/v1/chat/conversations")
        options = {"(new conversation)": ""}
        for c in data["conversations"]:
            options[f"{c['title']} · {c['message_count']}"] = c["id"]
        self._conversations.options = options
        self._conversations.value = self.conversation_id

    # --- events -------------------------------------------------------------------------------

    def _on_model(self, event: Any) -> None:
        self.model = event.new or ""

    async def _on_pick(self, event: Any) -> None:
        cid = event.new or ""
        if cid == self.conversation_id:
            return
        self.conversation_id = cid
        self.interface.clear()
        if not cid:
            return
        conv = await self._client.request("GET", f"api/v1/chat/conversations/{cid}")
        self._title.value = conv["title"]
        for m in conv["messages"]:
            if m["role"] not in ("user", "assistant"):
                continue
            user = ASSISTANT if m["role"] == "assistant" else "You"
            extra = m.get("oraculo") or {}
            footer = self._footer(m["content"], extra.get("citations") or [], [])
            self.interface.send(
                pn.chat.ChatMessage(
                    m["content"],
                    user=user,
                    footer_objects=footer,
                    avatar=user[0],
                    **_MESSAGE_PARAMS,
                ),
                respond=False,
            )

    async def _on_new(self, event: Any) -> None:
        self.conversation_id = ""
        self._conversations.value = ""
        self._title.value = ""
        self.interface.clear()

    async def _on_rename(self, event: Any) -> None:
        if self.conversation_id and (self._title.value or "").strip():
            path = f"api/v1/chat/conversations/{self.conversation_id}"
            await self._client.request("PATCH", path, json={"title": self._title.value})
            await self._refresh_conversations()

    async def _on_delete(self, event: Any) -> None:
        if self.conversation_id:
            path = f"api/v1/chat/conversations/{self.conversation_id}"
            await self._client.request("DELETE", path)
            self.conversation_id = ""
            self.interface.clear()
            await self._refresh_conversations()

    # --- replies ------------------------------------------------------------------------------

    async def _respond(self, contents: Any, user: str, instance: Any) -> AsyncIterator[Any]:
        """ChatInterface's callback: stream the reply, then show its sources and run buttons."""
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": str(contents)}],
            "stream": True,
        }
        if self.model:
            body["model"] = self.model
        if self.conversation_id:
            body["conversation_id"] = self.conversation_id
        message = pn.chat.ChatMessage("", user=ASSISTANT, avatar="O", **_MESSAGE_PARAMS)
        yield message
        text, extra = "", {}
        self._set_state("streaming", "Replying…")
        try:
            async for delta, more in self._client.stream(body):
                extra.update(more)
                if delta:
                    text += delta
                    yield text
        except asyncio.CancelledError:
            self._set_state("stopped", "Stopped")
            raise
        except (ChatAPIError, httpx.HTTPError) as e:
            self._set_state("error", error=str(e) or type(e).__name__)
            return
        message.footer_objects = self._footer(
            text, extra.get("citations") or [], extra.get("memories") or []
        )
        if extra.get("conversation_id") and extra["conversation_id"] != self.conversation_id:
            self.conversation_id = extra["conversation_id"]
            await self._refresh_conversations()
        skipped = (extra.get("context") or {}).get("skipped") or []
        note = f" · without {'; '.join(skipped)}" if skipped else ""
        self._set_state("done", f"{extra.get('model') or self.model}{note}")

    def _footer(
        self, text: str, citations: list[dict[str, Any]], memories: list[dict[str, Any]]
    ) -> list[Any]:
        footer: list[Any] = []
        cites = render_citations(citations, memories)
        if cites:
            footer.append(pn.pane.HTML(cites, stylesheets=[CSS]))
        if self.can_execute:
            for code in _CODE_BLOCK.findall(text):
                footer.append(self._run_button(code))
        return footer

    def _run_button(self, code: str) -> pn.viewable.Viewable:
        output = pn.pane.HTML("", stylesheets=[CSS])
        button = pn.widgets.Button(name="Run", width=64, css_classes=["chat-run"])

        async def run(event: Any) -> None:
            button.loading = True
            try:
                result = await self._client.request(
                    "POST",
                    "api/v1/execute",
                    json={"code": code, "language": "python", "timeout": 60},
                )
                shown = result.get("output") or ""
                for bundle in result.get("results") or []:
                    shown += str(bundle.get("text/plain", "")) + "\n"
                if result.get("error"):
                    err = result["error"]
                    shown += f"{err.get('name')}: {err.get('value')}"
            except (ChatAPIError, httpx.HTTPError) as e:
                shown = str(e)
            finally:
                button.loading = False
            output.object = f'<pre class="och-out" data-testid="chat-run-output">{_e(shown)}</pre>'

        button.on_click(run)
        return pn.Column(button, output)

    def start(self) -> None:
        pn.state.onload(self.load)

    def __panel__(self) -> pn.viewable.Viewable:
        return self._layout


def create_app() -> ChatPanel:
    """The Chat page, talking to the server that started this process."""
    from oraculo.extensions.panels.workspace import static_url

    pn.extension(
        js_files={"oraculo_offline_icons": "data:text/javascript," + quote(_OFFLINE_ICONS_JS)}
    )
    if pn.state.curdoc is not None:
        pn.state.curdoc.template_variables["app_favicon"] = static_url("chat.svg")
    panel = ChatPanel(ChatClient.from_environment())
    panel.start()
    return panel
