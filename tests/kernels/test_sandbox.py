"""The sandbox below the API: limits from the hub's groups, the kernel's environment, and real
kernels launched by the ``oraculo-sandbox`` provisioner."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import psutil
import pytest
from jupyter_client.manager import AsyncKernelManager
from traitlets import TraitError
from traitlets.config import Config

from oraculo.hub.sandbox import SandboxConfig
from oraculo.kernels.limits import LIMITS_ENV, SandboxLimits, sandbox_env
from oraculo.kernels.sandbox import PidsCgroup, _pids_hierarchy


def test_kernel_env_drops_credentials() -> None:
    env = {
        "PATH": "/usr/bin",
        "HOME": "/home/ana",
        "JUPYTERHUB_API_TOKEN": "hub",
        "JPY_API_TOKEN": "hub",
        "JUPYTERHUB_COOKIE_SECRET": "c",
        "JUPYTERHUB_OAUTH_CALLBACK_URL": "/x",
        "JUPYTERHUB_USER": "ana",
        "OPENAI_API_KEY": "sk-upstream",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "DB_PASSWORD": "pw",
        "ORACULO_KERNEL_TOKEN": "narrow",
        "ORACULO_SERVER_TOKEN": "server",
        LIMITS_ENV: "{}",
        "HF_HUB_OFFLINE": "1",
    }
    out = sandbox_env(env)
    assert out == {
        "PATH": "/usr/bin",
        "HOME": "/home/ana",
        "JUPYTERHUB_USER": "ana",
        "ORACULO_KERNEL_TOKEN": "narrow",
        "HF_HUB_OFFLINE": "1",
    }
    # An admin may let a key through, never the hub's credentials.
    out = sandbox_env(env, allow=["OPENAI_API_KEY", "JUPYTERHUB_*"], deny=["HF_*"])
    assert out["OPENAI_API_KEY"] == "sk-upstream"
    assert "JUPYTERHUB_API_TOKEN" not in out and "HF_HUB_OFFLINE" not in out


def test_limits_from_the_environment() -> None:
    assert SandboxLimits.from_environment({}) == SandboxLimits()
    limits = SandboxLimits.from_environment({LIMITS_ENV: '{"memory_mb": 512}'})
    assert limits.memory_mb == 512 and limits.rlimits()["RLIMIT_DATA"] == 512 * 1024 * 1024
    for bad in ['{"memory_mb": -1}', '{"memroy_mb": 1}', "not json"]:
        with pytest.raises(ValueError):
            SandboxLimits.from_environment({LIMITS_ENV: bad})


def test_group_limits_merge_most_generous_wins() -> None:
    c = Config()
    c.SandboxConfig.default_limits = {"memory_mb": 1024, "processes": 64, "cpu_seconds": 600}
    c.SandboxConfig.group_limits = {
        "students": {"memory_mb": 512, "wall_clock_seconds": 120},
        "gpu": {"memory_mb": 8192, "cpu_seconds": 0},
        "big": {"memory_mb": 4096, "processes": 512},
    }
    config = SandboxConfig(config=c)
    assert config.limits_for([]).memory_mb == 1024
    students = config.limits_for(["students"])
    assert (students.memory_mb, students.processes, students.wall_clock_seconds) == (512, 64, 120)
    both = config.limits_for(["gpu", "big", "unknown"])
    assert (both.memory_mb, both.processes, both.cpu_seconds) == (8192, 512, 0)
    env = config.environment(["students"])
    assert json.loads(env[LIMITS_ENV])["memory_mb"] == 512
    with pytest.raises(TraitError):
        SandboxConfig(config=Config({"SandboxConfig": {"group_limits": {"x": {"memory_mb": -5}}}}))


def test_group_limits_from_oraculo_sandbox_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "ORACULO_SANDBOX_CONFIG",
        json.dumps({"default": {"processes": 32}, "groups": {"t": {"processes": 128}}}),
    )
    config = SandboxConfig()
    assert config.limits_for(["t"]).processes == 128 and config.limits_for([]).processes == 32


# --- real kernels --------------------------------------------------------------------------


@pytest.fixture
async def kernel(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Any, Any]]:
    monkeypatch.setenv(
        LIMITS_ENV, json.dumps({"cpu_seconds": 1, "open_files": 64, "processes": 32})
    )
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-secret-token")  # must not reach the kernel
    monkeypatch.setenv("SOME_API_KEY", "upstream-key")
    monkeypatch.delenv("JUPYTERHUB_API_URL", raising=False)
    km = AsyncKernelManager(kernel_name="oraculo")
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        yield km, kc
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


async def run(kc: Any, code: str) -> dict[str, Any]:
    out: dict[str, Any] = {"stdout": "", "error": None}

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            out["stdout"] += msg["content"]["text"]
        elif msg["msg_type"] == "error":
            out["error"] = msg["content"]["ename"] + ": " + msg["content"]["evalue"]

    await kc.execute_interactive(code, timeout=30, output_hook=hook)
    return out


async def test_provisioner_env_and_limits(kernel: tuple[Any, Any]) -> None:
    km, kc = kernel
    assert type(km.provisioner).__name__ == "SandboxProvisioner"
    out = await run(kc, "import os, json\nprint(json.dumps(dict(os.environ)))")
    env = json.loads(out["stdout"])
    assert "JUPYTERHUB_API_TOKEN" not in env and "SOME_API_KEY" not in env
    assert "ORACULO_KERNEL_TOKEN" not in env  # no hub to mint one from: none, and no error
    assert "hub-secret-token" not in out["stdout"]
    out = await run(kc, "fs = [open('/dev/null') for _ in range(100)]")
    assert out["error"] is not None and "Too many open files" in out["error"]


async def test_the_kernel_listens_on_private_unix_sockets(kernel: tuple[Any, Any]) -> None:
    km, kc = kernel
    folder = os.path.dirname(km.ip)
    st = os.lstat(folder)
    assert km.transport == "ipc"
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, os.geteuid())
    assert sorted(os.listdir(folder)) == sorted(
        f"{os.path.basename(km.ip)}-{port}" for port in km.ports
    )
    assert (await run(kc, "print('over ipc')"))["stdout"] == "over ipc\n"

    # A restart keeps its sockets; one after the folder went (a /tmp cleaner) gets new ones.
    await km.restart_kernel(now=True)
    await kc.wait_for_ready(timeout=60)
    assert os.path.dirname(km.ip) == folder
    shutil.rmtree(folder)
    await km.restart_kernel(now=True)
    kc.stop_channels()
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        assert os.path.dirname(km.ip) != folder
        assert stat.S_IMODE(os.stat(os.path.dirname(km.ip)).st_mode) == 0o700
        assert (await run(kc, "print('again')"))["stdout"] == "again\n"
    finally:
        kc.stop_channels()


async def test_cpu_time_limit_ends_the_kernel(kernel: tuple[Any, Any]) -> None:
    km, kc = kernel
    kc.execute("while True: pass")
    # One CPU second, then SIGXCPU from the kernel (the OS), not from anyone's goodwill.
    code = await asyncio.to_thread(km.provisioner.process.wait, 60)
    assert code == -signal.SIGXCPU


# --- a kernel under an unprivileged OS user (as in the system-users and docker modes) ------

AS_USER = r"""
import asyncio, json, os, sys
from jupyter_client.manager import AsyncKernelManager
from oraculo.kernels.sandbox import protect_process

CODE = '''
import json, os, resource, signal, time
out = {"nproc": resource.getrlimit(resource.RLIMIT_NPROC)[0]}
try:
    open(f"/proc/{os.getppid()}/environ").read()
    out["parent_env"] = "readable"
except OSError as e:
    out["parent_env"] = type(e).__name__
children = []
try:
    for _ in range(200):
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children.append(pid)
    out["forks"] = "unlimited"
except BlockingIOError:
    out["forks"] = len(children)
finally:
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
print(json.dumps(out))
'''

async def main():
    protect_process()
    km = AsyncKernelManager(kernel_name="oraculo")
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    out = []
    await kc.execute_interactive(
        CODE, timeout=60,
        output_hook=lambda m: out.append(m["content"].get("text", ""))
        if m["msg_type"] == "stream" else None,
    )
    kc.stop_channels()
    await km.shutdown_kernel(now=True)
    sys.stdout.write("".join(out))

asyncio.run(main())
"""


@pytest.mark.root
def test_unprivileged_kernel_limits_processes_and_cannot_read_the_server(
    tmp_path: Any,
) -> None:
    """As a non-root OS user: RLIMIT_NPROC holds the process limit, and the server's
    environment (where the hub token is) is out of the kernel's reach."""
    import os
    import subprocess
    import sys

    if os.geteuid() != 0:
        pytest.skip("needs root to run as another OS user")
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    env = {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", ""),
        LIMITS_ENV: json.dumps({"processes": 24}),
        "JUPYTERHUB_API_TOKEN": "hub-secret-token",
    }
    proc = subprocess.run(
        [sys.executable, "-c", AS_USER],
        user=65534,
        group=65534,
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["parent_env"] == "PermissionError"
    assert isinstance(out["forks"], int) and 0 < out["forks"] <= 24, out


def test_spawner_hooks_hand_limits_to_the_server() -> None:
    from types import SimpleNamespace

    from oraculo.hub.sandbox import docker_host_config, sandbox_env
    from oraculo.hub.spawners import OraculoDockerSpawner, OraculoProcessSpawner
    from oraculo.kernels.limits import NPROC_ENV

    c = Config()
    c.SandboxConfig.default_limits = {"processes": 50}
    c.SandboxConfig.group_limits = {"big": {"processes": 100, "memory_mb": 9000}}
    user = SimpleNamespace(name="ana", groups=[SimpleNamespace(name="big")])
    local = OraculoProcessSpawner(config=c, _deprecated_db_session=None)
    local.user = user  # type: ignore[assignment]
    env = sandbox_env(local, {})
    assert json.loads(env[LIMITS_ENV])["memory_mb"] == 9000 and NPROC_ENV not in env
    docker = OraculoDockerSpawner(config=c, _deprecated_db_session=None)
    docker.user = user  # type: ignore[assignment]
    assert sandbox_env(docker, {})[NPROC_ENV] == "0"
    assert docker_host_config(docker) == {"pids_limit": 100 * 4 + 256}


def test_what_a_killed_servers_kernel_left_running_is_ended_at_the_next_kernel_start() -> None:
    """A server killed before it could shut its kernels down (no ``kill``, no ``cleanup``) leaves
    their cgroups behind, and in them whatever a kernel started in a session of its own (a
    daemon, debugpy's adapter). The next kernel cgroup made on the machine kills those processes
    and removes the cgroup."""
    if os.geteuid() != 0 or _pids_hierarchy() is None:
        pytest.skip("needs root and a pids cgroup hierarchy to make kernel cgroups in")
    gone = subprocess.Popen(["true"])  # a server pid that no longer runs
    gone.wait()
    left = PidsCgroup.create(f"kernel-{gone.pid}-0", 16)
    assert left is not None

    def into_cgroup() -> None:
        with open(left.procs_file, "w") as f:
            f.write(str(os.getpid()))

    # a daemon, as debugpy's adapter makes itself: a new session, its parent gone
    out = subprocess.run(
        ["setsid", "sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"],
        preexec_fn=into_cgroup,
        capture_output=True,
        text=True,
        check=True,
    )
    daemon = psutil.Process(int(out.stdout))
    assert daemon.ppid() != os.getpid() and left.pids() == [daemon.pid]
    fresh = PidsCgroup.create(f"kernel-{os.getpid()}-1", 16)
    assert fresh is not None
    try:
        deadline = time.monotonic() + 10
        while daemon.is_running() and daemon.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the dead server's daemon is still running"
            time.sleep(0.05)
        again = PidsCgroup.create(f"kernel-{os.getpid()}-2", 16)  # another start prunes again
        assert again is not None
        again.remove()
        assert not left.path.exists()
        assert fresh.path.exists()  # a live server's cgroup stays
    finally:
        fresh.remove()
        left.remove()
