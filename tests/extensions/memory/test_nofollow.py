"""The workspace indexer reads a file without following links, wherever the link is put."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest

from oraculo.extensions.memory.nofollow import NotARegularFile, read_no_follow
from oraculo.extensions.memory.rag import WorkspaceIndex


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path.resolve()
    (root / "notes").mkdir()
    (root / "notes" / "a.md").write_text("# mine\n")
    (root / "secret").mkdir()
    (root / "secret" / "a.md").write_text("# not for the index\n")
    return root


def test_a_regular_file_is_read(tree: Path) -> None:
    assert read_no_follow(str(tree / "notes" / "a.md"), 1000) == b"# mine\n"


def test_a_link_put_where_the_file_was_is_refused(tree: Path) -> None:
    path = tree / "notes" / "a.md"
    path.unlink()
    path.symlink_to(tree / "secret" / "a.md")
    with pytest.raises(NotARegularFile):
        read_no_follow(str(path), 1000)


def test_a_link_put_where_a_folder_was_is_refused(tree: Path) -> None:
    os.rename(tree / "notes", tree / "old")
    (tree / "notes").symlink_to(tree / "secret")
    with pytest.raises(NotARegularFile):
        read_no_follow(str(tree / "notes" / "a.md"), 1000)


def test_fifos_and_large_files_are_refused(tree: Path) -> None:
    fifo = tree / "notes" / "pipe.md"
    os.mkfifo(fifo)
    with pytest.raises(NotARegularFile):
        read_no_follow(str(fifo), 1000)  # and does not hang on it
    with pytest.raises(NotARegularFile):
        read_no_follow(str(tree / "notes" / "a.md"), 3)


def test_the_indexer_does_not_follow_a_link_swapped_in_after_its_scan(tree: Path) -> None:
    """The scan saw a regular file; by the time it is read it is a link to another file."""
    index = WorkspaceIndex(embeddings=None, root=str(tree), path=str(tree / ".index"))
    found, _ = index._scan()
    abs_path, mtime_ns, size = found["notes/a.md"]
    os.unlink(abs_path)
    os.symlink(tree / "secret" / "a.md", abs_path)
    where = {"display": "notes/a.md", "abs_path": abs_path, "mtime_ns": mtime_ns, "size": size}
    # _read has gained the display path as a parameter: pass what it takes, by name.
    params = inspect.signature(index._read).parameters
    entry, chunks = index._read(**{k: v for k, v in where.items() if k in params})
    assert entry.get("error") and chunks == [], (entry, chunks)
