"""The user's most expensive executions this period, from the execution audit log.

Each execution on the user's behalf (through the API, chat, agents, MCP) is audited twice: when
it starts (its code, origin, kernel, the conversation or run it came from) and when it ends (its
status, wall time and CPU seconds: the kernel process tree's CPU time after it less before it,
``cpu_source`` ``kernel``; or its wall time, ``cpu_source`` ``wall``, where the server could not
read the kernel's process). This pairs the two and ranks the period's executions by CPU seconds.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

#: Audit records read to find the period's executions (two per execution; newest first kept).
MAX_RECORDS = 20_000


def period_start(period: str, now: dt.datetime) -> dt.datetime:
    """When the UTC day, ISO week (Monday) or month containing ``now`` began (as the model
    service's usage periods)."""
    d = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "week":
        d -= dt.timedelta(days=d.weekday())
    elif period == "month":
        d = d.replace(day=1)
    return d


def _time(value: Any) -> dt.datetime | None:
    try:
        t = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def first_line(code: str, limit: int = 120) -> str:
    """The code's first line that is not blank, cut to ``limit`` characters."""
    for line in code.splitlines():
        if line.strip():
            line = line.rstrip()
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""


def top_executions(
    records: list[dict[str, Any]], since: dt.datetime, limit: int = 10
) -> list[dict[str, Any]]:
    """The executions that finished at or after ``since``, most CPU seconds first."""
    started: dict[str, dict[str, Any]] = {}
    out = []
    for rec in records:
        eid = rec.get("execution_id")
        if not eid:
            continue
        if rec.get("event") == "started":
            started[eid] = rec
            continue
        if rec.get("event") != "finished":
            continue
        finished = _time(rec.get("time"))
        if finished is None or finished < since:
            continue
        start = started.get(eid, {})
        duration = float(rec.get("duration_seconds") or 0.0)
        cpu = rec.get("cpu_seconds")
        out.append(
            {
                "execution_id": eid,
                "origin": rec.get("origin") or start.get("origin") or "",
                "actor": rec.get("actor") or "",
                "started_at": start.get("time"),
                "finished_at": rec.get("time"),
                "status": rec.get("status"),
                "duration_seconds": duration,
                # records from before CPU was measured: their wall time, said so
                "cpu_seconds": float(cpu) if cpu is not None else duration,
                "cpu_source": rec.get("cpu_source") or "wall",
                "code_first_line": first_line(str(start.get("code") or "")),
                "session": rec.get("session") or start.get("session"),
                "conversation_id": rec.get("conversation_id") or start.get("conversation_id"),
                "run_id": rec.get("run_id") or start.get("run_id"),
            }
        )
    out.sort(key=lambda e: (e["cpu_seconds"], e["duration_seconds"]), reverse=True)
    return out[:limit]
