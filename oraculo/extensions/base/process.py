"""Child processes the server runs on a user's behalf (git, nbgrader): output captured, bounded
in time, killed when they overrun."""

from __future__ import annotations

import asyncio
from pathlib import Path


async def run_captured(
    argv: list[str], cwd: Path | str, env: dict[str, str], timeout: float
) -> tuple[int, str]:
    """Run ``argv`` with no stdin; its exit status and its stdout and stderr together.

    Raises :class:`TimeoutError` once the process has overrun ``timeout`` and been killed."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")
