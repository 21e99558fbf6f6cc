"""The Workspace panel: who is signed in, their kernels, their GPU, and whether models answer.

It is a client of the extension's public API like any other: it reads ``GET api/v1/status`` from
the Jupyter server that started it (see :func:`oraculo.extensions.panels.proxy.server_connection`)
and renders the answer, every few seconds and on demand.
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Any, cast

import httpx
import panel as pn
import param

from oraculo.extensions.panels.client import ServerClient

#: ``data-testid`` of the panel's root element; its ``data-state`` is ``loading``, ``ok`` or
#: ``error``. Browser tests wait on ``[data-testid=oraculo-workspace][data-state=ok]``.
TEST_ID = "oraculo-workspace"

CSS = """
:host { width: 100%; }
.ows { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2933;
       display: grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); gap: 16px; }
.ows-card { background: #fff; border: 1px solid #e4e7eb; border-radius: 10px; padding: 16px 18px;
            box-shadow: 0 1px 2px rgba(16, 24, 40, .04); }
.ows-card.wide { grid-column: 1 / -1; }
.ows-card h2 { font-size: 12px; font-weight: 600; letter-spacing: .06em; text-transform: uppercase;
               color: #616e7c; margin: 0 0 10px; }
.ows-big { font-size: 22px; font-weight: 600; margin: 0; }
.ows-sub { font-size: 13px; color: #616e7c; margin: 6px 0 0; }
.ows-badge { display: inline-flex; align-items: center; gap: 8px; font-size: 18px; font-weight: 600;
             margin: 0; }
.ows-dot { width: 10px; height: 10px; border-radius: 50%; background: #9aa5b1; flex: none; }
.ows-dot.ok { background: #2f9e44; } .ows-dot.bad { background: #e03131; }
.ows-dot.off { background: #9aa5b1; } .ows-dot.busy { background: #f08c00; }
.ows table { width: 100%; border-collapse: collapse; font-size: 14px; }
.ows th { text-align: left; font-weight: 600; color: #616e7c; font-size: 12px;
          border-bottom: 1px solid #e4e7eb; padding: 6px 8px; }
.ows td { padding: 8px; border-bottom: 1px solid #f0f2f4; }
.ows code { font-size: 12px; color: #616e7c; }
.ows-error { grid-column: 1 / -1; background: #fff5f5; border: 1px solid #ffc9c9; color: #c92a2a;
             border-radius: 10px; padding: 12px 16px; }
"""


class StatusClient(ServerClient):
    """Reads ``GET <server>/api/v1/status`` with the server's own credential."""

    path = "api/v1/status"
    timeout = 5.0

    async def fetch(self) -> dict[str, Any]:
        """The status document; raises :class:`httpx.HTTPError` when the server does not answer."""
        async with self.connect() as client:
            r = await client.get(self.base)
            r.raise_for_status()
            data: dict[str, Any] = r.json()
            return data


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _ago(iso: str | None, now: dt.datetime) -> str:
    if not iso:
        return "never"
    try:
        then = dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if then.tzinfo is None:
        then = then.replace(tzinfo=dt.UTC)
    seconds = max(0, int((now - then).total_seconds()))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return then.strftime("%Y-%m-%d %H:%M UTC")


def _kernels_card(kernels: list[dict[str, Any]], now: dt.datetime) -> str:
    if not kernels:
        body = '<p class="ows-sub" data-testid="workspace-kernels-none">No kernel is running.</p>'
    else:
        rows = "".join(
            "<tr>"
            f"<td>{_e(k.get('name', '?'))}</td>"
            f'<td><span class="ows-badge" style="font-size:14px">'
            f'<span class="ows-dot {_state_class(k.get("execution_state"))}"></span>'
            f"{_e(k.get('execution_state') or 'unknown')}</span></td>"
            f"<td>{_e(_ago(k.get('last_activity'), now))}</td>"
            f"<td>{_e(k.get('connections', 0))}</td>"
            f"<td>{_resources(k.get('resources'))}</td>"
            f"<td><code>{_e(str(k.get('id', ''))[:8])}</code></td>"
            "</tr>"
            for k in kernels
        )
        body = (
            "<table><thead><tr><th>Kernel</th><th>State</th><th>Last activity</th>"
            "<th>Connections</th><th>Use / limit</th><th>Id</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
    return (
        f'<section class="ows-card wide" data-testid="workspace-kernels">'
        f"<h2>Kernels ({len(kernels)})</h2>{body}</section>"
    )


def _mib(n: Any) -> str:
    return f"{int(n) / 1048576:,.0f} MiB"


def _meter(label: str, used: float, limit: float | None, text: str, testid: str) -> str:
    """One line of a kernel's resource use: a bar against its limit (none: no bar)."""
    bar = ""
    if limit:
        pct = max(0.0, min(100.0, 100.0 * used / limit))
        color = "#e03131" if pct >= 90 else "#f08c00" if pct >= 70 else "#2f9e44"
        bar = (
            '<span style="display:inline-block;width:80px;height:6px;background:#e4e7eb;'
            'border-radius:3px;margin-left:6px;vertical-align:middle">'
            f'<span style="display:block;width:{pct:.0f}%;height:6px;background:{color};'
            'border-radius:3px"></span></span>'
        )
    return (
        f'<div class="ows-sub" style="margin:2px 0" data-testid="{testid}">'
        f"{_e(label)}: {_e(text)}{bar}</div>"
    )


def _resources(res: dict[str, Any] | None) -> str:
    """Memory, CPU, processes and GPU of a sandbox kernel against its limits."""
    if not res:
        return '<span class="ows-sub">not sandboxed</span>'
    mem, mem_limit = res.get("memory_bytes") or 0, res.get("memory_limit_bytes")
    cpu, cpu_limit = res.get("cpu_seconds") or 0, res.get("cpu_limit_seconds")
    procs, procs_limit = res.get("processes") or 0, res.get("processes_limit")
    gpu_mib = res.get("gpu_memory_mib") or 0
    return "".join(
        [
            _meter(
                "Memory",
                mem,
                mem_limit,
                f"{_mib(mem)} / {_mib(mem_limit) + ' per process' if mem_limit else 'no limit'}",
                "kernel-memory",
            ),
            _meter(
                "CPU",
                cpu,
                cpu_limit,
                f"{cpu:.1f} s / {f'{cpu_limit} s' if cpu_limit else 'no limit'}",
                "kernel-cpu",
            ),
            _meter(
                "Processes",
                procs,
                procs_limit,
                f"{procs} / {procs_limit or 'no limit'}",
                "kernel-processes",
            ),
            _meter("GPU", gpu_mib, None, f"{gpu_mib} MiB", "kernel-gpu"),
        ]
    )


def _state_class(state: str | None) -> str:
    return {"idle": "ok", "busy": "busy", "starting": "busy", "dead": "bad"}.get(state or "", "off")


def _gpu_card(gpu: dict[str, Any]) -> str:
    devices = gpu.get("devices") or []
    if not devices:
        text, sub = "none — CPU", "No GPU is assigned to this server; code runs on the CPU."
    else:
        text = "; ".join(f"GPU {d.get('index')}: {d.get('name')}" for d in devices)
        sub = "; ".join(
            f"{d.get('memory_used_mib')} / {d.get('memory_total_mib')} MiB used, "
            f"{d.get('utilization_percent')} % busy"
            for d in devices
        )
    return (
        '<section class="ows-card" data-testid="workspace-gpu"><h2>GPU</h2>'
        f'<p class="ows-big">{_e(text)}</p><p class="ows-sub">{_e(sub)}</p></section>'
    )


def _models_card(service: dict[str, Any]) -> str:
    if not service.get("configured"):
        dot, text = "off", "not configured"
    elif service.get("ok"):
        dot, text = "ok", "answering"
    else:
        dot, text = "bad", "not answering"
    sub = str(service.get("detail") or "")
    if service.get("latency_ms") is not None:
        sub += f" · {service['latency_ms']} ms"
    return (
        '<section class="ows-card" data-testid="workspace-model-service"><h2>Model service</h2>'
        f'<p class="ows-badge"><span class="ows-dot {dot}"></span>{_e(text)}</p>'
        f'<p class="ows-sub">{_e(sub)}</p></section>'
    )


def render_status(
    status: dict[str, Any] | None, error: str = "", now: dt.datetime | None = None
) -> str:
    """The panel's body as HTML (every value escaped): four cards, or why there are none."""
    now = now or dt.datetime.now(dt.UTC)
    state = "error" if error else ("ok" if status else "loading")
    parts = []
    if error:
        parts.append(f'<div class="ows-error" data-testid="workspace-error">{_e(error)}</div>')
    if status:
        # The server's owner; a plain ``jupyter server`` may not know it, the caller then.
        user = status.get("user") or status.get("caller") or "unknown"
        parts.append(
            '<section class="ows-card" data-testid="workspace-user"><h2>Signed in</h2>'
            f'<p class="ows-big" data-testid="workspace-user-name">{_e(user)}</p>'
            f'<p class="ows-sub">Oráculo {_e(status.get("version", ""))}</p></section>'
        )
        parts.append(_gpu_card(status.get("gpu") or {}))
        parts.append(_models_card(status.get("model_service") or {}))
        parts.append(_kernels_card(status.get("kernels") or [], now))
    elif not error:
        parts.append('<p class="ows-sub">Loading…</p>')
    return f'<div class="ows" data-testid="{TEST_ID}" data-state="{state}">{"".join(parts)}</div>'


class WorkspacePanel(pn.viewable.Viewer):
    """Shows the state of the user's workspace and refreshes it periodically."""

    period = param.Integer(
        default=5000,
        bounds=(500, None),
        doc="""
        Milliseconds between two refreshes while the page is open.""",
    )

    status = param.Dict(
        default=None,
        allow_None=True,
        doc="""
        The last status document read from the server, or None before the first answer.""",
    )

    error = param.String(
        default="",
        doc="""
        Why the last refresh failed; empty when it succeeded.""",
    )

    updated = param.String(
        default="",
        doc="""
        When the status was last read (UTC, HH:MM:SS).""",
    )

    def __init__(self, client: StatusClient, **params: Any) -> None:
        super().__init__(**params)
        self._client = client
        self._body = pn.pane.HTML(
            render_status(None), stylesheets=[CSS], sizing_mode="stretch_width"
        )
        self._refresh_button = pn.widgets.Button(
            name="Refresh", button_type="primary", width=110, css_classes=["oraculo-refresh"]
        )
        self._refresh_button.on_click(self._on_click)
        self._updated = pn.pane.HTML(
            "", styles={"color": "#616e7c", "font": "13px system-ui, sans-serif"}
        )
        self._layout = pn.Column(
            pn.Row(
                pn.pane.HTML(
                    '<h1 style="margin:0;font:600 24px system-ui,sans-serif;color:#1f2933">'
                    "Workspace</h1>"
                ),
                pn.HSpacer(),
                self._updated,
                self._refresh_button,
                align="center",
                sizing_mode="stretch_width",
            ),
            self._body,
            sizing_mode="stretch_width",
            styles={"max-width": "1100px", "margin": "0 auto", "padding": "24px"},
        )

    async def refresh(self) -> None:
        """Read the status once and show it (or why it could not be read)."""
        try:
            status = await self._client.fetch()
        except httpx.HTTPStatusError as e:
            self.error = f"The status API answered HTTP {e.response.status_code}."
        except httpx.HTTPError as e:
            self.error = f"The status API did not answer ({type(e).__name__})."
        except ValueError:
            self.error = "The status API did not answer with JSON."
        else:
            self.status, self.error = status, ""
        self.updated = dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
        self._body.object = render_status(self.status, self.error)
        self._updated.object = f"Updated {self.updated} UTC"

    async def _on_click(self, event: Any) -> None:
        await self.refresh()

    def start(self) -> None:
        """Refresh now and then every :attr:`period` ms, for as long as the page is open."""
        pn.state.onload(self.refresh)
        # Panel runs coroutine functions as callbacks too; its annotation says otherwise.
        pn.state.add_periodic_callback(cast(Any, self.refresh), period=self.period)

    def __panel__(self) -> pn.viewable.Viewable:
        return self._layout


def static_url(name: str) -> str:
    """The URL of a file in ``panels/static``, relative to the page being served."""
    return f"{pn.state.rel_path or '.'}/oraculo/{name}"


def create_app() -> WorkspacePanel:
    """The Workspace page, reading the status of the server that started this process."""
    # Bokeh serves its favicon.ico at the root, outside our prefix; point the page at ours.
    if pn.state.curdoc is not None:
        pn.state.curdoc.template_variables["app_favicon"] = static_url("workspace.svg")
    panel = WorkspacePanel(StatusClient.from_environment())
    panel.start()
    return panel
