"""Sign-in → server ready, and ready → first execute: Oráculo against plain JupyterHub.

Both hubs run on this machine in the same run, one after the other, each on free ports with a
fresh data directory. For every run a new user signs in through the login form (cookie +
XSRF, as a browser does), asks for a server, and the clock stops when the hub reports it
ready; then a kernel is started and ``print(1+1)`` runs over the kernel websocket through the
proxy. The baseline is JupyterHub with SimpleLocalProcessSpawner and a single-user server
with every server extension turned off (benchmarks/baseline_jupyterhub_config.py).

    .venv/bin/python -m benchmarks.spawn [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from tests.harness import REPO, HubClient, HubProcess, User

BASELINE_CONFIG = REPO / "benchmarks" / "baseline_jupyterhub_config.py"


async def one_run(user: User, login: float) -> tuple[float, float]:
    r = await user.api("POST", f"/hub/api/users/{user.name}/server")
    assert r.status_code in (201, 202), r.text
    await user.wait_ready()
    ready = time.perf_counter()
    kernel = await user.start_kernel()
    out = await user.execute(kernel, "print(1+1)")
    assert out["stdout"] == "2\n", out
    executed = time.perf_counter()
    await user.stop_server()
    return ready - login, executed - ready


async def measure(label: str, hub: HubProcess, runs: int, baseline: bool) -> dict[str, list[float]]:
    await hub.start()
    client = HubClient(hub)
    results: dict[str, list[float]] = {"ready": [], "execute": []}
    try:
        for i in range(runs + 1):  # the first run warms caches and is not counted
            name = f"bench{i}{secrets.token_hex(2)}"
            session = HubClient(hub)
            if baseline:
                start = time.perf_counter()
                await session.login(name, os.environ["BASELINE_PASSWORD"])
                user = User(name=name, token=await session.token(name), client=session)
            else:
                await session.signup(name)
                start = time.perf_counter()
                await session.login(name)
                user = User(name=name, token=await session.token(name), client=session)
            ready, execute = await one_run(user, start)
            await session.aclose()
            if i:
                results["ready"].append(ready)
                results["execute"].append(execute)
            print(
                f"  {label:9s} run {i}{' (warm-up)' if not i else ''}: "
                f"ready {ready:.2f} s, first execute {execute:.2f} s",
                flush=True,
            )
    finally:
        await client.aclose()
        hub.stop()
    return results


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f})"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("BASELINE_PASSWORD", secrets.token_urlsafe(12))
    with tempfile.TemporaryDirectory() as tmp:
        base = await measure(
            "baseline",
            HubProcess(Path(tmp) / "baseline", config_file=BASELINE_CONFIG),
            args.runs,
            baseline=True,
        )
        ours = await measure("oraculo", HubProcess(Path(tmp) / "oraculo"), args.runs, False)
    print(f"\nmedian of {args.runs} runs on {os.cpu_count()} cores")
    print(f"{'':24s}{'plain JupyterHub':32s}{'Oráculo':32s}ratio")
    for key, title in (("ready", "sign-in → server ready"), ("execute", "ready → first execute")):
        ratio = statistics.median(ours[key]) / statistics.median(base[key])
        print(f"{title:24s}{summary(base[key]):32s}{summary(ours[key]):32s}{ratio:.2f}×")


if __name__ == "__main__":
    asyncio.run(main())
