"""Reading a workspace file without following links: the indexer checks a path, then reads it.

Between the two the user's code (or, in a group's shared folder, another member's) may put a
link where the file or one of its folders was: read by name, the server would then index a file
that the link points to, which a server running as root (``process`` mode) may read although
the user may not. :func:`read_no_follow` opens every component of an absolute, resolved path
with ``O_NOFOLLOW`` below the previous one's descriptor (as :mod:`oraculo.hub.groups` does), and
checks on the open descriptor that it is a regular file of at most ``limit`` bytes.
"""

from __future__ import annotations

import errno
import os
import stat


class NotARegularFile(OSError):
    """The path is a link, goes through one, or is not a regular file (or is too large)."""


def read_no_follow(path: str, limit: int) -> bytes:
    """The content of the regular file at the absolute, link-free ``path``; raises
    :class:`NotARegularFile` (an ``OSError``) where a component is a link or the file is not a
    regular file of at most ``limit`` bytes, and ``OSError`` where it cannot be read."""
    if not os.path.isabs(path):
        raise ValueError(f"not an absolute path: {path!r}")
    parts = [p for p in path.split(os.sep) if p]
    if not parts:
        raise NotARegularFile(f"not a file: {path}")
    fd = os.open(os.sep, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(
                    part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
            except OSError as e:  # ELOOP/ENOTDIR: a link (or a file) where a folder was
                raise NotARegularFile(f"{path}: {part} is not a folder") from e
            os.close(fd)
            fd = nxt
        try:
            # O_NONBLOCK: a FIFO put there must not hang the indexer's thread.
            nxt = os.open(
                parts[-1],
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                dir_fd=fd,
            )
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise NotARegularFile(f"{path} is a link") from e
            raise
        os.close(fd)
        fd = nxt
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile(f"{path} is not a regular file")
        if st.st_size > limit:
            raise NotARegularFile(f"{path} is larger than {limit} bytes")
        chunks = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:  # it grew since fstat
            raise NotARegularFile(f"{path} is larger than {limit} bytes")
        return data
    finally:
        os.close(fd)
