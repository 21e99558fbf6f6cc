"""Many people on one hub at once: Locust users through the hub's proxy (``locustfile.py``).

One hub (``process`` spawner, the model service loaded) on free ports; ``--users`` accounts made
first; then Locust starts that many users (``--spawn-rate`` a second), each signing in through
the login form, starting its server and then chatting, writing and searching memories, running
code and listing agents for ``--run-time``. It reports p50/p95 and errors per endpoint (Locust's
own statistics), the hub's, proxy's, model service's and store service's CPU and peak RSS while
it ran, each user's memory (server, kernels, panel server) at the end, and whether every
acknowledged memory write and stored conversation is there afterwards, and the whole machine's
available memory before the hub started and at its lowest while the users ran. With
``--panels`` each user also opens the chat panel once its server is up (its panel server runs).

    .venv/bin/python -m benchmarks.load --users 50 --run-time 180 [--panels]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.density import hub_processes, summarise, tree_memory, user_servers
from tests.harness import PASSWORD, REPO, HubClient, HubProcess, new_user

RESULTS = REPO / "benchmarks" / "results"


class Sampler(threading.Thread):
    """CPU (% of one core) and RSS of named processes, once a second."""

    def __init__(self, roles: dict[str, psutil.Process]) -> None:
        super().__init__(daemon=True)
        self.roles = roles
        self.samples: dict[str, list[tuple[float, int]]] = {k: [] for k in roles}
        self.available: list[int] = []  # the machine's available memory (bytes), once a second
        self.done = threading.Event()

    def run(self) -> None:
        for p in self.roles.values():
            p.cpu_percent(None)
        while not self.done.wait(1.0):
            self.available.append(psutil.virtual_memory().available)
            for role, p in self.roles.items():
                try:
                    self.samples[role].append((p.cpu_percent(None), p.memory_info().rss))
                except psutil.NoSuchProcess:
                    pass

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for role, s in self.samples.items():
            if s:
                cpu = [c for c, _ in s]
                out[role] = {
                    "cpu_mean_pct": round(statistics.mean(cpu), 1),
                    "cpu_max_pct": round(max(cpu), 1),
                    "rss_max_mb": round(max(r for _, r in s) / 2**20, 1),
                }
        return out

    def machine(self, before: int) -> dict[str, float]:
        """The whole machine's memory: what was available before the hub started, the least
        available while the users ran, and the total, in GiB (everything on it counts, the
        model service and the users' processes alike)."""
        vm = psutil.virtual_memory()
        least = min(self.available, default=vm.available)
        return {
            "total_gib": round(vm.total / 2**30, 2),
            "available_before_gib": round(before / 2**30, 2),
            "available_min_gib": round(least / 2**30, 2),
            "used_by_run_gib": round((before - least) / 2**30, 2),
        }


def per_user_memory(hub: HubProcess, names: list[str]) -> dict[str, Any]:
    """Mean RSS, and PSS (shared pages divided among the processes mapping them), per user
    (MB) of the server, its kernels and its panel server (see benchmarks/density.py)."""
    servers = {u: p for u, p in user_servers(hub).items() if u in names}
    seen = [tree_memory(p) for p in servers.values()]
    if not seen:
        return {"users_measured": 0}
    mean = summarise(seen)
    out: dict[str, Any] = {k: mean[k]["rss"] for k in ("server", "kernels", "panels", "total")}
    out["pss"] = {k: mean[k]["pss"] for k in ("server", "kernels", "panels", "total")}
    out["users_measured"] = len(seen)
    return out


def read_stats(prefix: Path) -> list[dict[str, Any]]:
    with open(f"{prefix}_stats.csv") as f:
        rows = list(csv.DictReader(f))
    return [
        {
            "endpoint": r["Name"],
            "requests": int(r["Request Count"]),
            "failures": int(r["Failure Count"]),
            "p50_ms": float(r["50%"] or 0),
            "p95_ms": float(r["95%"] or 0),
        }
        for r in rows
    ]


async def check_acks(hub: HubProcess, tokens: dict[str, str], acks: Path) -> dict[str, int]:
    counts = {"memory": 0, "conversation": 0, "missing memory": 0, "missing conversation": 0}
    if not acks.exists():
        return counts
    async with httpx.AsyncClient(base_url=hub.url, timeout=60) as http:
        for line in acks.read_text().splitlines():
            ack = json.loads(line)
            auth = {"Authorization": f"token {tokens[ack['user']]}"}
            base = f"/user/{ack['user']}/api/v1"
            if ack["kind"] == "memory":
                r = await http.get(f"{base}/memory", params={"key": ack["value"]}, headers=auth)
                found = r.status_code == 200 and r.json().get("key") == ack["value"]
            else:
                r = await http.get(f"{base}/chat/conversations/{ack['value']}", headers=auth)
                found = r.status_code == 200
            counts[ack["kind"]] += 1
            counts[f"missing {ack['kind']}"] += 0 if found else 1
    return counts


async def main(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="oraculo-load-"))
    before = psutil.virtual_memory().available
    hub = await HubProcess(work / "hub", models=True, env={"ORACULO_CULL_IDLE_TIMEOUT": "0"}).start(
        timeout=180
    )
    try:
        await hub.models_loaded(300, 0.5)
        client = HubClient(hub)
        users = [await new_user(client, f"load{i:03d}") for i in range(args.users)]
        tokens = {u.name: u.token for u in users}
        (work / "users.json").write_text(
            json.dumps([{"name": n, "token": t} for n, t in tokens.items()])
        )
        acks = work / "acks.jsonl"
        sampler = Sampler(hub_processes(hub))
        sampler.start()
        env = {
            **os.environ,
            "LOAD_USERS": str(work / "users.json"),
            "LOAD_ACKS": str(acks),
            "LOAD_PASSWORD": PASSWORD,
            "LOAD_PANELS": "1" if args.panels else "0",
        }
        started = time.perf_counter()
        subprocess.run(
            [
                str(Path(sys.executable).parent / "locust"),
                "-f", str(REPO / "benchmarks" / "locustfile.py"),
                "--headless", "--host", hub.url,
                "-u", str(args.users), "-r", str(args.spawn_rate),
                "-t", f"{args.run_time}s", "--csv", str(work / "locust"),
                "--only-summary", "--stop-timeout", "60",
            ],
            env=env, check=False, cwd=work,
        )  # fmt: skip
        elapsed = time.perf_counter() - started
        sampler.done.set()
        sampler.join()
        memory = per_user_memory(hub, list(tokens))
        health = httpx.get(f"{hub.url}/hub/health", timeout=10).status_code
        lost = await check_acks(hub, tokens, acks)
        for u in users:
            await u.client.aclose()
        await client.aclose()
        return {
            "users": args.users,
            "panels": args.panels,
            "run_time_s": round(elapsed, 1),
            "endpoints": read_stats(work / "locust"),
            "processes": sampler.summary(),
            "machine_memory": sampler.machine(before),
            "per_user_mb": memory,
            "hub_health_after": health,
            "acknowledged": lost,
        }
    finally:
        hub.stop()


def report(result: dict[str, Any]) -> None:
    panels = ", each with the chat panel open" if result.get("panels") else ""
    print(f"\n{result['users']} users{panels}, {result['run_time_s']} s")
    print(f"{'endpoint':<22}{'requests':>9}{'errors':>8}{'p50 ms':>9}{'p95 ms':>9}")
    for e in result["endpoints"]:
        print(
            f"{e['endpoint']:<22}{e['requests']:>9}{e['failures']:>8}"
            f"{e['p50_ms']:>9.0f}{e['p95_ms']:>9.0f}"
        )
    for role, s in result["processes"].items():
        print(
            f"{role:<14} CPU mean {s['cpu_mean_pct']}% max {s['cpu_max_pct']}%"
            f"  RSS max {s['rss_max_mb']} MB"
        )
    print(f"per user (MB; RSS, and PSS under 'pss'): {result['per_user_mb']}")
    print(f"machine memory (GiB): {result['machine_memory']}")
    print(f"acknowledged writes checked afterwards: {result['acknowledged']}")
    print(f"hub health after: {result['hub_health_after']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--spawn-rate", type=float, default=1.0)
    parser.add_argument("--run-time", type=int, default=180)
    parser.add_argument(
        "--panels", action="store_true", help="each user opens the chat panel once up"
    )
    args = parser.parse_args()
    result = asyncio.run(main(args))
    report(result)
    RESULTS.mkdir(exist_ok=True)
    name = f"load-{args.users}{'-panels' if args.panels else ''}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2))
