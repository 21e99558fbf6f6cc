"""Reading the workspace's files into chunks that remember where they came from.

Pure functions, no I/O beyond reading one file: :func:`chunk_file` turns a notebook, Markdown,
reStructuredText, Python, text, CSV or PDF file into :class:`Chunk` objects, each with its cell
(notebooks), its 1-based line range (within the cell for notebooks, the page for PDFs), its text
and the heading path it sits under. Texts are cut where their structure allows (headings,
definitions, paragraphs, cells; :mod:`oraculo.extensions.memory.rag_chunks`) into passages of at
most ``budget`` estimated tokens (the embedder's window) and ``size`` characters, always at line
boundaries, so a citation's line range is exact.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oraculo.extensions.memory.rag_chunks import SEPARATOR, estimate_tokens, pack, sections

#: File suffixes indexed, by the reader that handles them.
TEXT_SUFFIXES = {".md", ".markdown", ".py", ".txt", ".rst"}
#: How each text suffix is cut, and the ``kind`` its chunks get.
STYLES = {".md": "markdown", ".markdown": "markdown", ".rst": "rst", ".py": "python"}
KINDS = {"markdown": "markdown", "python": "code", "rst": "text", "text": "text"}
#: Budget when none is given: no token limit, only ``size``.
NO_BUDGET = 1 << 30
TABLE_SUFFIXES = {".csv", ".tsv"}
SUFFIXES = TEXT_SUFFIXES | TABLE_SUFFIXES | {".ipynb", ".pdf"}

#: Lines of a CSV file sampled into its one chunk, after the header.
CSV_SAMPLE_ROWS = 10
#: Characters of one code cell's text outputs kept.
MAX_OUTPUT_CHARS = 2000


@dataclass
class Chunk:
    """A piece of one file. ``kind``: markdown, code, output, text, table or pdf; ``heading``:
    the path of headings (or the definition) it sits under, ``A › B``, or empty."""

    kind: str
    text: str
    start_line: int
    end_line: int
    cell: int | None = None
    cell_id: str | None = None
    page: int | None = None
    heading: str = ""


class Unreadable(Exception):
    """The file cannot be indexed (binary, malformed, no reader); the message says why."""


def split_lines(
    text: str, size: int, overlap: int, first_line: int = 1
) -> list[tuple[int, int, str]]:
    """Windows of whole lines, about ``size`` characters long, overlapping by ~``overlap``.

    Returns ``(start_line, end_line, text)`` with 1-based inclusive line numbers offset by
    ``first_line - 1``. A single line longer than ``size`` is its own window (cut to ``size``).
    """
    lines = text.splitlines()
    out: list[tuple[int, int, str]] = []
    i = 0
    while i < len(lines):
        j, length = i, 0
        while j < len(lines) and (j == i or length + len(lines[j]) + 1 <= size):
            length += len(lines[j]) + 1
            j += 1
        window = "\n".join(lines[i:j])
        if window.strip():
            out.append((first_line + i, first_line + j - 1, window[: size * 2]))
        if j >= len(lines):
            break
        # Step back whole lines until about ``overlap`` characters are repeated.
        back, k = 0, j
        while k - 1 > i and back + len(lines[k - 1]) + 1 <= overlap:
            k -= 1
            back += len(lines[k]) + 1
        i = k if k > i else j
    return out


def is_binary(data: bytes) -> bool:
    return b"\x00" in data[:8192]


def decode(data: bytes) -> str:
    if is_binary(data):
        raise Unreadable("binary content")
    return data.decode("utf-8", errors="replace")


def chunk_file(
    path: Path, data: bytes, size: int, overlap: int, budget: int = NO_BUDGET
) -> list[Chunk]:
    """Chunks of one file's content ``data`` (read by the caller); raises :class:`Unreadable`.

    Each chunk's text and heading path together estimate at most ``budget`` tokens, and its text
    is at most ``size`` characters; a block cut in pieces repeats about ``overlap`` characters
    (whole lines) between them."""
    suffix = path.suffix.lower()
    cut = _Cutter(size, overlap, budget)
    if suffix == ".ipynb":
        return _notebook(data, cut)
    if suffix == ".pdf":
        return _pdf(data, cut)
    if suffix in TABLE_SUFFIXES:
        return _table(decode(data), "\t" if suffix == ".tsv" else ",")
    if suffix in TEXT_SUFFIXES:
        style = STYLES.get(suffix, "text")
        return cut(decode(data), style, KINDS[style])
    raise Unreadable(f"no reader for {suffix or 'files without a suffix'}")


@dataclass
class _Cutter:
    size: int
    overlap: int
    budget: int

    def __call__(
        self, text: str, style: str, kind: str, above: str = "", **where: Any
    ) -> list[Chunk]:
        """Chunks of ``text``; ``above``: a heading path the text sits under (a notebook's)."""
        lines = max(round(self.overlap / 80), 0)
        budget = self.budget - (estimate_tokens(above) + 1 if above else 0)
        out = []
        for a, b, t, heading in pack(sections(text, style), budget, self.size, lines):
            # a markdown heading stands for itself; code sits under the heading above it
            path = (
                heading or above
                if style == "markdown"
                else SEPARATOR.join(p for p in (above, heading) if p)
            )
            out.append(Chunk(kind, t, a, b, heading=path, **where))
        return out


def _source(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value or "")


def _outputs_text(outputs: list[dict[str, Any]]) -> str:
    parts = []
    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream":
            parts.append(_source(out.get("text")))
        elif kind in ("execute_result", "display_data"):
            data = out.get("data") or {}
            if "text/plain" in data:
                parts.append(_source(data["text/plain"]))
            elif "text/markdown" in data:
                parts.append(_source(data["text/markdown"]))
        elif kind == "error":
            parts.append(f"{out.get('ename', 'Error')}: {out.get('evalue', '')}")
    return "\n".join(p.rstrip("\n") for p in parts if p.strip())[:MAX_OUTPUT_CHARS]


def _notebook(data: bytes, cut: _Cutter) -> list[Chunk]:
    try:
        nb = json.loads(decode(data))
        cells = nb["cells"]
        assert isinstance(cells, list)
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise Unreadable("not a valid notebook") from e
    chunks: list[Chunk] = []
    above = ""  # the last markdown heading path: the code cells below it sit under it
    for index, cell in enumerate(cells):
        if not isinstance(cell, dict):
            continue
        kind = "markdown" if cell.get("cell_type") == "markdown" else "code"
        if cell.get("cell_type") == "raw":
            kind = "text"
        cell_id = cell.get("id") if isinstance(cell.get("id"), str) else None
        where: dict[str, Any] = {"cell": index, "cell_id": cell_id}
        source = _source(cell.get("source"))
        if kind == "markdown":
            found = cut(source, "markdown", kind, above, **where)
            above = next((c.heading for c in reversed(found) if c.heading), above)
            chunks += found
            continue
        style = "python" if kind == "code" else "text"
        chunks += cut(source, style, kind, above, **where)
        if kind == "code":
            text = _outputs_text(cell.get("outputs") or [])
            chunks += cut(text, "text", "output", above, **where)
    return chunks


def _table(text: str, delimiter: str) -> list[Chunk]:
    lines = text.splitlines()
    if not lines:
        return []
    try:
        header = next(csv.reader(io.StringIO(lines[0]), delimiter=delimiter))
    except (csv.Error, StopIteration):
        header = []
    sample = lines[1 : 1 + CSV_SAMPLE_ROWS]
    body = (
        f"Table with columns: {', '.join(h.strip() for h in header)}\n"
        f"{len(lines) - 1} rows. First rows:\n" + "\n".join([lines[0], *sample])
    )
    return [Chunk("table", body, 1, 1 + len(sample))]


def _pdf(data: bytes, cut: _Cutter) -> list[Chunk]:
    try:
        import pypdf
    except ImportError as e:
        raise Unreadable("PDF support needs the pypdf package") from e
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except Exception as e:  # pypdf raises many kinds on malformed files
        raise Unreadable(f"unreadable PDF ({type(e).__name__})") from e
    chunks: list[Chunk] = []
    for number, text in enumerate(pages, start=1):
        chunks += cut(text, "text", "pdf", page=number)
    return chunks
