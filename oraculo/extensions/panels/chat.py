"""The Chat panel: Panel's ChatInterface on the extension's ``/api/v1/chat``.

Like the Workspace panel it is a client of the public API of the Jupyter server that started it
(``ORACULO_SERVER_*``, see :func:`oraculo.extensions.panels.proxy.server_connection`): replies
stream from ``POST api/v1/chat``; the model list, the conversations and the features available
come from ``api/v1/chat/models`` and ``api/v1/chat/conversations``; "Run" on a code block posts
it to ``api/v1/execute`` and is shown only when the server has the execute feature.

Stable hooks for tests: ``[data-testid=oraculo-chat]`` (``data-state`` loading, idle,
streaming, done, stopped or error), ``chat-citations``, ``chat-error``, ``chat-run-output``
(its ``data-where`` is the notebook the code ran in, or ``assistant``), ``chat-run-where``,
``chat-insert-note``, ``chat-binding``; the
widgets carry the CSS classes ``chat-model``, ``chat-conversations``, ``chat-new``,
``chat-rename``, ``chat-delete``, ``chat-notebook``, ``chat-notebooks-refresh``, ``chat-run``,
``chat-insert`` and ``chat-replace``.

A conversation can be bound to one of the user's open notebooks (``api/v1/chat/notebooks``):
the server then takes the context from that notebook and its live kernel, and "Run" executes in
that kernel (``session``: the notebook's path), saying where it ran.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlparse

import httpx
import panel as pn
import param

from oraculo.extensions.base.wire import aiter_events, read_error
from oraculo.extensions.panels.client import ServerAPIError, ServerClient
from oraculo.extensions.panels.workspace import static_url
from oraculo.kernels.chat_inputs import CODE_INSTRUCTION, CODE_STOP, fenced_code

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
.och-where { font: 11px system-ui, sans-serif; color: #616e7c; margin: 4px 0 0; }
.och-cites a { color: #1f5fbf; }
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

#: Longest code-only reply (tokens): a few lines, which a small model on a CPU writes in seconds.
CODE_MAX_TOKENS = 160

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
            async for event in aiter_events(r.aiter_lines()):
                if event.is_error:
                    raise ChatAPIError(read_error(502, event.data).message)
                chunk = event.data if isinstance(event.data, dict) else {}
                text = "".join(
                    (ch.get("delta") or {}).get("content") or "" for ch in chunk.get("choices", [])
                )
                yield text, chunk.get("oraculo") or {}


def _message(status: int, content: bytes) -> str:
    return f"{read_error(status, content).message} (HTTP {status})"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def lab_url(base_path: str, path: str) -> str:
    """JupyterLab's address that opens ``path`` (a file or notebook of the user's)."""
    return base_path.rstrip("/") + "/lab/tree/" + quote(str(path).lstrip("/"))


def render_citations(
    citations: list[dict[str, Any]], memories: list[dict[str, Any]], base_path: str = ""
) -> str:
    """The sources a reply used, as escaped HTML; each passage links to its file in
    JupyterLab (opened in a new tab)."""
    items: list[str] = []
    for c in citations:
        where = _e(c.get("path"))
        if c.get("cell") is not None:
            where += f", cell {_e(c['cell'])}"
        if c.get("start_line"):
            where += f", lines {_e(c['start_line'])}–{_e(c.get('end_line'))}"
        label = f"<code>{where}</code>"
        if base_path and c.get("path"):
            href = _e(lab_url(base_path, str(c["path"])))
            label = f'<a href="{href}" target="_blank" rel="noopener">{label}</a>'
        items.append(f"<li>[{_e(c.get('index', len(items) + 1))}] {label}</li>")
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
    notebook = param.String(
        default="", doc="The notebook the conversation is bound to (empty: none)."
    )

    def __init__(self, client: ChatClient, **params: Any) -> None:
        super().__init__(**params)
        self._client = client
        #: The server's base path as the browser sees it (links into JupyterLab).
        self._base_path = urlparse(client.base).path or "/"
        self._notebooks = pn.widgets.Select(
            name="Notebook", options={"(no notebook)": ""}, width=240, css_classes=["chat-notebook"]
        )
        self._notebooks.param.watch(self._on_bind, "value")
        self._refresh_notebooks = pn.widgets.Button(
            name="↻", width=36, css_classes=["chat-notebooks-refresh"], description="Refresh"
        )
        self._refresh_notebooks.on_click(self._on_refresh_notebooks)
        self._binding = pn.pane.HTML("", stylesheets=[CSS], sizing_mode="stretch_width")
        self._confirming = False
        self._code_only = pn.widgets.Checkbox(
            name="Reply with code only", value=False, css_classes=["chat-code-only"]
        )
        #: Each model's context window (tokens), to say how much of it the context used.
        self._windows: dict[str, int] = {}
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
                pn.Row(self._notebooks, self._refresh_notebooks, align="end"),
                self._binding,
                self._code_only,
                width=290,
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
            self._windows = {m["id"]: m.get("context_length") or 2048 for m in info["models"]}
            self._models.value = self.model or info["default"]
            await self._refresh_conversations()
            await self._load_notebooks()
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

    async def _load_notebooks(self) -> None:
        """The user's open notebooks as the binding choices (the bound one stays listed)."""
        data = await self._client.request("GET", "api/v1/chat/notebooks")
        options = {"(no notebook)": ""}
        for n in data["notebooks"]:
            options[f"{n['path']} · {n['state']}"] = n["path"]
        if self.notebook and self.notebook not in options.values():
            options[f"{self.notebook} · not open"] = self.notebook
        self._notebooks.options = options
        self._notebooks.value = self.notebook
        self._show_binding()

    def _show_binding(self) -> None:
        if self.notebook:
            text = f"Bound to <b>{_e(self.notebook)}</b>: its cells and kernel are the context"
            if self.can_execute:
                text += "; Run executes there"
        else:
            text = "No notebook: Run uses the assistant's own kernel"
        text += ". Mention <code>@file</code> or <code>@variable</code> to send it along."
        self._binding.object = f'<div class="och-where" data-testid="chat-binding">{text}</div>'

    # --- events -------------------------------------------------------------------------------

    async def _on_refresh_notebooks(self, event: Any) -> None:
        try:
            await self._load_notebooks()
        except (ChatAPIError, httpx.HTTPError) as e:
            self._set_state("error", error=str(e) or type(e).__name__)

    async def _on_bind(self, event: Any) -> None:
        path = event.new or ""
        if path == self.notebook:
            return
        self.notebook = path
        self._show_binding()
        if self.conversation_id:
            conv = f"api/v1/chat/conversations/{self.conversation_id}"
            try:
                await self._client.request("PATCH", conv, json={"notebook": path or None})
            except (ChatAPIError, httpx.HTTPError) as e:
                self._set_state("error", error=str(e) or type(e).__name__)

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
        self.notebook = conv.get("notebook") or ""
        await self._load_notebooks()
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
                    **_when(m.get("created_at")),  # when it was said, not now
                    **_MESSAGE_PARAMS,
                ),
                respond=False,
            )

    async def _on_new(self, event: Any) -> None:
        self.conversation_id = ""
        self._conversations.value = ""
        self._title.value = ""
        self._cancel_delete()
        self.interface.clear()

    async def _on_rename(self, event: Any) -> None:
        if self.conversation_id and (self._title.value or "").strip():
            path = f"api/v1/chat/conversations/{self.conversation_id}"
            await self._client.request("PATCH", path, json={"title": self._title.value})
            await self._refresh_conversations()

    def _cancel_delete(self) -> None:
        self._confirming = False
        self._delete.name = "Delete"
        self._delete.button_style = "outline"

    async def _on_delete(self, event: Any) -> None:
        """The first click asks (the button reads "Really delete?"); the second deletes."""
        if not self.conversation_id:
            return
        if not self._confirming:
            self._confirming = True
            self._delete.name = "Really delete?"
            self._delete.button_style = "solid"
            return
        self._cancel_delete()
        path = f"api/v1/chat/conversations/{self.conversation_id}"
        await self._client.request("DELETE", path)
        self.conversation_id = ""
        self._title.value = ""
        self.interface.clear()
        await self._refresh_conversations()

    # --- replies ------------------------------------------------------------------------------

    def _drop_if_empty(self, message: Any, text: str) -> None:
        """A reply that ended before its first word leaves no empty bubble behind."""
        if not text:
            self.interface.objects = [o for o in self.interface.objects if o is not message]

    async def _respond(self, contents: Any, user: str, instance: Any) -> AsyncIterator[Any]:
        """ChatInterface's callback: stream the reply, then show its sources and run buttons."""
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": str(contents)}],
            "stream": True,
            "store": True,
        }
        if self.model:
            body["model"] = self.model
        if self.conversation_id:
            body["conversation_id"] = self.conversation_id
        # @file and @variable in the question go as context
        body["context"] = {"mentions": True}
        if self.notebook:
            body["context"]["notebook"] = self.notebook
        code_only = bool(self._code_only.value)
        if code_only:  # one code block, greedy (the same each time), ending at its fence
            body["messages"][0]["content"] += CODE_INSTRUCTION
            body["stop"] = CODE_STOP
            body["temperature"] = 0
            body["max_tokens"] = CODE_MAX_TOKENS
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
            self._drop_if_empty(message, text)
            self._set_state("stopped", "Stopped")
            raise
        except (ChatAPIError, httpx.HTTPError) as e:
            self._drop_if_empty(message, text)  # refused (an exam window, a budget): no bubble
            self._set_state("error", error=str(e) or type(e).__name__)
            return
        if code_only:
            code = fenced_code(text)
            text = f"```python\n{code}```" if code else text
            message.object = text
        message.footer_objects = self._footer(
            text, extra.get("citations") or [], extra.get("memories") or []
        )
        if extra.get("conversation_id") and extra["conversation_id"] != self.conversation_id:
            self.conversation_id = extra["conversation_id"]
            await self._refresh_conversations()
        self._set_state("done", self._usage_text(extra))

    def _usage_text(self, extra: dict[str, Any]) -> str:
        """The model, what context went with the question and how much of the model's window
        the prompt took (the server's estimate)."""
        model = extra.get("model") or self.model
        context = extra.get("context") or {}
        parts = [model]
        sent = []
        if context.get("variables"):
            sent.append(f"{context['variables']} variables")
        if context.get("notebook"):
            sent.append(
                f"{context['notebook'].get('cells', 0)} cells of {context['notebook']['path']}"
            )
        if context.get("kernel_inputs"):
            sent.append(f"{context['kernel_inputs']} inputs run in its kernel")
        for m in context.get("mentions") or []:
            sent.append(f"@{m['name']} ({m['kind']}, {'whole' if m['whole'] else 'a sample'})")
        if extra.get("memories"):
            sent.append(f"{len(extra['memories'])} memories")
        if extra.get("citations"):
            sent.append(f"{len(extra['citations'])} passages")
        if sent:
            parts.append("context: " + ", ".join(sent))
        window = self._windows.get(model)
        if extra.get("prompt_tokens_estimate") and window:
            used = int(extra["prompt_tokens_estimate"])
            share = f"{used}/{window} tokens of the window ({100 * used // window}%"
            if context.get("context_tokens"):
                share += f", context {context['context_tokens']}"
            parts.append(share + ")")
        skipped = context.get("skipped") or []
        if skipped:
            parts.append(f"without {'; '.join(skipped)}")
        return " · ".join(parts)

    def _footer(
        self, text: str, citations: list[dict[str, Any]], memories: list[dict[str, Any]]
    ) -> list[Any]:
        footer: list[Any] = []
        cites = render_citations(citations, memories, self._base_path)
        if cites:
            footer.append(pn.pane.HTML(cites, stylesheets=[CSS]))
        codes = _CODE_BLOCK.findall(text)
        if not codes:  # a code-only reply ends at its closing fence (the stop sequence)
            cut = fenced_code(text)
            codes = [cut] if cut else []
        for code in codes:
            footer.append(self._code_actions(code))
        return footer

    def _code_actions(self, code: str) -> pn.viewable.Viewable:
        """Under each code block: Run (when the server executes code), Insert (into the bound
        notebook, below its active cell) and Replace (the selected cell's source), both
        through JupyterLab."""
        insert, replace, inserted = self._insert_buttons(code)
        if not self.can_execute:
            return pn.Column(pn.Row(insert, replace), inserted)
        run, ran = self._run_button(code)
        return pn.Column(pn.Row(run, insert, replace), ran, inserted)

    def _insert_buttons(self, code: str) -> tuple[Any, Any, Any]:
        output = pn.pane.HTML("", stylesheets=[CSS])
        insert = pn.widgets.Button(name="Insert below", width=104, css_classes=["chat-insert"])
        replace = pn.widgets.Button(
            name="Replace selected cell", width=164, css_classes=["chat-replace"]
        )

        async def send(mode: str) -> None:
            notebook = self.notebook
            if not notebook:
                note = "Bind this chat to a notebook to put code into it."
            else:
                body = {"notebook": notebook, "code": code, "mode": mode}
                try:
                    await self._client.request("POST", "api/v1/chat/cells", json=body)
                    if mode == "replace":
                        note = f"Replaced the selected cell of {notebook}"
                    else:
                        note = f"Inserted below the active cell of {notebook}"
                except (ChatAPIError, httpx.HTTPError) as e:
                    note = str(e)
            output.object = (
                f'<div class="och-where" data-testid="chat-insert-note">{_e(note)}</div>'
            )

        async def on_insert(event: Any) -> None:
            await send("below")

        async def on_replace(event: Any) -> None:
            await send("replace")

        insert.on_click(on_insert)
        replace.on_click(on_replace)
        return insert, replace, output

    def _run_button(self, code: str) -> tuple[Any, Any]:
        output = pn.pane.HTML("", stylesheets=[CSS])
        button = pn.widgets.Button(name="Run", width=64, css_classes=["chat-run"])

        async def run(event: Any) -> None:
            button.loading = True
            notebook = self.notebook  # the binding when Run is pressed
            body: dict[str, Any] = {"code": code, "language": "python", "timeout": 60}
            if notebook:
                body["session"] = notebook
            if self.conversation_id:  # the audit says which conversation the code came from
                body.update(origin="chat", conversation_id=self.conversation_id)
            where = f"Ran in {notebook}" if notebook else "Ran in the assistant's own kernel"
            try:
                result = await self._client.request("POST", "api/v1/execute", json=body)
                shown = result.get("output") or ""
                for bundle in result.get("results") or []:
                    shown += str(bundle.get("text/plain", "")) + "\n"
                if result.get("error"):
                    err = result["error"]
                    shown += f"{err.get('name')}: {err.get('value')}"
                where += f" (kernel {str(result.get('session') or '')[:8]})"
            except (ChatAPIError, httpx.HTTPError) as e:
                shown = str(e)
                where = f"Could not run in {notebook}" if notebook else "Could not run"
            finally:
                button.loading = False
            output.object = (
                f'<div class="och-where" data-testid="chat-run-where">{_e(where)}</div>'
                f'<pre class="och-out" data-testid="chat-run-output" '
                f'data-where="{_e(notebook or "assistant")}">{_e(shown)}</pre>'
            )

        button.on_click(run)
        return button, output

    def start(self) -> None:
        pn.state.onload(self.load)

    def __panel__(self) -> pn.viewable.Viewable:
        return self._layout


def _when(iso: Any) -> dict[str, Any]:
    """A stored message's time (UTC ISO 8601) as ChatMessage's ``timestamp`` in the browser's
    time zone, with the day when it was not today."""
    if not isinstance(iso, str):
        return {}
    try:
        when = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return {}
    zone: Any = None
    name = getattr(pn.state.browser_info, "timezone", None) if pn.state.browser_info else None
    if name:
        try:
            from zoneinfo import ZoneInfo

            zone = ZoneInfo(name)
        except (KeyError, ValueError):
            zone = None
    local = when.astimezone(zone)
    today = dt.datetime.now(local.tzinfo).date()
    fmt = "%H:%M" if local.date() == today else "%d %b %Y %H:%M"
    return {"timestamp": local.replace(tzinfo=None), "timestamp_format": fmt}


def create_app() -> ChatPanel:
    """The Chat page, talking to the server that started this process."""
    pn.extension(
        js_files={"oraculo_offline_icons": "data:text/javascript," + quote(_OFFLINE_ICONS_JS)}
    )
    if pn.state.curdoc is not None:
        pn.state.curdoc.template_variables["app_favicon"] = static_url("chat.svg")
    panel = ChatPanel(ChatClient.from_environment())
    panel.start()
    return panel
