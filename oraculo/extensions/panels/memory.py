"""The Memory panel: the user's memories as a table (add, edit, delete, search) and the state of
the workspace index (with a Reindex button).

Like the Workspace panel it is a client of the server's public API (``api/v1/memory`` and
``api/v1/memory/index``), reached with ``ORACULO_SERVER_URL``/``_TOKEN``/``_SOCKET`` (see
:func:`oraculo.extensions.panels.proxy.server_connection`).

Test hooks: ``data-testid`` ``oraculo-memory`` (root; ``data-state`` loading, ok or error),
``memory-message`` (the last action's result; ``data-state`` ok or error), ``memory-count``,
``memory-index-status`` (``data-state`` = the indexer's state); widgets carry CSS classes
``oraculo-memory-{table,key,value,scope,save,delete,new,search,search-button,clear,reindex}``.
Delete asks first: the button reads "Really delete?" until a second click deletes (picking
another memory, editing the form or any other button takes the question back).
"""

from __future__ import annotations

import builtins
import datetime as dt
import html
from typing import Any, cast

import pandas as pd
import panel as pn
import param

from oraculo.extensions.panels.client import ServerAPIError, ServerClient

TEST_ID = "oraculo-memory"
COLUMNS = ["key", "value", "scope", "updated_at"]

CSS = """
.om { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2933; }
.om-card { background: #fff; border: 1px solid #e4e7eb; border-radius: 10px; padding: 12px 16px; }
.om h2 { font-size: 12px; font-weight: 600; letter-spacing: .06em; text-transform: uppercase;
         color: #616e7c; margin: 0 0 8px; }
.om-sub { font-size: 13px; color: #616e7c; margin: 4px 0 0; }
.om-msg { font-size: 13px; padding: 6px 10px; border-radius: 8px; margin: 0; }
.om-msg[data-state=ok] { color: #2b8a3e; background: #ebfbee; }
.om-msg[data-state=error] { color: #c92a2a; background: #fff5f5; }
.om-msg:empty { display: none; }
.om-errors { font-size: 12px; color: #c92a2a; margin: 6px 0 0; padding-left: 18px; }
"""


class MemoryAPIError(ServerAPIError):
    """The server answered with an error; ``message`` is its envelope's message."""


class MemoryClient(ServerClient):
    """Calls ``api/v1/memory`` and ``api/v1/memory/index`` with the server's own credential."""

    path = "api/v1/memory"
    error = MemoryAPIError

    async def list(self, limit: int = 500) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", params={"limit": limit})
        return result

    async def search(self, q: str, k: int = 20) -> builtins.list[dict[str, Any]]:
        return list((await self.request("GET", params={"q": q, "k": k}))["hits"])

    async def save(self, key: str, value: str, scope: str | None) -> dict[str, Any]:
        body = {"key": key, "value": value, **({"scope": scope} if scope else {})}
        result: dict[str, Any] = await self.request("POST", json=body)
        return result

    async def delete(self, key: str) -> None:
        await self.request("DELETE", params={"key": key})

    async def index_status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/index")
        return result

    async def reindex(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", "/index")
        return result


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render_index_status(status: dict[str, Any] | None, error: str = "") -> str:
    """The index card as HTML (every value escaped)."""
    if error:
        return (
            '<div class="om om-card" data-testid="memory-index-status" data-state="error">'
            f'<h2>Workspace index</h2><p class="om-msg" data-state="error">{_e(error)}</p></div>'
        )
    if status is None:
        return (
            '<div class="om om-card" data-testid="memory-index-status" data-state="loading">'
            '<h2>Workspace index</h2><p class="om-sub">Loading…</p></div>'
        )
    run = status.get("last_run") or {}
    when = run.get("finished", "")[:19].replace("T", " ") + " UTC" if run else "never"
    summary = (
        f"{status.get('files', 0)} files · {status.get('chunks', 0)} passages · "
        f"state: {status.get('state', '?')} · last run: {when}"
    )
    if run:
        summary += (
            f" ({run.get('indexed', 0)} indexed, {run.get('unchanged', 0)} unchanged, "
            f"{run.get('removed', 0)} removed, {run.get('seconds', 0)} s)"
        )
    errors = status.get("errors") or []
    items = "".join(
        f"<li>{_e(e.get('path') or 'indexer')}: {_e(e.get('error'))}</li>" for e in errors[:10]
    )
    return (
        f'<div class="om om-card" data-testid="memory-index-status" '
        f'data-state="{_e(status.get("state", "never"))}"><h2>Workspace index</h2>'
        f'<p class="om-sub">{_e(summary)}</p>'
        + (f'<ul class="om-errors">{items}</ul>' if items else "")
        + "</div>"
    )


class MemoryPanel(pn.viewable.Viewer):
    """Lists, edits and searches the user's memories; shows and triggers workspace indexing."""

    period = param.Integer(
        default=3000, bounds=(500, None), doc="Milliseconds between index-status refreshes."
    )
    state: Any = param.Selector(
        default="loading",
        objects=["loading", "ok", "error"],
        doc="Whether the last load of the memories worked.",
    )
    message = param.String(default="", doc="What the last action did, or why it failed.")
    searching = param.String(default="", doc="The query whose results the table shows, if any.")

    def __init__(self, client: MemoryClient, **params: Any) -> None:
        super().__init__(**params)
        self._client = client
        self._ok = True
        self.table = pn.widgets.Tabulator(
            pd.DataFrame(columns=COLUMNS),
            disabled=True,
            selectable=1,
            show_index=False,
            pagination="local",
            page_size=15,
            layout="fit_columns",
            widths={"key": 200, "scope": 90, "updated_at": 140, "score": 80},
            sizing_mode="stretch_width",
            css_classes=["oraculo-memory-table"],
        )
        self.table.param.watch(self._on_select, "selection")
        self.key = pn.widgets.TextInput(
            name="Key", placeholder="e.g. favourite chart style", css_classes=["oraculo-memory-key"]
        )
        self.value = pn.widgets.TextAreaInput(
            name="Value", height=90, css_classes=["oraculo-memory-value"]
        )
        self.scope = pn.widgets.TextInput(
            name="Scope (optional)", placeholder="e.g. prefs", css_classes=["oraculo-memory-scope"]
        )
        self.save = pn.widgets.Button(
            name="Save", button_type="primary", css_classes=["oraculo-memory-save"]
        )
        self.delete = pn.widgets.Button(
            name="Delete",
            button_type="danger",
            button_style="outline",
            css_classes=["oraculo-memory-delete"],
        )
        self._confirming: str | None = None  # the key the Delete button asks about
        self.new = pn.widgets.Button(name="New", css_classes=["oraculo-memory-new"])
        self.query = pn.widgets.TextInput(
            placeholder="Search memories…", css_classes=["oraculo-memory-search"]
        )
        self.search_button = pn.widgets.Button(
            name="Search", css_classes=["oraculo-memory-search-button"]
        )
        self.clear = pn.widgets.Button(name="Show all", css_classes=["oraculo-memory-clear"])
        self.reindex = pn.widgets.Button(
            name="Reindex", button_type="primary", css_classes=["oraculo-memory-reindex"]
        )
        for button, handler in [
            (self.save, self._on_save),
            (self.delete, self._on_delete),
            (self.new, self._on_new),
            (self.search_button, self._on_search),
            (self.clear, self._on_clear),
            (self.reindex, self._on_reindex),
        ]:
            button.on_click(handler)
        self.query.param.watch(self._on_enter, "enter_pressed")
        for widget in (self.key, self.value, self.scope):  # editing: no longer that memory
            widget.param.watch(self._cancel_delete, "value_input")
        for button in (self.save, self.new, self.search_button, self.clear, self.reindex):
            button.on_click(self._cancel_delete)
        self._root = pn.pane.HTML(self._root_html(), stylesheets=[CSS])
        self._message = pn.pane.HTML(self._message_html(), stylesheets=[CSS])
        self._index = pn.pane.HTML(render_index_status(None), stylesheets=[CSS])
        self._layout = pn.Column(
            pn.Row(
                pn.pane.HTML(
                    '<h1 style="margin:0;font:600 24px system-ui,sans-serif;color:#1f2933">'
                    "Memory</h1>"
                ),
                pn.HSpacer(),
                self._root,
                align="center",
                sizing_mode="stretch_width",
            ),
            self._message,
            pn.Row(self.query, self.search_button, self.clear, sizing_mode="stretch_width"),
            self.table,
            pn.Row(
                pn.Column(self.key, self.scope, sizing_mode="stretch_width"),
                pn.Column(self.value, sizing_mode="stretch_width"),
                sizing_mode="stretch_width",
            ),
            pn.Row(self.save, self.new, self.delete),
            pn.Row(self._index, self.reindex, sizing_mode="stretch_width", align="center"),
            sizing_mode="stretch_width",
            styles={"max-width": "1100px", "margin": "0 auto", "padding": "24px"},
        )

    # --- rendering ---------------------------------------------------------------------------

    def _root_html(self, total: int | None = None) -> str:
        count = "" if total is None else f"{total} {'memory' if total == 1 else 'memories'}"
        return (
            f'<div class="om" data-testid="{TEST_ID}" data-state="{self.state}">'
            f'<span class="om-sub" data-testid="memory-count">{_e(count)}</span></div>'
        )

    def _message_html(self) -> str:
        state = "ok" if self._ok else "error"
        return (
            f'<p class="om om-msg" data-testid="memory-message" data-state="{state}">'
            f"{_e(self.message)}</p>"
        )

    def _say(self, message: str, ok: bool = True) -> None:
        self.message, self._ok = message, ok
        self._message.object = self._message_html()

    # --- actions -----------------------------------------------------------------------------

    async def load(self) -> None:
        """Show every memory (up to 500), newest first."""
        try:
            page = await self._client.list()
        except MemoryAPIError as e:
            self.state = "error"
            self._root.object = self._root_html()
            self._say(str(e), ok=False)
            return
        self.searching = ""
        self.table.selection = []
        self.table.value = _frame(page["items"])
        self.state = "ok"
        self._root.object = self._root_html(page["total"])

    async def refresh_index(self) -> None:
        try:
            self._index.object = render_index_status(await self._client.index_status())
        except MemoryAPIError as e:
            self._index.object = render_index_status(None, str(e))

    async def _on_save(self, event: Any) -> None:
        key, value = _text(self.key), _text(self.value)
        try:
            saved = await self._client.save(key, value, _text(self.scope).strip() or None)
        except MemoryAPIError as e:
            self._say(f"Not saved: {e}", ok=False)
            return
        self._say(f"Saved “{saved['key']}”.")
        await self._reshow()

    def _cancel_delete(self, *_: Any) -> None:
        """Back to a plain Delete: another memory was picked, or something else was done."""
        if self._confirming is None:
            return
        self._confirming = None
        self.delete.name = "Delete"
        self.delete.button_style = "outline"

    async def _on_delete(self, event: Any) -> None:
        """The first click asks (the button reads "Really delete?"); the second deletes that
        memory, then empties the form."""
        key = _text(self.key)
        if not key:
            self._say("Select a memory (or type its key) to delete it.", ok=False)
            return
        if self._confirming != key:
            self._confirming = key
            self.delete.name = "Really delete?"
            self.delete.button_style = "solid"
            self._say(f"Delete “{key}”? Click “Really delete?” to confirm.", ok=False)
            return
        self._cancel_delete()
        try:
            await self._client.delete(key)
        except MemoryAPIError as e:
            self._say(f"Not deleted: {e}", ok=False)
            return
        self._say(f"Deleted “{key}”.")
        self._clear_form()
        await self._reshow()

    async def _on_new(self, event: Any) -> None:
        self._clear_form()
        self.table.selection = []

    async def _on_search(self, event: Any, say: bool = True) -> None:
        q = _text(self.query).strip()
        if not q:
            await self.load()
            return
        try:
            hits = await self._client.search(q)
        except MemoryAPIError as e:
            self._say(f"Search failed: {e}", ok=False)
            return
        self.searching = q
        self.table.selection = []
        self.table.value = _frame(hits, score=True)
        if say:
            self._say(f"Best matches for “{q}” ({len(hits)}), most relevant first.")

    async def _on_enter(self, event: Any) -> None:
        await self._on_search(event)

    async def _on_clear(self, event: Any) -> None:
        _set(self.query, "")
        self._say("")
        await self.load()

    async def _on_reindex(self, event: Any) -> None:
        try:
            self._index.object = render_index_status(await self._client.reindex())
        except MemoryAPIError as e:
            self._index.object = render_index_status(None, str(e))

    def _on_select(self, event: Any) -> None:
        if not event.new:
            return
        self._cancel_delete()
        row = self.table.value.iloc[event.new[0]]
        _set(self.key, str(row["key"]))
        _set(self.value, str(row["value"]))
        scope = row.get("scope")
        _set(self.scope, "" if scope is None or pd.isna(scope) else str(scope))

    def _clear_form(self) -> None:
        for widget in (self.key, self.value, self.scope):
            _set(widget, "")

    async def _reshow(self) -> None:
        """The table again, after a save or delete, keeping what that said ("Saved …",
        "Deleted …"): a search in progress is re-run without replacing the message."""
        if self.searching:
            _set(self.query, self.searching)
            await self._on_search(None, say=False)
        else:
            await self.load()

    def start(self) -> None:
        """Load now; refresh the index status every :attr:`period` ms while the page is open."""
        pn.state.onload(self.load)
        pn.state.onload(self.refresh_index)
        pn.state.add_periodic_callback(cast(Any, self.refresh_index), period=self.period)

    def __panel__(self) -> pn.viewable.Viewable:
        return self._layout


def _text(widget: Any) -> str:
    """What the input holds now: ``value_input`` follows every keystroke, while ``value`` only
    changes on blur or Enter, which a click on Save can overtake."""
    live = widget.value_input
    return str(live if live is not None else widget.value or "")


def _set(widget: Any, text: str) -> None:
    widget.value = text
    widget.value_input = text


def _frame(items: list[dict[str, Any]], score: bool = False) -> pd.DataFrame:
    columns = [*COLUMNS, "score"] if score else COLUMNS
    rows = []
    for m in items:
        row = {c: m.get(c) for c in columns}
        updated = m.get("updated_at")
        if updated:
            row["updated_at"] = dt.datetime.fromisoformat(updated).strftime("%Y-%m-%d %H:%M")
        if score:
            row["score"] = round(float(m.get("score", 0.0)), 4)
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def create_app() -> MemoryPanel:
    """The Memory page, talking to the server that started this process."""
    if pn.state.curdoc is not None:
        rel = pn.state.rel_path or "."
        pn.state.curdoc.template_variables["app_favicon"] = f"{rel}/oraculo/workspace.svg"
    panel = MemoryPanel(MemoryClient.from_environment())
    panel.start()
    return panel
