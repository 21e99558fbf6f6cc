"""Watching folders for changed files with Linux inotify, so the workspace index sees a new or
saved file within seconds instead of at its next periodic run.

:class:`TreeWatcher` watches every folder under its roots that ``descend`` allows (new folders
are added as they appear), and once a burst of changes to files that ``wanted`` accepts has been
quiet for ``delay`` seconds (or has lasted ``max_delay``), calls ``on_change`` on the event loop.
It says nothing about which files changed: the index's incremental run finds them by mtime and
size. inotify is reached through the C library (no extra package). Where it is missing (not
Linux) or the per-user watch limit (``fs.inotify.max_user_watches``) is reached, the watcher
covers what it can, says so in the log, and the periodic run covers the rest.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
import time
from collections.abc import Callable
from typing import Any

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
#: Events that can change what is indexed. IN_MODIFY is left out: IN_CLOSE_WRITE follows it.
MASK = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
_EVENT = struct.Struct("iIII")


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    if not hasattr(libc, "inotify_init1"):
        return None
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    return libc


class TreeWatcher:
    """inotify watches on folder trees, debounced into one ``on_change()`` per burst."""

    def __init__(
        self,
        roots: list[str],
        *,
        descend: Callable[[str, str], bool],
        wanted: Callable[[str], bool],
        on_change: Callable[[], object],
        log: logging.Logger | logging.LoggerAdapter[Any],
        delay: float = 1.0,
        max_delay: float = 5.0,
        max_watches: int = 8192,
    ) -> None:
        self.roots = roots
        self.descend = descend
        self.wanted = wanted
        self.on_change = on_change
        self.log = log
        self.delay = delay
        self.max_delay = max_delay
        self.max_watches = max_watches
        self._fd = -1
        self._libc: Any = None
        self._dirs: dict[int, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._first = 0.0
        self._full = False

    @property
    def watching(self) -> int:
        """How many folders are watched."""
        return len(self._dirs)

    async def start(self) -> bool:
        """Watch the roots (the walk runs in a thread); False where inotify is unavailable."""
        self._libc = _libc()
        if self._libc is None:
            self.log.info("no inotify here: new files are indexed at the next periodic run")
            return False
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            hint = (
                " (this OS account has as many inotify instances as it may: raise the sysctl"
                " fs.inotify.max_user_instances, 128 by default; every server of the process"
                " spawner is the same account)"
                if err == errno.EMFILE
                else ""
            )
            self.log.warning(
                "inotify_init1 failed (errno %s)%s: new files are indexed at the next periodic run",
                err,
                hint,
            )
            return False
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        for root in self.roots:
            await asyncio.to_thread(self._add_tree, root)
        self._loop.add_reader(fd, self._read)
        return True

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._fd >= 0:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        self._dirs.clear()

    def _add_tree(self, top: str) -> None:
        for folder, dirs, _ in os.walk(top):
            if not self._add(folder):
                dirs[:] = []
                continue
            dirs[:] = [d for d in dirs if self.descend(folder, d)]

    def _add(self, folder: str) -> bool:
        if len(self._dirs) >= self.max_watches:
            if not self._full:
                self._full = True
                self.log.warning(
                    "watching %d folders already: deeper changes wait for the periodic run",
                    len(self._dirs),
                )
            return False
        wd = self._libc.inotify_add_watch(
            self._fd, os.fsencode(folder), MASK | IN_ONLYDIR | IN_DONT_FOLLOW
        )
        if wd < 0:
            if not self._full:
                self._full = True
                self.log.warning(
                    "cannot watch %s (errno %s): changes there wait for the periodic run",
                    folder,
                    ctypes.get_errno(),
                )
            return False
        self._dirs[wd] = folder
        return True

    def _read(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            self.log.exception("reading inotify events failed")
            return
        changed = False
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
            offset += _EVENT.size + length
            name = os.fsdecode(raw.rstrip(b"\0"))
            folder = self._dirs.get(wd)
            if mask & IN_Q_OVERFLOW:
                changed = True
            elif mask & IN_IGNORED:
                self._dirs.pop(wd, None)
            elif folder is None:
                continue
            elif mask & IN_ISDIR:
                if mask & (IN_CREATE | IN_MOVED_TO) and self.descend(folder, name):
                    # files may already be inside: a folder moved in, or written at once
                    self._add_tree(os.path.join(folder, name))
                    changed = True
                elif mask & (IN_DELETE | IN_MOVED_FROM) and self.descend(folder, name):
                    changed = True
            elif mask & IN_DELETE_SELF:
                changed = True
            elif name and self.wanted(name):
                changed = True
        if changed:
            self._schedule()

    def _schedule(self) -> None:
        assert self._loop is not None
        now = time.monotonic()
        if self._timer is None:
            self._first = now
        else:
            self._timer.cancel()
        wait = min(self.delay, max(self.max_delay - (now - self._first), 0.0))
        self._timer = self._loop.call_later(wait, self._fire)

    def _fire(self) -> None:
        self._timer = None
        try:
            self.on_change()
        except Exception:
            self.log.exception("reacting to a workspace change failed")
