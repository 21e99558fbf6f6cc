"""What an active user costs in memory: Oráculo against a plain JupyterLab, same environment.

One hub (``process`` spawner, the model service loaded) on free ports, started through
``tests/harness.py``; ``--users`` accounts (default 8) each start their server and then, through
the real API, chat (8 tokens, temperature 0), add a memory and search memories, index a small
workspace file and search the index, and run code through ``/api/v1/execute``; with ``--panels``
each also opens the chat panel (its panel server starts). Then, for every user, the server, its
kernel(s) and its panel server are measured from ``/proc/<pid>/smaps_rollup``:

- **RSS**: resident pages, shared library pages counted in full in every process;
- **PSS**: each shared page divided by the number of processes mapping it; the honest "what one
  more user costs" when N servers share the same library files;
- **USS**: the process's private pages only (what stopping it gives back).

The baseline, in the same run: as many plain ``jupyter lab`` servers from the same environment
(our server extension off), each with a plain ``python3`` ipykernel running the same code.

    .venv/bin/python -m benchmarks.density [--users 8] [--panels]
    .venv/bin/python -m benchmarks.density --imports-only   # what each import costs, no hub

It ends with what each heavy import adds to a fresh interpreter (RSS, anonymous memory, time).

The JSON goes to ``benchmarks/results/density-<users>.json``. Reading another process's
``smaps_rollup`` needs the same account (or root): a user server is non-dumpable, so run this
as the account that runs the hub.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.harness import (
    REPO,
    VENV_BIN,
    HubClient,
    HubProcess,
    User,
    execute_over_ws,
    free_port,
    new_user,
    wait_for,
)

RESULTS = REPO / "benchmarks" / "results"
#: What each user runs in their kernel: a little work that leaves a little state.
CODE = (
    "import json\nrows = [{'i': i, 'sq': i * i} for i in range(10000)]\n"
    "print(len(json.dumps(rows)))"
)
NOTE = "# Project notes\n\nThe quarterly report is due on Friday; Ana reviews the figures.\n"
#: Libraries whose shared objects, when mapped in a server, show what it has imported.
MARKERS = {
    "polars": "/polars_runtime",
    "tokenizers": "/tokenizers/tokenizers",
    "pandas": "/pandas/_libs/",
    "pyarrow": "/pyarrow/libarrow.so",
    "lancedb": "/lancedb/_lancedb",
    "numpy": "/numpy/_core/_multiarray_umath",
    "torch": "/torch/lib/libtorch_cpu",
}


def smaps(pid: int) -> dict[str, int]:
    """RSS, PSS and USS (private clean + dirty) of one process, in bytes."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                fields[name] = int(parts[0]) * 1024
    return {
        "rss": fields.get("Rss", 0),
        "pss": fields.get("Pss", 0),
        "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
        "anon": fields.get("Anonymous", 0),
    }


def libraries(pid: int) -> list[str]:
    """Which of :data:`MARKERS` the process has mapped (so imported)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    return [name for name, marker in MARKERS.items() if marker in maps]


def tree_memory(server: psutil.Process) -> dict[str, dict[str, int]]:
    """One server's memory by part: the server itself, its kernels, its panel server."""
    parts = {k: {"rss": 0, "pss": 0, "uss": 0, "anon": 0} for k in ("server", "kernels", "panels")}
    for proc, kind in [(server, "server")] + [
        (c, "panels" if "panel" in " ".join(c.cmdline()) else "kernels")
        for c in server.children(recursive=True)
    ]:
        try:
            for k, v in smaps(proc.pid).items():
                parts[kind][k] += v
        except (OSError, psutil.Error):
            continue
    return parts


def summarise(per_user: list[dict[str, dict[str, int]]]) -> dict[str, dict[str, float]]:
    """Mean MB per part and in total over the users measured."""
    out: dict[str, dict[str, float]] = {}
    for part in ("server", "kernels", "panels"):
        out[part] = {
            k: round(statistics.mean(u[part][k] for u in per_user) / 2**20, 1)
            for k in ("rss", "pss", "uss", "anon")
        }
    out["total"] = {
        k: round(sum(out[p][k] for p in ("server", "kernels", "panels")), 1)
        for k in ("rss", "pss", "uss", "anon")
    }
    return out


def user_servers(hub: HubProcess) -> dict[str, psutil.Process]:
    assert hub.proc is not None
    found = {}
    for p in psutil.Process(hub.proc.pid).children(recursive=True):
        try:
            if "oraculo.singleuser" in " ".join(p.cmdline()):
                found[p.environ().get("JUPYTERHUB_USER", "")] = p
        except psutil.Error:
            continue
    return found


#: The hub's own processes besides the hub, by role: what their command lines hold.
HUB_ROLES = {
    "proxy": "configurable-http-proxy",
    "model service": "-m oraculo.models",
    "store service": "-m oraculo.stores",
}


def hub_processes(hub: HubProcess) -> dict[str, psutil.Process]:
    """The hub and the processes it runs for everyone (:data:`HUB_ROLES`), by role."""
    assert hub.proc is not None
    root = psutil.Process(hub.proc.pid)
    found = {"hub": root}
    for p in root.children(recursive=True):
        try:
            line = " ".join(p.cmdline())
        except psutil.Error:
            continue
        found.update((role, p) for role, mark in HUB_ROLES.items() if mark in line)
    return found


def hub_services(hub: HubProcess) -> dict[str, dict[str, float]]:
    """The memory (MB) of the hub's shared services that users' work lands in: the store service
    (every user's memories and index) and the model service."""
    found: dict[str, dict[str, float]] = {}
    for role, p in hub_processes(hub).items():
        if role.endswith(" service"):
            with contextlib.suppress(OSError):
                found[role] = {k: round(v / 2**20, 1) for k, v in smaps(p.pid).items()}
    return found


async def active_user(
    user: User, panels: bool, trace: dict[str, dict[str, float]] | None = None
) -> dict[str, float]:
    """Spawn, then chat, memory add + search, index + search, execute (and a panel).
    With ``trace``, the server's own memory (MB) is put there after each step."""
    t: dict[str, float] = {}
    base = f"/user/{user.name}/api/v1"

    def probe(name: str) -> None:
        if trace is not None:
            pid = user_servers(user.client.hub)[user.name].pid
            trace[name] = {k: round(v / 2**20, 1) for k, v in smaps(pid).items()}
            trace[name]["libraries"] = libraries(pid)  # type: ignore[assignment]

    async def step(name: str, method: str, path: str, ok: tuple[int, ...], **kw: Any) -> Any:
        start = time.perf_counter()
        r = await user.api(method, path, timeout=300, **kw)
        assert r.status_code in ok, f"{name}: {r.status_code} {r.text[:300]}"
        t[name] = round(time.perf_counter() - start, 2)
        probe(name)
        return r

    start = time.perf_counter()
    await user.spawn(timeout=300)
    t["spawn"] = round(time.perf_counter() - start, 2)
    probe("spawn")
    body = {
        "messages": [{"role": "user", "content": "Name one prime number."}],
        "max_tokens": 8,
        "temperature": 0,
    }
    await step("chat", "POST", f"{base}/chat", (200,), json=body)
    memory = {"key": "report", "value": "the quarterly report is due on Friday"}
    await step("memory add", "POST", f"{base}/memory", (200, 201), json=memory)
    await step("memory search", "GET", f"{base}/memory", (200,), params={"q": "when is it due?"})
    note = {"type": "file", "format": "text", "content": NOTE}
    notes = f"/user/{user.name}/api/contents/notes.md"
    await step("write file", "PUT", notes, (200, 201), json=note)

    async def indexed() -> bool:
        r = await user.api("GET", f"{base}/memory/index")
        s = r.json()
        return s.get("state") == "idle" and s.get("files", 0) >= 1

    start = time.perf_counter()
    await step("index", "POST", f"{base}/memory/index", (202,))
    await wait_for(indexed, 300, f"{user.name}'s workspace index", 0.5)
    t["index"] = round(time.perf_counter() - start, 2)
    probe("index")
    r = await step("index search", "GET", f"{base}/memory/index", (200,), params={"q": "report"})
    assert r.json()["passages"], r.text
    r = await step("execute", "POST", f"{base}/execute", (200,), json={"code": CODE})
    assert r.json()["stdout"].strip().isdigit(), r.text
    if panels:
        await step("panel", "GET", f"/user/{user.name}/oraculo-panels/chat", (200,))
    return t


async def measure_oraculo(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    env = {"ORACULO_CULL_IDLE_TIMEOUT": "0", **dict(kv.split("=", 1) for kv in args.env)}
    hub = await HubProcess(work / "hub", models=True, env=env).start(timeout=180)
    try:
        await hub.models_loaded(300, 0.5)
        client = HubClient(hub)
        users = [
            await new_user(client, f"dens{i:02d}{secrets.token_hex(2)}") for i in range(args.users)
        ]
        # The first user alone, the server measured after each step; then the others, a few
        # at a time (a 2-core machine).
        trace: dict[str, dict[str, float]] = {}
        timings = [await active_user(users[0], args.panels, trace)]
        for i in range(1, len(users), args.concurrency):
            batch = users[i : i + args.concurrency]
            timings += await asyncio.gather(*(active_user(u, args.panels) for u in batch))
        await asyncio.sleep(args.settle)
        servers = user_servers(hub)
        per_user = [tree_memory(servers[u.name]) for u in users]
        mapped = {u.name: libraries(servers[u.name].pid) for u in users}
        shared = hub_services(hub)
        # A returning user's server, up but not used yet (what an idle user costs).
        await users[0].stop_server()
        await users[0].spawn(timeout=300)

        async def index_ran() -> bool:
            r = await users[0].api("GET", f"/user/{users[0].name}/api/v1/memory/index")
            return r.json().get("last_run") is not None

        await wait_for(index_ran, 120, "the index's start-up run", 0.5)
        await asyncio.sleep(args.settle)
        idle = user_servers(hub)[users[0].name]
        idle_mb = {
            k: {m: round(v / 2**20, 1) for m, v in part.items()}
            for k, part in tree_memory(idle).items()
        }
        idle_mb["libraries"] = libraries(idle.pid)  # type: ignore[assignment]
        await client.aclose()
        return {
            "per_user_mb": summarise(per_user),
            "shared_services_mb": shared,
            "server_libraries": mapped[users[0].name],
            "libraries_same_everywhere": len({tuple(v) for v in mapped.values()}) == 1,
            "server_after_each_step_mb": trace,
            "idle_returning_user_mb": idle_mb,
            "step_seconds": {k: statistics.median(t[k] for t in timings) for k in timings[0]},
            "env": env,
        }
    finally:
        hub.stop()


async def measure_baseline(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """``--users`` plain ``jupyter lab`` servers, a plain ipykernel each, the same code run."""
    procs: list[subprocess.Popen[bytes]] = []
    per_user = []
    try:
        servers = []
        for i in range(args.users):
            home = work / "baseline" / f"u{i}"
            home.mkdir(parents=True)
            port, token = free_port(), secrets.token_hex(16)
            env = {
                **os.environ,
                "HOME": str(home),
                "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
                "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            }
            cmd = [
                str(VENV_BIN / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1",
                f"--port={port}", f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={home}", "--ServerApp.allow_root=True",
                "--ServerApp.jpserver_extensions=" + repr({"oraculo.extensions": False}),
            ]  # fmt: skip
            log = open(home / "server.log", "wb")
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
            log.close()
            servers.append((f"http://127.0.0.1:{port}", {"Authorization": f"token {token}"}))
        async with httpx.AsyncClient(timeout=60) as http:
            for url, auth in servers:

                async def up(url: str = url, auth: dict[str, str] = auth) -> bool:
                    return (await http.get(f"{url}/api/status", headers=auth)).status_code == 200

                await wait_for(up, 120, "a plain jupyter lab", 0.2)
                r = await http.post(f"{url}/api/kernels", json={"name": "python3"}, headers=auth)
                assert r.status_code == 201, r.text
                ws = url.replace("http://", "ws://") + f"/api/kernels/{r.json()['id']}/channels"
                out = await execute_over_ws(ws, auth, CODE, timeout=120)
                assert out["stdout"].strip().isdigit(), out
        await asyncio.sleep(args.settle)
        per_user = [tree_memory(psutil.Process(p.pid)) for p in procs]
        return {
            "per_user_mb": summarise(per_user),
            "server_libraries": libraries(procs[0].pid),
        }
    finally:
        for p in procs:
            for c in psutil.Process(p.pid).children(recursive=True):
                c.kill()
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


#: ``(what, set-up, the import measured)``: each runs in a fresh interpreter, the set-up first.
IMPORTS = [
    ("jupyter_server", "", "import jupyter_server.serverapp"),
    ("our features", "import jupyter_server.serverapp", "import_features()"),
    (
        "MCP server SDK",
        "import jupyter_server.serverapp",
        "import mcp.server.mcpserver, mcp.server.streamable_http_manager",
    ),
    ("numpy", "import pydantic, httpx", "import numpy"),
    ("pyarrow (+compute)", "import pydantic, httpx, numpy", "import pyarrow, pyarrow.compute"),
    (
        "LanceDB's namespace client",
        "import pydantic, httpx, numpy, pyarrow.compute",
        "import lance_namespace",
    ),
    (
        "lancedb, pandas kept out",
        "import pydantic, httpx, numpy, pyarrow.compute, lance_namespace",
        "import_lancedb()",
    ),
    ("lancedb as it comes", "import pydantic, httpx", "import lancedb"),
    ("lancedb, pandas kept out", "import pydantic, httpx", "import_lancedb()"),
]
_PROBE = """
import importlib, json, sys, time
from oraculo.extensions.memory.store import import_lancedb
def import_features():
    from oraculo.extensions.app import DEFAULT_FEATURES
    for spec in DEFAULT_FEATURES:
        importlib.import_module(spec.split(":")[0])
def memory():
    with open("/proc/self/smaps_rollup") as f:
        d = {l.split(":")[0]: int(l.split()[1]) for l in f if l.rstrip().endswith("kB")}
    return d["Rss"], d["Anonymous"]
exec(sys.argv[1])
before, n, t = memory(), len(sys.modules), time.perf_counter()
exec(sys.argv[2])
after, seconds = memory(), time.perf_counter() - t
print(json.dumps({
    "rss_mb": (after[0] - before[0]) / 1024, "anon_mb": (after[1] - before[1]) / 1024,
    "seconds": seconds, "modules": len(sys.modules) - n, "pandas": "pandas" in sys.modules,
}))
"""


def import_costs() -> list[dict[str, Any]]:
    """What each import adds to a fresh interpreter: RSS, anonymous (private) memory, time."""
    out = []
    for what, setup, statement in IMPORTS:
        r = subprocess.run(
            [str(VENV_BIN / "python"), "-c", _PROBE, setup, statement],
            capture_output=True, text=True, check=True, cwd=REPO, timeout=120,
        )  # fmt: skip
        row = json.loads(r.stdout.strip().splitlines()[-1])
        out.append({"what": what, "after": setup or "(nothing)", **row})
    return out


def report_imports(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'import':<28}{'RSS MB':>8}{'anon MB':>9}{'s':>6}{'modules':>9}  pandas  after")
    for r in rows:
        print(
            f"{r['what']:<28}{r['rss_mb']:>8.1f}{r['anon_mb']:>9.1f}{r['seconds']:>6.2f}"
            f"{r['modules']:>9}  {'yes' if r['pandas'] else 'no ':<6}  {r['after']}"
        )


def report(result: dict[str, Any]) -> None:
    print(f"\n{result['users']} active users, mean MB per user (RSS / PSS / USS)")
    print(f"{'':<22}{'server':>20}{'kernel(s)':>20}{'panel server':>20}{'all in':>20}")
    for label, r in (("Oráculo", result["oraculo"]), ("plain jupyter lab", result["baseline"])):
        if r is None:
            continue
        cells = [
            f"{m['rss']:.0f} / {m['pss']:.0f} / {m['uss']:.0f}"
            for m in (r["per_user_mb"][p] for p in ("server", "kernels", "panels", "total"))
        ]
        print(f"{label:<22}" + "".join(f"{c:>20}" for c in cells))
        print(f"{'':<22}server has loaded: {', '.join(r['server_libraries']) or 'none of them'}")
    shared = result["oraculo"].get("shared_services_mb", {})
    for name, m in shared.items():
        print(
            f"hub's {name} (shared): RSS {m['rss']:.0f} PSS {m['pss']:.0f} MB, "
            f"{m['pss'] / result['users']:.1f} MB PSS per user at {result['users']} users"
        )
    if "store service" in shared:
        total = result["oraculo"]["per_user_mb"]["total"]["pss"]
        per = total + shared["store service"]["pss"] / result["users"]
        print(f"all in, PSS, with the store service's share: {per:.0f} MB per user")
    print("the first user's server after each step (MB):")
    for step, m in result["oraculo"]["server_after_each_step_mb"].items():
        print(
            f"  {step:<16} RSS {m['rss']:>6.0f}  PSS {m['pss']:>6.0f}  USS {m['uss']:>6.0f}"
            f"  {', '.join(m.get('libraries', []))}"
        )
    idle = result["oraculo"]["idle_returning_user_mb"]
    print(
        f"a returning user's server, up, not used yet: server RSS {idle['server']['rss']:.0f}"
        f" PSS {idle['server']['pss']:.0f} USS {idle['server']['uss']:.0f}, kernels"
        f" {idle['kernels']['rss']:.0f} MB RSS; loaded: {', '.join(idle['libraries']) or 'none'}"
    )
    print(f"steps (median s): {result['oraculo']['step_seconds']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4, help="users set up at once")
    parser.add_argument("--panels", action="store_true", help="each user opens the chat panel")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE",
        help="an ORACULO_* setting for the hub (repeatable), to compare configurations",
    )  # fmt: skip
    parser.add_argument("--no-baseline", action="store_true", help="measure Oráculo only")
    parser.add_argument(
        "--imports-only", action="store_true", help="only what each import costs (no hub)"
    )
    parser.add_argument("--label", default="", help="added to the JSON file's name")
    args = parser.parse_args()

    async def run() -> dict[str, Any]:
        work = Path(tempfile.mkdtemp(prefix="oraculo-density-"))
        oraculo = await measure_oraculo(args, work)
        baseline = None if args.no_baseline else await measure_baseline(args, work)
        return {
            "users": args.users,
            "panels": args.panels,
            "oraculo": oraculo,
            "baseline": baseline,
        }

    if args.imports_only:
        report_imports(import_costs())
        raise SystemExit(0)
    result = asyncio.run(run())
    result["imports"] = import_costs()
    report(result)
    report_imports(result["imports"])
    RESULTS.mkdir(exist_ok=True)
    name = f"density-{args.users}{'-' + args.label if args.label else ''}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2))
    print(f"saved {RESULTS / name}")
