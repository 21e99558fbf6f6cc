"""What GPU, if any, this process was given, without importing torch."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any


def gpu_info() -> dict[str, Any]:
    """Describe the GPUs visible to this process.

    ``assigned`` is what the hub put in ``CUDA_VISIBLE_DEVICES`` (``None`` when it set
    nothing), ``devices`` what ``nvidia-smi`` reports for them (empty without a GPU).
    """
    assigned = os.environ.get("CUDA_VISIBLE_DEVICES")
    return {"assigned": assigned, "devices": _nvidia_smi(assigned)}


def _nvidia_smi(assigned: str | None) -> list[dict[str, Any]]:
    exe = shutil.which("nvidia-smi")
    if exe is None or assigned == "":
        return []
    cmd = [
        exe,
        "--query-gpu=index,uuid,name,memory.total,memory.used,utilization.gpu",
        "--format=csv,noheader,nounits",
    ]
    if assigned:
        cmd.append(f"--id={assigned}")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    devices = []
    for line in out.strip().splitlines():
        index, uuid, name, total, used, util = (f.strip() for f in line.split(","))
        devices.append(
            {
                "index": int(index),
                "uuid": uuid,
                "name": name,
                "memory_total_mib": int(total),
                "memory_used_mib": int(used),
                "utilization_percent": int(util),
            }
        )
    return devices


def describe() -> str:
    """One line for people: which GPU this kernel has, or that it runs on CPU."""
    info = gpu_info()
    if not info["devices"]:
        return "No GPU: running on CPU."
    return "; ".join(
        f"GPU {d['index']}: {d['name']} ({d['memory_used_mib']}/{d['memory_total_mib']} MiB used)"
        for d in info["devices"]
    )


def process_gpu_memory() -> dict[int, int]:
    """GPU memory (MiB) each process uses, by pid; empty without ``nvidia-smi``."""
    exe = shutil.which("nvidia-smi")
    if exe is None or os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return {}
    cmd = [exe, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    used: dict[int, int] = {}
    for line in out.strip().splitlines():
        try:
            pid, mib = (int(f.strip()) for f in line.split(","))
        except ValueError:
            continue
        used[pid] = used.get(pid, 0) + mib
    return used
