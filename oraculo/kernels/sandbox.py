"""What happens in a kernel's child process between ``fork`` and ``exec``, and the cgroup it
joins.

Everything the child runs is prepared in the parent (:class:`ChildPlan`), so the child only makes
system calls: it joins its ``pids`` cgroup, lowers its rlimits and its priority and, when it
runs as root, drops the capabilities that would let it raise them again, leave them behind, or
read the server's memory and environment (``CAP_SYS_PTRACE``). Its session's scheduling group
gets the same priority from the server once it runs (:func:`set_autogroup_nice`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Capabilities a root kernel gives up: raising rlimits, leaving cgroups and mounting
#: (SYS_ADMIN), reading other processes (SYS_PTRACE), and the like.
DROPPED_CAPABILITIES = {
    "CAP_SETPCAP": 8,
    "CAP_NET_ADMIN": 12,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_MKNOD": 27,
}

_PR_CAPBSET_DROP = 24
_PR_SET_DUMPABLE = 4
_CAP_VERSION_3 = 0x20080522
#: Seconds between the soft CPU limit (SIGXCPU) and the hard one (SIGKILL).
CPU_GRACE_SECONDS = 2
#: Where a process reads and sets the nice value of its session's scheduling group (Linux's
#: autogroup: with it on, the CPU is shared between sessions first, then among a session's
#: processes, so a process's own nice value weighs only against its own session).
AUTOGROUP = "/proc/self/autogroup"


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


@dataclass
class ChildPlan:
    """What the kernel's child process does before ``exec``; built in the parent."""

    rlimits: list[tuple[int, int, int]] = field(default_factory=list)  # (resource, soft, hard)
    cgroup_procs: str = ""
    drop_capabilities: bool = False
    #: The kernel's nice value (its session group's is set from the server once it runs:
    #: :func:`set_autogroup_nice`).
    nice: int = 0

    def __call__(self) -> None:
        # Runs in the child, after fork: system calls only, nothing that takes a Python lock.
        if self.cgroup_procs:
            fd = os.open(self.cgroup_procs, os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        for res, soft, hard in self.rlimits:
            resource.setrlimit(res, (soft, hard))
        if self.nice > 0:
            lower_priority(self.nice)
        if self.drop_capabilities:
            _drop_capabilities()


def _drop_capabilities() -> None:
    mask = 0
    for cap in DROPPED_CAPABILITIES.values():
        _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
        mask |= 1 << cap
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    for i in range(2):
        word = ~(mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective &= word
        data[i].permitted &= word
        data[i].inheritable &= word
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


def rlimit_plan(limits: dict[str, int]) -> list[tuple[int, int, int]]:
    """``RLIMIT_*`` name -> value as (resource, soft, hard), never above the current hard limit."""
    plan = []
    for name, value in limits.items():
        res = getattr(resource, name)
        _, hard_now = resource.getrlimit(res)
        soft, hard = value, value
        if name == "RLIMIT_CPU":
            hard = value + CPU_GRACE_SECONDS  # SIGXCPU first, SIGKILL if it is ignored
        if hard_now != resource.RLIM_INFINITY:
            soft, hard = min(soft, hard_now), min(hard, hard_now)
        plan.append((res, soft, hard))
    return plan


# --- cgroups ----------------------------------------------------------------------------------


def _pids_hierarchy() -> tuple[Path, str] | None:
    """Where the ``pids`` controller is mounted and this process's cgroup in it (v1 or v2)."""
    try:
        own = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    v1 = {parts[1]: parts[2] for parts in (line.split(":", 2) for line in own) if len(parts) == 3}
    for line in mounts:
        pre, _, post = line.partition(" - ")
        fields, post_fields = pre.split(), post.split()
        if len(post_fields) < 3:
            continue
        fstype, options = post_fields[0], post_fields[2].split(",")
        mount = Path(fields[4])
        if fstype == "cgroup" and "pids" in options:
            for controllers, path in v1.items():
                if "pids" in controllers.split(","):
                    return mount, path
        if fstype == "cgroup2" and "0::" in "\n".join(own):
            path = v1.get("", "/")
            try:
                enabled = (mount / path.lstrip("/") / "cgroup.subtree_control").read_text()
            except OSError:
                continue
            if "pids" in enabled.split():
                return mount, path
    return None


def _prune(parent: Path) -> None:
    """Remove the cgroups of kernels whose server was killed before it could clean up.

    Names end in ``-<server pid>-<n>``. A cgroup whose server is gone has its processes killed
    first, as the server would have done at the kernel's shutdown: the kernel itself exits when
    its server does, but what it started in a session of its own stays. JupyterLab's debugger
    does that: debugpy's adapter daemonizes, and once the kernel is gone it spun at 200 % CPU
    for as long as it was let (33 minutes in one test run, until found). Processes this
    server may not signal (another OS account's) are left, and so is their cgroup.
    """
    try:
        children = [p for p in parent.iterdir() if p.is_dir()]
    except OSError:
        return
    for child in children:
        try:
            server_pid = int(child.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        if server_pid == os.getpid() or _alive(server_pid):
            continue
        with contextlib.suppress(PermissionError):
            PidsCgroup(child).kill_all()
        with contextlib.suppress(OSError):
            child.rmdir()  # fails while a process is still inside, as it should


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PidsCgroup:
    """A ``pids`` cgroup of one kernel, under ``<this server's cgroup>/oraculo-kernels/``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, name: str, max_pids: int) -> PidsCgroup | None:
        """A fresh cgroup holding at most ``max_pids`` tasks; None where none can be made."""
        found = _pids_hierarchy()
        if found is None:
            return None
        mount, own = found
        parent = mount / own.lstrip("/") / "oraculo-kernels"
        _prune(parent)
        path = parent / name
        try:
            path.mkdir(parents=True, exist_ok=True)
            (path / "pids.max").write_text(str(max_pids))
        except OSError:
            with contextlib.suppress(OSError):
                path.rmdir()
            return None
        return cls(path)

    @property
    def procs_file(self) -> str:
        return str(self.path / "cgroup.procs")

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def current(self) -> int:
        try:
            return int((self.path / "pids.current").read_text())
        except (OSError, ValueError):
            return len(self.pids())

    def limit_hits(self) -> int:
        """How many forks the limit has refused so far."""
        try:
            for line in (self.path / "pids.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def kill_all(self) -> None:
        """SIGKILL every process in the cgroup (a few passes: a fork may race the first)."""
        for _ in range(10):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        self.kill_all()
        with contextlib.suppress(OSError):
            self.path.rmdir()


def set_autogroup_nice(nice: int, pid: int | None = None, tries: int = 40) -> int:
    """Give the session scheduling group (autogroup) of process ``pid`` (this one by default)
    ``nice``, never a lower value than it has. Blocking (it retries); returns 0, or the errno:
    ENOENT where the kernel has no autogroup, EAGAIN when other processes kept setting theirs
    (Linux lets unprivileged ones do so ten times a second, machine-wide).

    A kernel is started in a session of its own (jupyter_client), which Linux's autogroup
    schedules as one group at 0 whatever its processes' nice values: with it on, the CPU is
    shared between sessions first. Its server sets the group's value once the kernel runs: the
    kernel's child cannot, between fork and exec, since it is still non-dumpable like the
    server (its ``/proc`` files belong to root until it executes)."""
    path = AUTOGROUP if pid is None else f"/proc/{pid}/autogroup"
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as e:
        return e.errno or errno.EIO
    try:
        current = int(os.read(fd, 128).rsplit(b"nice", 1)[-1])  # "/autogroup-42 nice 0"
        if current >= nice:
            return 0
        for _ in range(tries):
            try:
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, str(nice).encode())
                return 0
            except OSError as e:
                if e.errno != errno.EAGAIN:
                    return e.errno or errno.EIO
                time.sleep(0.05)
        return errno.EAGAIN
    except ValueError:
        return errno.EINVAL
    finally:
        os.close(fd)


def lower_priority(nice: int) -> None:
    """Run this process and what it starts at ``nice``, never at a higher priority than now.
    A system call (it runs between fork and exec).

    A kernel's code then comes after the hub, its proxy and its services, and after users'
    servers, where the CPU is short. Lowering a process's nice value again takes
    ``CAP_SYS_NICE``, which an unprivileged user (and a root kernel, see
    :data:`DROPPED_CAPABILITIES`) does not have; a session group's
    (:func:`set_autogroup_nice`) can be set anywhere in 0-19 by its own processes, so that part
    is a default, not a limit."""
    if nice > 0 and os.getpriority(os.PRIO_PROCESS, 0) < nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)


def protect_process(log: Any = None) -> None:
    """Make this process non-dumpable: a process of the same OS user (its kernels) can then
    read neither its memory nor ``/proc/<pid>/environ``, where the hub token is.

    Holds where kernels run as a non-root user (``system-users``, ``docker``); a root kernel
    (``process`` mode as root) is not stopped by it.
    """
    if _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 and log is not None:
        log.warning("Could not make the server non-dumpable (errno %d)", ctypes.get_errno())
