"""Which files an execution created or changed, and where its images are saved."""

from __future__ import annotations

import base64
import mimetypes
import os
from pathlib import Path
from urllib.parse import quote

from oraculo.extensions.execute.models import FileInfo

#: (mtime_ns, size) of each file under a directory, by path relative to it.
Snapshot = dict[str, tuple[int, int]]

IMAGE_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/svg+xml": ".svg",
}


def snapshot(root: str, max_entries: int, max_depth: int, skip: tuple[str, ...] = ()) -> Snapshot:
    """Every visible file under ``root`` (hidden folders and ``skip`` left out), bounded."""
    out: Snapshot = {}
    stack: list[tuple[str, int]] = [(root, 0)]
    while stack and len(out) < max_entries:
        folder, depth = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    rel = os.path.relpath(entry.path, root)
                    if depth + 1 < max_depth and rel not in skip:
                        stack.append((entry.path, depth + 1))
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    out[os.path.relpath(entry.path, root)] = (st.st_mtime_ns, st.st_size)
            except OSError:
                continue
            if len(out) >= max_entries:
                break
    return out


def changes(before: Snapshot, after: Snapshot) -> list[tuple[str, str, int]]:
    """(relative path, "created" | "modified", size) of what differs, sorted by path."""
    out = []
    for path, (mtime, size) in sorted(after.items()):
        old = before.get(path)
        if old is None:
            out.append((path, "created", size))
        elif old != (mtime, size):
            out.append((path, "modified", size))
    return out


def file_info(
    root_dir: str, abs_path: str, change: str, size: int, base_url: str
) -> FileInfo | None:
    """Describe ``abs_path`` for the answer; None when it lies outside the server's root."""
    rel = os.path.relpath(abs_path, root_dir)
    if rel.startswith(".."):
        return None
    api_path = Path(rel).as_posix()
    mime = mimetypes.guess_type(api_path)[0] or "application/octet-stream"
    quoted = quote(api_path)
    return FileInfo(
        path=api_path,
        size=size,
        type=mime,
        change=change,
        url=f"{base_url}api/contents/{quoted}",
        download_url=f"{base_url}files/{quoted}",
    )


def save_image(folder: str, index: int, mime: str, data: object) -> tuple[str, int] | None:
    """Write one image of a result bundle to ``folder``; (path, size), or None if unreadable."""
    ext = IMAGE_EXTENSIONS.get(mime)
    if ext is None or not isinstance(data, str):
        return None
    try:
        raw = data.encode() if mime == "image/svg+xml" else base64.b64decode(data)
    except ValueError:
        return None
    os.makedirs(folder, 0o700, exist_ok=True)
    path = os.path.join(folder, f"output-{index}{ext}")
    with open(path, "wb") as f:
        f.write(raw)
    return path, len(raw)
