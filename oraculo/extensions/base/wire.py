"""What travels between Oráculo's processes, parsed in one place: server-sent events and error
envelopes.

Every client of a streaming API here (the extension reading the model service, the panels and
the kernel's ``%%chat`` reading the user's server) reads SSE with :func:`iter_events` or
:func:`aiter_events`, and every client turns an error answer into a message and a stable type with
:func:`read_error`. Both envelopes are understood: ours (``{"message", "reason", "type"}``) and
OpenAI's (``{"error": {"message", "type", "param", "code", ...}}``), whose extra fields (the
model service's ``context_length`` and ``tokens``, say) are kept as :attr:`WireError.details`, so
no client parses a message's English.

No imports beyond the standard library: the kernel and the panel server import this module too.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: ``data:`` payload that ends an OpenAI-style stream.
DONE = "[DONE]"


@dataclass(frozen=True)
class Event:
    """One server-sent event: its ``event:`` name ("" when unnamed), ``id:`` and JSON data."""

    name: str
    data: Any
    id: str = ""

    @property
    def is_error(self) -> bool:
        """An in-band error: an ``error`` event, or data carrying an ``error`` object."""
        return self.name == "error" or (isinstance(self.data, dict) and "error" in self.data)


class _Decoder:
    """Lines in, events out (fields per the SSE spec; a blank line dispatches)."""

    def __init__(self) -> None:
        self.name = ""
        self.id = ""
        self.data: list[str] = []
        self.done = False

    def feed(self, line: str) -> Event | None:
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key == "event":
            self.name = value
        elif key == "data":
            self.data.append(value)
        elif key == "id":
            self.id = value
        return None

    def _dispatch(self) -> Event | None:
        if not self.data:
            self.name = ""
            return None
        raw = "\n".join(self.data)
        name, id_ = self.name, self.id
        self.name, self.data = "", []
        if raw.strip() == DONE:
            self.done = True
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            data = raw
        return Event(name=name, data=data, id=id_)

    def close(self) -> Event | None:
        """A stream that ends without its last blank line still delivers its last event."""
        return None if self.done else self._dispatch()


def iter_events(lines: Iterable[str]) -> Iterator[Event]:
    """The events of a stream of lines, up to ``data: [DONE]`` or the end."""
    decoder = _Decoder()
    for line in lines:
        event = decoder.feed(line)
        if event is not None:
            yield event
        if decoder.done:
            return
    last = decoder.close()
    if last is not None:
        yield last


async def aiter_events(lines: AsyncIterable[str]) -> AsyncIterator[Event]:
    """:func:`iter_events` for an asynchronous stream of lines."""
    decoder = _Decoder()
    async for line in lines:
        event = decoder.feed(line)
        if event is not None:
            yield event
        if decoder.done:
            return
    last = decoder.close()
    if last is not None:
        yield last


@dataclass
class WireError:
    """An error answer, whichever envelope it came in."""

    status: int
    message: str
    #: Stable kind: the OpenAI ``code`` where there is one, else the ``type``.
    type: str = "error"
    param: str | None = None
    #: Further structured fields of the envelope (``context_length``, ``tokens``, ``index`` …).
    details: dict[str, Any] = field(default_factory=dict)
    retry_after: int | None = None


_KNOWN = {"message", "type", "code", "param", "reason"}


def read_error(
    status: int, content: bytes | str | dict[str, Any] | None, headers: Any = None
) -> WireError:
    """The error in an answer's body (either envelope); a body that is neither says its status."""
    body: Any = content
    if isinstance(content, (bytes, str)):
        try:
            body = json.loads(content)
        except ValueError:
            body = None
    retry = (headers or {}).get("Retry-After", "") if headers is not None else ""
    retry_after = int(retry) if str(retry).isdigit() else None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
    elif isinstance(body, dict) and "message" in body:
        err = body
    else:
        return WireError(status, f"HTTP {status}", retry_after=retry_after)
    kind = err.get("code") or err.get("type") or "error"
    return WireError(
        status=status,
        message=str(err.get("message") or f"HTTP {status}"),
        type=str(kind),
        param=err.get("param"),
        details={k: v for k, v in err.items() if k not in _KNOWN},
        retry_after=retry_after,
    )
