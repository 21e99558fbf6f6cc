"""``POST /api/v1/execute`` round trip against the raw kernel websocket, in the same run.

One hub (``process`` spawner) on free ports, one user, one sandbox kernel (the user's assistant
kernel). For ``1+1`` it measures, interleaved so that the machine's noise falls on all of them
alike:

- ``ws``: an ``execute_request`` over the kernel websocket (one open connection) until the
  kernel reports idle: what a notebook pays;
- ``api``: ``POST /api/v1/execute`` (one keep-alive HTTP connection) until the answer;

each through the hub's proxy and directly against the user's server (its loopback port, which
the benchmark reads from the server's environment, as root or the same OS user). Then
sequential throughput: ``--seq`` executions back to back through the proxy.

    .venv/bin/python -m benchmarks.execute [--runs 200] [--seq 200]

The aim (issue 5): at most 10 ms added at p50 over the raw kernel round trip.
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

import httpx
import psutil
import websockets
from jupyter_client.asynchronous import AsyncKernelClient

from tests.harness import REPO, HubClient, HubProcess, execute_request, new_user

RESULTS = REPO / "benchmarks" / "results"


def _request(code: str) -> tuple[str, str]:
    msg_id, msg = execute_request(code, username="bench")
    return msg_id, json.dumps(msg)


async def ws_round_trip(ws: Any, code: str) -> float:
    msg_id, text = _request(code)
    start = time.perf_counter()
    await ws.send(text)
    while True:
        msg = json.loads(await ws.recv())
        if (
            msg.get("parent_header", {}).get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        ):
            return time.perf_counter() - start


async def api_round_trip(http: httpx.AsyncClient, url: str, code: str) -> float:
    start = time.perf_counter()
    r = await http.post(url, json={"code": code})
    elapsed = time.perf_counter() - start
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text
    return elapsed


async def zmq_round_trip(kc: Any, code: str) -> float:
    start = time.perf_counter()
    msg_id = kc.execute(code, store_history=False)
    while True:
        msg = await kc.get_iopub_msg(timeout=30)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        ):
            await kc.get_shell_msg(timeout=30)
            return time.perf_counter() - start


def connection_file(kernel_id: str) -> str:
    """The kernel's connection file, from its command line."""
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        for i, arg in enumerate(cmd[:-1]):
            if arg == "-f" and cmd[i + 1].endswith(f"kernel-{kernel_id}.json"):
                return str(cmd[i + 1])
    raise RuntimeError(f"no process found for kernel {kernel_id}")


def server_url(user: str) -> str:
    """The user's server on loopback, from JUPYTERHUB_SERVICE_URL in its environment."""
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "oraculo.singleuser" not in cmd:
            continue
        try:
            env = p.environ()
        except psutil.Error:
            continue
        if env.get("JUPYTERHUB_USER") == user:
            return env["JUPYTERHUB_SERVICE_URL"].rstrip("/") + "/"
    raise RuntimeError(f"no server process found for {user}")


def stats(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="round trips per path")
    parser.add_argument("--seq", type=int, default=200, help="executions for throughput")
    args = parser.parse_args()

    hub = await HubProcess(Path(tempfile.mkdtemp(prefix="bench-execute-"))).start()
    try:
        client_user = await new_user(HubClient(hub))
        await client_user.spawn()
        auth = client_user.auth
        proxy_base = f"{hub.url}/user/{client_user.name}/"
        direct_base = server_url(client_user.name)
        code = "1+1"
        async with httpx.AsyncClient(timeout=60, headers=auth) as http:
            first = await http.post(f"{proxy_base}api/v1/execute", json={"code": code})
            kernel = first.json()["session"]
            paths = {
                "proxy": proxy_base,
                "direct": direct_base,
            }
            sockets = {
                name: await websockets.connect(
                    base.replace("http://", "ws://") + f"api/kernels/{kernel}/channels",
                    additional_headers=auth,
                    max_size=None,
                )
                for name, base in paths.items()
            }
            # The floor: the kernel's own ZMQ round trip, no web server in between.
            kc = AsyncKernelClient()
            kc.load_connection_file(connection_file(kernel))
            kc.start_channels()
            await kc.wait_for_ready(timeout=60)
            samples: dict[str, list[float]] = {"zmq": []}
            samples.update({f"{kind}_{name}": [] for kind in ("ws", "api") for name in paths})
            for i in range(args.runs + 20):  # the first 20 warm up and are not counted
                zmq_t = await zmq_round_trip(kc, code)
                if i >= 20:
                    samples["zmq"].append(zmq_t)
                for name, base in paths.items():
                    ws_t = await ws_round_trip(sockets[name], code)
                    api_t = await api_round_trip(http, f"{base}api/v1/execute", code)
                    if i >= 20:
                        samples[f"ws_{name}"].append(ws_t)
                        samples[f"api_{name}"].append(api_t)
            for ws in sockets.values():
                await ws.close()
            kc.stop_channels()

            start = time.perf_counter()
            for _ in range(args.seq):
                await api_round_trip(http, f"{proxy_base}api/v1/execute", code)
            seq_s = time.perf_counter() - start
    finally:
        hub.stop()

    report: dict[str, Any] = {name: stats(v) for name, v in samples.items()}
    for name in paths:
        for floor in ("ws", "zmq"):
            key = f"ws_{name}" if floor == "ws" else "zmq"
            report[f"api_{name}_added_p50_ms_over_{floor}"] = round(
                report[f"api_{name}"]["p50_ms"] - report[key]["p50_ms"], 2
            )
    report["sequential"] = {
        "executions": args.seq,
        "seconds": round(seq_s, 3),
        "per_second": round(args.seq / seq_s, 1),
    }
    report["machine"] = {"cpus": psutil.cpu_count(), "load_avg": psutil.getloadavg()}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"execute-{int(time.time())}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"written to {out.relative_to(REPO)}")


if __name__ == "__main__":
    asyncio.run(main())
