"""``@file`` and ``@variable`` mentions: context the user chooses by name.

A chat request that asks for it (``context.mentions``; the Chat panel does) has the ``@name``s
of its question looked up: a variable of the bound notebook's live kernel (a dataframe as its
shape and first rows, anything else as its ``repr``), else a file under the server's root (a
text file whole, or its first lines when it is long; a notebook as its cells' sources). What
cannot be found is said in the context's ``skipped`` list, never an error: an ``@`` in a
question may be a decorator. Files are read through the server's contents manager, so hidden
files and paths outside the root stay out as they do in JupyterLab.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import textwrap
from dataclasses import dataclass
from typing import Any

from oraculo.kernels.chat_inputs import describe_mention, describe_value

#: ``@name`` not preceded by a word character (so ``me@example.org`` is not a mention).
_MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9_][\w./-]*)")
_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*$")
#: Most mentions looked up per request.
MAX_MENTIONS = 8


@dataclass
class Mention:
    """What one ``@name`` resolved to: its text and whether that is all of it."""

    name: str
    kind: str  # "variable" or "file"
    text: str
    whole: bool

    def info(self, sent_whole: bool, tokens: int) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "whole": sent_whole, "tokens": tokens}


def find_mentions(text: str) -> list[str]:
    """The ``@name``s of ``text`` in order, each once (a sentence's final dot is not part of a
    name: ``@sales.csv.`` is ``sales.csv``)."""
    names: list[str] = []
    for match in _MENTION.finditer(text):
        name = match.group(1).rstrip(".")
        if name and name not in names:
            names.append(name)
    return names[:MAX_MENTIONS]


def is_identifier(name: str) -> bool:
    return bool(_IDENTIFIER.match(name))


def describe_expression(names: list[str], rows: int, limit: int) -> str:
    """A Python expression that, evaluated in a kernel's namespace, returns JSON
    ``{name: [text, whole]}`` for each of ``names`` the namespace has. It carries the source
    of :func:`~oraculo.kernels.chat_inputs.describe_mention`, so the kernel need not import
    oraculo."""
    wanted = [n for n in names if is_identifier(n)]  # only names: nothing else is evaluated
    source = "\n".join(
        textwrap.dedent(inspect.getsource(f)) for f in (describe_value, describe_mention)
    )
    return (
        "(lambda g: (exec(compile(" + repr(source) + ", '<oraculo>', 'exec'), g),"
        " __import__('json').dumps({n: g['describe_mention'](globals()[n], "
        + str(int(rows))
        + ") for n in "
        + repr(wanted)
        + " if n in globals()}, default=str))[1])"
        "({'Any': object, 'MAX_VALUE_CHARS': " + str(int(limit)) + "})"
    )


def read_expression_result(found: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """The kernel's answer to :func:`describe_expression` (a ``user_expressions`` entry)."""
    if found.get("status") != "ok":
        raise RuntimeError(f"the kernel could not describe the mentions ({found.get('ename')})")
    raw = json.loads(ast.literal_eval(found["data"]["text/plain"]))
    return {str(k): (str(v[0]), bool(v[1])) for k, v in raw.items()}


def file_text(model: dict[str, Any]) -> str | None:
    """A contents-manager model as text: a text file's content, a notebook's cells (None for
    a binary file or a folder)."""
    if model.get("type") == "notebook":
        cells = (model.get("content") or {}).get("cells") or []
        parts = []
        for i, cell in enumerate(cells):
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else str(source)
            if source.strip():
                parts.append(f"In [{i}] ({cell.get('cell_type', 'code')}):\n{source}")
        return "\n\n".join(parts)
    if model.get("type") == "file" and model.get("format") == "text":
        return str(model.get("content") or "")
    return None


def first_lines(text: str, limit: int) -> tuple[str, int, int]:
    """The first whole lines of ``text`` within ``limit`` characters: ``(text, lines kept,
    lines in all)``."""
    lines = text.splitlines()
    kept: list[str] = []
    size = 0
    for line in lines:
        size += len(line) + 1
        if size > limit and kept:
            break
        kept.append(line[:limit])
    return "\n".join(kept), len(kept), len(lines)


def render(mention: Mention, text: str, whole: bool) -> str:
    how = "whole" if whole else "a sample"
    return f"### @{mention.name} ({mention.kind}, {how})\n{text}"
