"""What ``%%chat`` and ``%explain`` put in front of the model, taken from the kernel itself.

- ``{name}`` in a ``%%chat`` cell is replaced by the variable (a dataframe by its shape and first
  rows, anything else by a shortened ``repr``); ``{{name}}`` stays as ``{name}``.
- ``--sample df`` adds the first rows of ``df`` to the question.
- ``%explain`` describes the kernel's last error: its traceback and the cell that raised it.
- The code a reply suggests is its first fenced code block (``--insert`` puts it in a new cell).
- ``--code`` (and the Chat panel's "code only") asks for one fenced block and stops the reply at
  its closing fence (:data:`CODE_INSTRUCTION`, :data:`CODE_STOP`): small models write a fenced
  block well, while under a JSON schema with greedy decoding SmolLM2-135M wrote ``1.1.1.1…``,
  which is not code at all.

Plain functions of the namespace, so they are tested without a kernel.
"""

from __future__ import annotations

import linecache
import os
import re
import traceback
from typing import Any

_NAME = re.compile(r"(\{\{)|(\}\})|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.S)
_OPEN_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n")
_PYTHON = ("", "python", "py", "python3", "ipython")
#: What ``--code`` adds to the question, and where its reply stops (the closing fence; the
#: opening one, ```` ```python ````, is not matched, so the reply keeps its code).
CODE_INSTRUCTION = "\n\nReply with one Python code block only."
CODE_STOP = ["\n```\n"]
#: Longest text one interpolated or sampled variable may take.
MAX_VALUE_CHARS = 2000


def describe_value(value: Any, rows: int = 5) -> str:
    """A variable as the model should see it: a dataframe's shape and first ``rows`` rows as
    CSV, an array's shape and first rows, anything else its ``repr`` (shortened)."""
    kind = type(value)
    mod = kind.__module__.split(".")[0]
    try:
        if mod in ("pandas", "polars") and hasattr(value, "columns") and hasattr(value, "head"):
            head = value.head(rows)
            csv = head.write_csv() if hasattr(head, "write_csv") else head.to_csv(index=False)
            n, m = value.shape
            text = f"{kind.__name__} with {n} rows × {m} columns; first {len(head)} rows (CSV):\n"
            text += str(csv)
        elif hasattr(value, "shape") and hasattr(value, "dtype") and mod in ("numpy", "torch"):
            shape = "×".join(str(int(d)) for d in value.shape)
            text = f"{kind.__name__} of shape {shape}, dtype {value.dtype}; first rows:\n"
            text += repr(value[:rows])
        else:
            text = repr(value)
    except Exception as e:  # a value that cannot describe itself
        text = f"<{kind.__name__}: {type(e).__name__}>"
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def describe_mention(value: Any, rows: int = 5) -> list[Any]:
    """``[text, whole]``: :func:`describe_value`, and whether that is all of the value (not
    first rows of a longer frame or array, not a shortened ``repr``). Self-contained but for
    :func:`describe_value`: the chat server runs its source in a kernel."""
    text = describe_value(value, rows)
    try:
        n = len(value) if hasattr(value, "shape") else 0
    except Exception:  # a 0-d array, or a len() that fails
        n = 0
    return [text, n <= rows and not text.endswith("…")]


def interpolate(text: str, ns: dict[str, Any], rows: int = 5) -> tuple[str, list[str]]:
    """``text`` with each ``{name}`` of a variable in ``ns`` replaced by its description; the
    names used. Braces around anything else are left alone."""
    used: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(1):
            return "{"
        if match.group(2):
            return "}"
        name = match.group(3)
        if name not in ns:
            return match.group(0)
        used.append(name)
        return f"\n{name} = {describe_value(ns[name], rows)}\n"

    return _NAME.sub(replace, text), used


def samples(names: list[str], ns: dict[str, Any], rows: int = 5) -> str:
    """The first rows of each named variable, as a block to add to a question."""
    parts = []
    for name in names:
        if name not in ns:
            raise KeyError(name)
        parts.append(f"Sample of {name}: {describe_value(ns[name], rows)}")
    return "\n\n".join(parts)


def first_code_block(reply: str) -> str | None:
    """The first fenced code block of a reply that is Python (or unlabelled), else None."""
    for lang, code in _FENCE.findall(reply):
        if lang.lower() in _PYTHON:
            return str(code).rstrip() + "\n" if code.strip() else None
    return None


def fenced_code(reply: str) -> str | None:
    """The code of a ``--code`` reply: its first Python (or unlabelled) fenced block, closed or
    cut short (by :data:`CODE_STOP` or ``max_tokens``); None when the reply holds no code."""
    closed = first_code_block(reply)
    if closed is not None:
        return closed
    found = _OPEN_FENCE.search(reply)
    if found is None or found.group(1).lower() not in _PYTHON:
        return None
    code = reply[found.end() :].rstrip().removesuffix("```").rstrip()
    return code + "\n" if code.strip() else None


def parses(code: str) -> str | None:
    """None when ``code`` is valid Python (IPython's magics and shell escapes aside), else the
    syntax error, as the user would read it."""
    lines = [ln for ln in code.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    try:
        compile("\n".join(lines), "<suggested>", "exec", dont_inherit=True)
    except SyntaxError as e:
        return f"SyntaxError: {e.msg} (line {e.lineno})"
    except ValueError as e:  # a null byte
        return f"ValueError: {e}"
    return None


def last_error(shell: Any) -> dict[str, str] | None:
    """The kernel's last error: ``{"error", "traceback", "code"}`` (the cell that raised it,
    found through the traceback's frames), or None when nothing has failed yet."""
    import sys

    value = getattr(sys, "last_value", None)
    if value is None:
        return None
    tb = "".join(traceback.format_exception(type(value), value, value.__traceback__))
    code = ""
    frame = value.__traceback__
    while frame is not None:  # the first frame in a cell: a file name linecache holds only
        filename = frame.tb_frame.f_code.co_filename
        if not os.path.exists(filename) and linecache.getlines(filename):
            code = "".join(linecache.getlines(filename))
            break
        frame = frame.tb_next
    if not code and shell is not None:
        history = [s for s in shell.user_ns.get("In", [])[:-1] if s.strip()]
        code = history[-1] if history else ""
    return {
        "error": f"{type(value).__name__}: {value}",
        "traceback": tb[-3000:],
        "code": code[-3000:],
    }


def explain_prompt(error: dict[str, str]) -> str:
    """The question ``%explain`` asks about an error."""
    return (
        "Explain this error from my notebook in two or three sentences, and show the fixed "
        "code in one Python code block.\n\n"
        f"The cell I ran:\n```python\n{error['code'].rstrip()}\n```\n\n"
        f"The traceback:\n```\n{error['traceback'].rstrip()}\n```"
    )
