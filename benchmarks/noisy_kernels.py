"""Kernels in long loops against everyone else on the machine: ``OraculoHub.kernel_nice``.

Two hubs, one after the other (the model service loaded in each), the same workload: ``--busy``
users each run a kernel in a CPU loop for the whole measurement, while one more user (the probe)
works as a person would, a request a second: the hub's API (``/hub/api/user``), their own
server (``/api/status``), a chat answer (8 tokens, through the model service) and a cell in
their own kernel (``/api/v1/execute``). The first hub runs kernels at nice 0 (every process equal,
as before ``kernel_nice``), the second at the default 10. It prints p50/p95 per request for both,
and the busy kernels' CPU seconds (what they gave up).

    .venv/bin/python -m benchmarks.noisy_kernels --busy 6 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.model_service import pct
from tests.harness import REPO, HubClient, HubProcess, new_user

RESULTS = REPO / "benchmarks" / "results"

LOOP = """
import time
end = time.monotonic() + {seconds}
spins = 0
while time.monotonic() < end:
    spins += 1
print(time.process_time())
"""


async def timed(probe: dict[str, list[float]], name: str, call: Any) -> None:
    t0 = time.perf_counter()
    r = await call
    probe.setdefault(name, []).append(time.perf_counter() - t0)
    if r.status_code >= 400:
        probe.setdefault(f"{name} errors", []).append(1.0)


async def one_hub(nice: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    hub = await HubProcess(
        work / f"hub-nice-{nice}",
        models=True,
        env={"ORACULO_KERNEL_NICE": str(nice), "ORACULO_CULL_IDLE_TIMEOUT": "0"},
    ).start(timeout=180)
    client = HubClient(hub)
    try:
        await hub.models_loaded(300, 0.5)
        users = [await new_user(client, f"n{nice}u{i}") for i in range(args.busy + 1)]
        probe_user, busy = users[0], users[1:]
        await asyncio.gather(*(u.spawn(240) for u in users))
        kernels = [await u.start_kernel() for u in busy]
        probe_kernel = await probe_user.start_kernel()
        await probe_user.execute(probe_kernel, "1 + 1")  # warm
        loops = [
            asyncio.create_task(
                u.execute(k, LOOP.format(seconds=args.seconds + 10), timeout=args.seconds + 120)
            )
            for u, k in zip(busy, kernels, strict=True)
        ]
        await asyncio.sleep(3)  # the loops are running
        probe: dict[str, list[float]] = {}
        base = f"/user/{probe_user.name}"
        chat = {
            "messages": [{"role": "user", "content": "Name one prime number."}],
            "max_tokens": 8,
            "temperature": 0,
        }
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            t0 = time.monotonic()
            await timed(probe, "hub API", probe_user.api("GET", "/hub/api/user"))
            await timed(probe, "server status", probe_user.api("GET", f"{base}/api/status"))
            answer = probe_user.api("POST", f"{base}/api/v1/chat", json=chat)
            await timed(probe, "chat (8 tokens)", answer)
            await timed(
                probe,
                "execute",
                probe_user.api("POST", f"{base}/api/v1/execute", json={"code": "sum(range(1000))"}),
            )
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
        outs = await asyncio.gather(*loops)
        busy_cpu = [float(o["stdout"].strip() or 0) for o in outs]
        return {
            "kernel_nice": nice,
            "probe": {
                k: {
                    "n": len(v),
                    "p50_ms": round(pct(v, 0.5) * 1000, 1),
                    "p95_ms": round(pct(v, 0.95) * 1000, 1),
                }
                for k, v in probe.items()
                if not k.endswith("errors")
            },
            "errors": {k: len(v) for k, v in probe.items() if k.endswith("errors")},
            "busy_kernel_cpu_s_mean": round(statistics.mean(busy_cpu), 1),
        }
    finally:
        await client.aclose()  # and the users' sessions
        hub.stop()


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="oraculo-noisy-") as tmp:
        return [await one_hub(nice, args, Path(tmp)) for nice in (0, 10)]


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n{args.busy} kernels in CPU loops, one person working, {args.seconds} s each")
    names = list(rows[0]["probe"])
    print(f"{'request':<18}" + "".join(f"{'nice ' + str(r['kernel_nice']):>22}" for r in rows))
    for name in names:
        cells = []
        for r in rows:
            p = r["probe"].get(name, {})
            cells.append(f"{p.get('p50_ms', 0):>10.0f} /{p.get('p95_ms', 0):>8.0f} ms")
        print(f"{name:<18}" + "".join(f"{c:>22}" for c in cells))
    for r in rows:
        print(
            f"nice {r['kernel_nice']}: busy kernel CPU {r['busy_kernel_cpu_s_mean']} s each,"
            f" errors {r['errors'] or 'none'}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--busy", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=60)
    args = parser.parse_args()
    rows = asyncio.run(main(args))
    report(rows, args)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "noisy-kernels.json").write_text(json.dumps(rows, indent=2))
