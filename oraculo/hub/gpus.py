"""Assign the machine's GPUs to user servers.

One :class:`GpuAllocator` lives in the hub process and is shared by every spawner. Each user
server gets one GPU: the one with the fewest servers on it (round robin as servers come
and go), never more than ``max_servers_per_gpu`` on one card. Without GPUs, servers get
none and run on CPU.
"""

from __future__ import annotations

import shutil
import subprocess
import threading

from traitlets import Int, List, Unicode, default
from traitlets.config import LoggingConfigurable


class NoGpuAvailable(RuntimeError):
    """Every GPU already carries ``max_servers_per_gpu`` servers."""


def discover_gpus() -> list[str]:
    """The GPU indices ``nvidia-smi`` lists, as strings; empty without a GPU or a driver."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


class GpuAllocator(LoggingConfigurable):
    """Hands each user server one GPU, fewest servers first."""

    gpu_ids = List(
        Unicode(),
        config=True,
        help="""GPU ids (as CUDA_VISIBLE_DEVICES takes them) that user servers may use.
        Default: every GPU nvidia-smi reports; none on a machine without GPUs.""",
    )
    max_servers_per_gpu = Int(
        0,
        config=True,
        help="""How many user servers may share one GPU. 0 means no limit (plain round robin
        over the least-loaded cards); 1 gives each server a card of its own and refuses to
        spawn once every card is taken.""",
    )

    @default("gpu_ids")
    def _default_gpu_ids(self) -> list[str]:
        return discover_gpus()

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._lock = threading.Lock()
        self._assigned: dict[str, str] = {}  # server key -> gpu id

    def assign(self, key: str) -> str | None:
        """The GPU for server ``key`` (the same one again if it already has one)."""
        with self._lock:
            if key in self._assigned:
                return self._assigned[key]
            if not self.gpu_ids:
                return None
            load = {g: 0 for g in self.gpu_ids}
            for g in self._assigned.values():
                if g in load:
                    load[g] += 1
            gpu = min(self.gpu_ids, key=lambda g: load[g])  # stable: lowest id on ties
            if self.max_servers_per_gpu and load[gpu] >= self.max_servers_per_gpu:
                raise NoGpuAvailable(
                    f"All {len(self.gpu_ids)} GPU(s) already serve "
                    f"{self.max_servers_per_gpu} server(s) each"
                )
            self._assigned[key] = gpu
            self.log.info("GPU %s assigned to %s", gpu, key)
            return gpu

    def restore(self, key: str, gpu: str) -> None:
        """Record that server ``key`` already runs on ``gpu`` (a restarted hub reading its
        spawners' state): no limit is checked, the server is there already."""
        with self._lock:
            self._assigned[key] = gpu
        self.log.info("GPU %s still assigned to %s", gpu, key)

    def release(self, key: str) -> None:
        with self._lock:
            gpu = self._assigned.pop(key, None)
        if gpu is not None:
            self.log.info("GPU %s released by %s", gpu, key)

    def assignments(self) -> dict[str, str]:
        with self._lock:
            return dict(self._assigned)


_allocator: GpuAllocator | None = None


def shared_allocator(parent: LoggingConfigurable) -> GpuAllocator:
    """The hub-wide allocator, configured (``c.GpuAllocator``) from ``parent``'s config on first
    use. It keeps no reference to ``parent``, a spawner that may come and go."""
    global _allocator
    if _allocator is None:
        _allocator = GpuAllocator(config=parent.config, log=parent.log)
    return _allocator
