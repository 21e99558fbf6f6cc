"""Tool calls streamed as the model writes them, in OpenAI's shape.

A local model writes a call as ``<tool_call>{"name": "f", "arguments": {...}}</tool_call>``
(:mod:`.constrained`). :class:`ToolCallStream` follows the generated text and turns it into the
``choices[0].delta.tool_calls`` entries OpenAI streams: once a call's name is written, an entry
with its ``index``, ``id``, ``type`` and ``function.name`` (``arguments`` ""); then fragments of
``function.arguments`` as the model writes them. The fragments are canonical JSON (what
``json.dumps(json.loads(raw), ensure_ascii=False)`` gives: no whitespace but ``", "`` and ``": "``,
escapes and numbers as Python writes them), so joined they are exactly the ``arguments`` the
non-streamed answer has for the same text.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from .constrained import TOOL_CLOSE, TOOL_OPEN

_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
_ARGS_BEGUN = re.compile(r'"arguments"\s*:\s*\S')
_CLOSE = re.compile(r"\s*\}\s*" + re.escape(TOOL_CLOSE))
_NUMBER_CHARS = set("-+0123456789.eE")
_LITERALS = ("true", "false", "null")
#: A header longer than this without matching is not one this stream can follow: the call is
#: left to the whole message at the end.
_MAX_HEADER = 256


class _Canonical:
    """Re-writes one JSON value, fed a piece at a time, as ``json.dumps`` writes it."""

    def __init__(self) -> None:
        self.depth = 0
        self.started = False
        self.done = False
        self.raw: list[str] = []
        self._string = False
        self._escape = ""  # an escape being read: "\\", "\\u12"...
        self._high = ""  # a high surrogate waiting for its low half
        self._token = ""  # a number or literal being read

    def feed(self, ch: str) -> tuple[str, bool]:
        """The canonical text for ``ch``, and whether ``ch`` belonged to the value."""
        if self.done:
            return "", False
        self.raw.append(ch)
        if self._string:
            return self._in_string(ch), True
        out = ""
        if self._token:
            if ch in _NUMBER_CHARS or ch.isalpha():
                self._token += ch
                return "", True
            out = self._flush_token()
        if ch.isspace():
            return out, True
        if ch == '"':
            self._string = True
            self.started = True
            return out + '"', True
        if ch in "{[":
            self.depth += 1
            self.started = True
            return out + ch, True
        if ch in "}]":
            self.depth -= 1
            if self.depth <= 0:
                self.done = True
            return out + ch, True
        if ch == ",":
            return out + ", ", True
        if ch == ":":
            return out + ": ", True
        self._token = ch
        self.started = True
        return out, True

    def _flush_token(self) -> str:
        token, self._token = self._token, ""
        if self.depth == 0:
            self.done = True
        if token in _LITERALS:
            return token
        try:
            return json.dumps(json.loads(token))
        except ValueError:
            return token

    def _in_string(self, ch: str) -> str:
        if self._escape:
            self._escape += ch
            if self._escape[1] == "u" and len(self._escape) < 6:
                return ""
            seq, self._escape = self._escape, ""
            try:
                char = json.loads(f'"{seq}"')
            except ValueError:
                return seq
            if "\ud800" <= char <= "\udbff":
                self._high = char
                return ""
            if self._high:
                high, self._high = self._high, ""
                if "\udc00" <= char <= "\udfff":
                    char = (high + char).encode("utf-16", "surrogatepass").decode("utf-16")
                else:
                    return _encode(high) + _encode(char)
            return _encode(char)
        if ch == "\\":
            self._escape = ch
            return ""
        pending, self._high = self._high, ""
        if ch == '"':
            self._string = False
            return _encode(pending) + '"' if pending else '"'
        return (_encode(pending) if pending else "") + _encode(ch)


def _encode(char: str) -> str:
    """``char`` inside a JSON string as ``json.dumps(..., ensure_ascii=False)`` writes it."""
    return json.dumps(char, ensure_ascii=False)[1:-1]


class ToolCallStream:
    """Follows a reply's text; :meth:`feed` returns the ``tool_calls`` delta entries it adds."""

    def __init__(self) -> None:
        self._buf = ""  # text not yet consumed
        self._state = "outside"  # outside, header, arguments, close, skip
        self._args: _Canonical | None = None
        self.calls: list[dict[str, Any]] = []  # {id, name, arguments (canonical so far), done}

    def feed(self, text: str) -> list[dict[str, Any]]:
        self._buf += text
        out: list[dict[str, Any]] = []
        while self._step(out):
            pass
        return _merge(out)

    def _step(self, out: list[dict[str, Any]]) -> bool:
        """Consume what can be consumed of the buffer; True when another step may do more."""
        if self._state == "outside":
            at = self._buf.find(TOOL_OPEN)
            if at < 0:
                keep = _partial_suffix(self._buf, TOOL_OPEN)
                self._buf = self._buf[len(self._buf) - keep :] if keep else ""
                return False
            self._buf = self._buf[at + len(TOOL_OPEN) :]
            self._state = "header"
            return True
        if self._state == "header":
            m = _HEADER.match(self._buf)
            if m is None:
                if len(self._buf) > _MAX_HEADER or _ARGS_BEGUN.search(self._buf):
                    self._state = "skip"
                    return True
                return False
            try:
                name = json.loads(f'"{m.group(1)}"')
            except ValueError:
                self._state = "skip"
                return True
            self._buf = self._buf[m.end() :]
            call = {"id": f"call_{uuid.uuid4().hex[:24]}", "name": name, "arguments": ""}
            call["done"] = False
            self.calls.append(call)
            index = len(self.calls) - 1
            out.append(
                {
                    "index": index,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }
            )
            self._args = _Canonical()
            self._state = "arguments"
            return True
        if self._state == "arguments":
            assert self._args is not None
            call = self.calls[-1]
            piece = []
            used = 0
            for ch in self._buf:
                text, belongs = self._args.feed(ch)
                if not belongs:
                    break
                used += 1
                piece.append(text)
                if self._args.done:
                    break
            self._buf = self._buf[used:]
            fragment = "".join(piece)
            if fragment:
                call["arguments"] += fragment
                out.append({"index": len(self.calls) - 1, "function": {"arguments": fragment}})
            if self._args.done:
                self._state = "close"
                return True
            return False
        if self._state == "close":
            m = _CLOSE.match(self._buf)
            if m is not None:
                self._buf = self._buf[m.end() :]
                self.calls[-1]["done"] = True
                self._state = "outside"
                return True
            if len(self._buf) > 64:
                self._state = "skip"
                return True
            return False
        # skip: a block this stream does not follow; the whole message covers it at the end
        at = self._buf.find(TOOL_CLOSE)
        if at < 0:
            return False
        self._buf = self._buf[at + len(TOOL_CLOSE) :]
        self._state = "outside"
        return True

    def streamed(self) -> list[dict[str, Any]]:
        """The calls written whole, as OpenAI's ``tool_calls`` entries (what was streamed)."""
        return [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": c["arguments"]},
            }
            for c in self.calls
            if c["done"]
        ]


def _partial_suffix(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` could begin ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def _merge(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Join argument fragments of one call that follow each other in one feed."""
    merged: list[dict[str, Any]] = []
    for e in entries:
        last = merged[-1] if merged else None
        if (
            last is not None
            and last["index"] == e["index"]
            and set(e) == {"index", "function"}
            and set(e["function"]) == {"arguments"}
        ):
            last["function"] = {**last["function"]}
            last["function"]["arguments"] += e["function"]["arguments"]
        else:
            merged.append(e)
    return merged
