"""Cutting a text into passages that follow its structure and fit the embedder's window.

:func:`sections` splits a text into blocks under their headings: Markdown (``#`` headings,
fenced code kept whole), reStructuredText (underlined titles), Python (top-level ``def`` and
``class``) or plain text (paragraphs). :func:`pack` joins neighbouring blocks of one section into
passages of at most ``budget`` tokens and ``size`` characters; a block too big on its own is cut
at line boundaries, with a line or two repeated for context. Every passage keeps its exact line
range and the heading path it sits under (``Storage › Cookies``), which is embedded and searched
with it but not part of its text.

Tokens are estimated, not counted: the user's server loads no tokenizer. :func:`estimate_tokens`
is calibrated on all-MiniLM-L6-v2's WordPiece tokenizer (prose, Markdown, reStructuredText,
Python): it is at or above the real count for 99 % of 12-line windows and below 0.75× of it for
none, and callers leave a further 10 % free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PIECE = re.compile(r"[A-Za-z]+|[0-9]+|[^\sA-Za-z0-9]")
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_MD_FENCE = re.compile(r"^\s*(```|~~~)")
_RST_ADORNMENT = re.compile(r"^([=\-~^\"'`:+*#._])\1{2,}\s*$")
_PY_DEF = re.compile(r"^( {0,4})(?:async\s+def|def|class)\s+(\w+)")
#: A passage this small above the first heading joins the block after it.
SCRAP_TOKENS = 24
#: How the heading path is joined in the text that is embedded and searched.
SEPARATOR = " › "


def estimate_tokens(text: str) -> int:
    """A conservative estimate of the WordPiece tokens of ``text`` (special tokens excluded).

    A word of up to 3 letters is one token, each 3 letters more one more; each digit one; each
    other ASCII character one; each other character two.
    """
    n = 0
    for m in _PIECE.finditer(text):
        piece = m.group()
        first = piece[0]
        if first.isascii() and first.isalpha():
            n += 1 if len(piece) <= 3 else 1 + (len(piece) - 1) // 3
        elif first.isdigit():
            n += len(piece)
        else:
            n += 1 if first.isascii() else 2
    return n


@dataclass
class Block:
    """Consecutive lines (1-based, inclusive, relative to the text) under one heading path;
    ``title``: the block is a heading and nothing else."""

    start: int
    end: int
    lines: list[str]
    heading: str
    title: bool = False


def _heading(
    style: str, lines: list[str], i: int, levels: list[str]
) -> tuple[int, str, int] | None:
    """``(level, title, lines it takes)`` when line ``i`` starts a heading."""
    line = lines[i]
    if style == "markdown":
        m = _MD_HEADING.match(line)
        return (len(m.group(1)), m.group(2), 1) if m else None
    if style == "rst":
        under = lines[i + 1] if i + 1 < len(lines) else ""
        m = _RST_ADORNMENT.match(under)
        if not m or not line.strip() or _RST_ADORNMENT.match(line):
            return None
        if len(under.rstrip()) < len(line.rstrip()):
            return None
        if m.group(1) not in levels:
            levels.append(m.group(1))
        return levels.index(m.group(1)) + 1, line.strip(), 2
    if style == "python":  # top-level definitions and methods
        m = _PY_DEF.match(line)
        if not m or len(m.group(1)) not in (0, 4):
            return None
        word = "class" if line.lstrip().startswith("class") else "def"
        return 1 + len(m.group(1)) // 4, f"{word} {m.group(2)}", 1
    return None


def sections(text: str, style: str) -> list[Block]:
    """Blocks of ``text`` in order; ``style``: markdown, rst, python or text.

    A heading starts a new block (its path replaces the path's deeper part); so does a blank
    line, except inside a fenced code block and in Python (a definition stays one block).
    """
    lines = text.splitlines()
    path: list[tuple[int, str]] = []
    levels: list[str] = []
    blocks: list[Block] = []
    current: list[str] = []
    start = 0
    fenced = False
    title = False

    def close() -> None:
        nonlocal current, title
        if any(line.strip() for line in current):
            heading = SEPARATOR.join(t for _, t in path)
            blocks.append(Block(start + 1, start + len(current), current, heading, title))
        current, title = [], False

    i = 0
    while i < len(lines):
        line = lines[i]
        if style == "markdown" and _MD_FENCE.match(line):
            fenced = not fenced
        found = None if fenced else _heading(style, lines, i, levels)
        if found is not None:
            level, name, taken = found
            close()
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, name))
            start, current, title = i, lines[i : i + taken], style != "python"
            i += taken
            continue
        if not line.strip() and not fenced and style != "python":
            close()
        else:
            if not current or title:
                if title:
                    close()
                start = i
            current.append(line)
        i += 1
    close()
    return blocks


def _cut(block: Block, budget: int, size: int, overlap_lines: int) -> list[tuple[int, int, str]]:
    """A block over ``budget`` tokens or ``size`` characters, cut at line boundaries."""
    out: list[tuple[int, int, str]] = []
    i = 0
    lines = block.lines
    while i < len(lines):
        j, tokens, chars = i, 0, 0
        while j < len(lines):
            t, c = estimate_tokens(lines[j]) + 1, len(lines[j]) + 1
            if j > i and (tokens + t > budget or chars + c > size):
                break
            tokens, chars = tokens + t, chars + c
            j += 1
        text = "\n".join(lines[i:j])
        if j == i + 1 and (tokens > budget or chars > size):
            text = _truncate(text, budget, size)  # one line over the window on its own
        if text.strip():
            out.append((block.start + i, block.start + j - 1, text))
        if j >= len(lines):
            break
        i = max(j - overlap_lines, i + 1)
    return out


def _truncate(text: str, budget: int, size: int) -> str:
    text = text[:size]
    while estimate_tokens(text) > budget and len(text) > 1:
        text = text[: int(len(text) * 0.9)]
    return text


def pack(
    blocks: list[Block], budget: int, size: int, overlap_lines: int = 2
) -> list[tuple[int, int, str, str]]:
    """``(start_line, end_line, text, heading)`` passages: neighbouring blocks of one heading
    path joined while they fit ``budget`` tokens (heading path included) and ``size``
    characters; a heading alone is joined to what follows it."""
    out: list[tuple[int, int, str, str]] = []
    group: list[Block] = []
    tokens = 0

    def flush() -> None:
        nonlocal group, tokens
        if group:
            start, end = group[0].start, group[-1].end
            text = "\n".join(
                "\n".join(b.lines) + ("\n" * (nxt.start - b.end - 1))
                for b, nxt in zip(group, [*group[1:], group[-1]], strict=True)
            ).rstrip("\n")
            out.append((start, end, text, group[-1].heading))
        group, tokens = [], 0

    for block in blocks:
        room = max(budget - estimate_tokens(block.heading) - 1, 16)
        text = "\n".join(block.lines)
        need = estimate_tokens(text) + 1
        # a heading joins what follows it, and so does a scrap above the first heading (an
        # rst label, a lone line)
        same = group and (
            group[-1].heading == block.heading
            or group[-1].title
            or (tokens < SCRAP_TOKENS and not group[-1].heading)
        )
        chars = sum(len("\n".join(b.lines)) + 1 for b in group) + len(text)
        if same and tokens + need <= room and chars <= size:
            group.append(block)
            tokens += need
            continue
        if group and all(b.title for b in group) and (need > room or len(text) > size):
            group, tokens = [], 0  # a heading over a block that must be cut: its path says it
        flush()
        if need <= room and len(text) <= size:
            group, tokens = [block], need
            continue
        for a, b, piece in _cut(block, room, size, overlap_lines):
            out.append((a, b, piece, block.heading))
    flush()
    return out
