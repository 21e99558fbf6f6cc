"""The process spawner's start, with real processes: it returns once the server listens (the
hub's own check then finds it at once instead of on an exponential backoff), and at once when
the server dies on the way up; a server's GPU survives a hub restart (the spawner's state), and
finding the GPUs (``nvidia-smi``) does not hold up the hub's event loop."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path

import pytest
from jupyterhub.objects import Hub
from traitlets.config import Config

from oraculo.hub import gpus
from oraculo.hub.gpus import NoGpuAvailable
from oraculo.hub.spawners import OraculoProcessSpawner, start_queue
from tests.hub.fakes import HubUser

#: A stand-in server: listens on the port the spawner chose, after a second of "start-up".
SLOW_SERVER = """
import os, socket, time
time.sleep(1.0)
s = socket.socket()
s.bind(("127.0.0.1", int(os.environ["JUPYTERHUB_SERVICE_URL"].rsplit(":", 1)[1].split("/")[0])))
s.listen()
time.sleep(60)
"""


@pytest.fixture(autouse=True)
def fresh_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no hub-wide GPU allocator, as a freshly started hub does."""
    monkeypatch.setattr(gpus, "_allocator", None)


def spawner(
    tmp_path: Path, code: str, config: Config | None = None, name: str = "ada"
) -> OraculoProcessSpawner:
    config = config or Config()
    config.OraculoProcessSpawner.home_dir_template = str(tmp_path / "{username}")
    config.GroupFolders.enabled = False
    user = HubUser(name)
    s = OraculoProcessSpawner(
        user=user,
        hub=Hub(ip="127.0.0.1", port=8081, base_url="/hub/"),
        config=config,
        api_token=f"token-{name}",
        oauth_client_id=f"jupyterhub-user-{name}",
        server=user.server,
        cmd=[sys.executable, "-c", code],
        args=[],
    )
    return s


async def test_start_returns_once_the_server_listens(tmp_path: Path) -> None:
    s = spawner(tmp_path, SLOW_SERVER)
    try:
        ip, port = await s.start()
        # no retry needed: the port takes connections the moment start returns
        socket.create_connection((ip, port), timeout=1).close()
    finally:
        await s.stop(now=True)


async def test_start_returns_when_the_server_dies_on_the_way_up(tmp_path: Path) -> None:
    s = spawner(tmp_path, "raise SystemExit(3)")
    t0 = time.monotonic()
    await s.start()
    assert time.monotonic() - t0 < 20  # it did not sit out the 30 s listening bound
    assert await s.poll() == 3


async def test_servers_start_a_few_at_a_time_in_order_with_their_place_shown(
    tmp_path: Path,
) -> None:
    config = Config()
    config.Spawner.concurrent_starts = 1
    spawners = [spawner(tmp_path, SLOW_SERVER, config, name=n) for n in ("ada", "bo", "cy")]
    t0 = time.monotonic()
    done: dict[str, float] = {}

    async def start(s: OraculoProcessSpawner) -> None:
        await s.start()
        done[s.user.name] = time.monotonic() - t0

    tasks = [asyncio.create_task(start(s)) for s in spawners]
    await asyncio.sleep(0.2)
    try:
        progress = spawners[2].progress()
        first = await anext(progress)
        await progress.aclose()
        assert first["message"] == "Waiting for a turn to start: place 2 in the queue"
        await asyncio.gather(*tasks)
        # one after another: each listened a second after the one before it had
        assert list(done) == ["ada", "bo", "cy"], done
        assert done["bo"] - done["ada"] > 0.9 and done["cy"] - done["bo"] > 0.9, done
        assert start_queue().starting == 0 and not start_queue().waiting
    finally:
        for s in spawners:
            await s.stop(now=True)


async def test_a_spawn_given_up_while_waiting_leaves_the_queue(tmp_path: Path) -> None:
    config = Config()
    config.Spawner.concurrent_starts = 1
    first, gone, last = (spawner(tmp_path, SLOW_SERVER, config, name=n) for n in "abc")
    try:
        running = asyncio.create_task(first.start())
        await asyncio.sleep(0.2)
        waiting = asyncio.create_task(gone.start())
        await asyncio.sleep(0.2)
        assert start_queue().ahead_of(gone) == 0
        waiting.cancel()  # the hub's start_timeout, or the user cancelled the spawn
        await asyncio.gather(waiting, return_exceptions=True)
        assert start_queue().ahead_of(gone) is None
        await running
        await asyncio.wait_for(last.start(), 10)  # the place went on, not lost
        assert gone.proc is None  # it never started
        assert start_queue().starting == 0
    finally:
        for s in (first, last):
            await s.stop(now=True)


async def test_without_a_limit_servers_start_together(tmp_path: Path) -> None:
    spawners = [spawner(tmp_path, SLOW_SERVER, name=n) for n in ("ada", "bo", "cy")]
    t0 = time.monotonic()
    try:
        await asyncio.gather(*(s.start() for s in spawners))
        assert time.monotonic() - t0 < 2.5  # three one-second start-ups side by side
    finally:
        for s in spawners:
            await s.stop(now=True)


async def test_a_servers_gpu_survives_a_hub_restart(tmp_path: Path) -> None:
    config = Config()
    config.GpuAllocator.gpu_ids = ["0", "1"]
    config.GpuAllocator.max_servers_per_gpu = 1
    before = [spawner(tmp_path, SLOW_SERVER, config, name) for name in ("ada", "grace")]
    after: list[OraculoProcessSpawner] = []
    try:
        for s in before:
            await s.start()
        assert [s.gpu_id for s in before] == ["0", "1"]
        states = [s.get_state() for s in before]
        assert [st["gpu_id"] for st in states] == ["0", "1"]

        # The hub restarts: a new allocator, and spawners rebuilt from their saved state
        # (JupyterHub calls load_state with what get_state returned), servers still running.
        gpus._allocator = None
        after = [spawner(tmp_path, SLOW_SERVER, config, name) for name in ("ada", "grace")]
        for s, state in zip(after, states, strict=True):
            s.load_state(state)
            assert await s.poll() is None
        assert [s.gpu_id for s in after] == ["0", "1"]
        assert after[0].get_env()["CUDA_VISIBLE_DEVICES"] == "0"
        allocator = gpus.shared_allocator(after[0])
        assert allocator.assignments() == {"ada/": "0", "grace/": "1"}

        # Both cards are still taken: a third server is refused until ada's stops.
        linus = spawner(tmp_path, SLOW_SERVER, config, "linus")
        with pytest.raises(NoGpuAvailable):
            await linus.start()
        # (This test process, not the restarted hub, is the servers' parent: it reaps them.)
        await before[0].stop(now=True)
        await after[0].stop(now=True)
        after[0].clear_state()
        assert allocator.assignments() == {"grace/": "1"}
        assert await linus.assign_gpu() == "0"
        linus.release_gpu()
    finally:
        for s in before:
            if await s.poll() is None:
                await s.stop(now=True)


SLOW_NVIDIA_SMI = """#!/bin/sh
sleep 1
printf '0\n1\n'
"""


async def test_finding_gpus_runs_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow ``nvidia-smi`` (a stand-in here: this machine has no GPU driver) answers after
    a second; meanwhile the hub's event loop keeps turning."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(SLOW_NVIDIA_SMI)
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.02)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    s = spawner(tmp_path, SLOW_SERVER)
    t0 = time.monotonic()
    try:
        assert await s.assign_gpu() == "0"  # from what nvidia-smi listed
        assert time.monotonic() - t0 >= 1.0  # it did wait for nvidia-smi...
    finally:
        stop.set()
        await ticking
        s.release_gpu()
    assert max(gaps) < 0.5, max(gaps)  # ...without holding up the loop
