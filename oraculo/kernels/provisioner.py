"""``oraculo-sandbox``: the kernel provisioner that launches every ``oraculo`` kernel.

Limits are applied by the launcher, not by the kernel's goodwill:

- rlimits (memory, CPU time, file size, open files) are set in the child before ``exec``
  (:class:`~oraculo.kernels.sandbox.ChildPlan`); a kernel running as root also drops
  ``CAP_SYS_RESOURCE`` and friends, so it cannot raise them again.
- processes: a ``pids`` cgroup per kernel where the server can make one (root, or a delegated
  cgroup); otherwise ``RLIMIT_NPROC`` set to what the kernel's OS user already runs plus the
  limit. What holds in each spawner mode:

  ============== ============================== =========================================
  spawner        kernel runs as                 process limit
  ============== ============================== =========================================
  process        the hub's account (often root)  pids cgroup (root); RLIMIT_NPROC otherwise
  system-users   jupyter-<name>                  RLIMIT_NPROC (per OS user); cgroup if delegated
  docker         the image's user                the container's pids limit (set by the hub)
  ============== ============================== =========================================

  Root is exempt from ``RLIMIT_NPROC``, so a root kernel without a cgroup has no process limit;
  the provisioner logs that once per kernel.
- the environment comes from :func:`~oraculo.kernels.limits.sandbox_env` (no hub token, cookie
  secret or upstream key), plus the kernel's own narrow token (:mod:`oraculo.kernels.credentials`),
  ``ORACULO_SERVER_URL`` and ``ORACULO_MODELS_URL``.

- reachability: the kernel listens on unix sockets (ZeroMQ's ``ipc`` transport) in a folder of
  the server's own, mode 0700 (:func:`kernel_socket_dir`), not on TCP ports of 127.0.0.1 that
  every local account can connect to. Only the server's OS account (and root) can open them:
  in ``system-users`` mode no other user's code can subscribe to a kernel's output. The
  server's websocket bridge and the execute service connect through the kernel manager, which
  reads the transport from the connection info.

Limits come from ``ORACULO_SANDBOX_LIMITS`` (set by the hub per group), else the kernelspec's
``metadata.kernel_provisioner.config.limits``, else the defaults.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import itertools
import os
import shutil
import stat
import tempfile
import weakref
from typing import Any

import psutil
from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Bool, Dict, Enum, Instance, Int, List, Unicode, default

from oraculo.kernels.cohort import cohort_sandbox
from oraculo.kernels.credentials import HubTokens, KernelToken, server_url
from oraculo.kernels.limits import LIMITS_ENV, NPROC_ENV, SandboxLimits, kernel_nice, sandbox_env
from oraculo.kernels.sandbox import ChildPlan, PidsCgroup, rlimit_plan, set_autogroup_nice
from oraculo.policy import tighten

#: The running sandbox provisioners, by kernel id (for usage reports and limit checks).
_running: weakref.WeakValueDictionary[str, SandboxProvisioner] = weakref.WeakValueDictionary()
_launches = itertools.count()
#: The longest path of a unix socket (sun_path is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107
#: What a socket's name adds to its folder: "/<kernel id, 36>-<port number>".
_SOCKET_NAME = 1 + 36 + 1 + 3
_socket_dir: str | None = None


def kernel_socket_dir() -> str:
    """This server's folder for its kernels' sockets: made with ``mkdtemp`` (mode 0700, a fresh
    random name, so nobody can have made it first), in the temporary folder (``TMPDIR``) or,
    where that path is too long for a socket, ``/tmp``. Removed when the server exits."""
    global _socket_dir
    if _socket_dir is not None and _private(_socket_dir):
        return _socket_dir
    parent = tempfile.gettempdir()
    if len(parent) + len("/oraculo-kernels-12345678") + _SOCKET_NAME > MAX_SOCKET_PATH:
        parent = "/tmp"
    _socket_dir = tempfile.mkdtemp(prefix="oraculo-kernels-", dir=parent)
    atexit.register(shutil.rmtree, _socket_dir, ignore_errors=True)
    return _socket_dir


def _private(path: str) -> bool:
    """Still our own 0700 folder (not removed, not replaced by someone else's)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700
    )


def provisioner_for(kernel_id: str) -> SandboxProvisioner | None:
    """The sandbox provisioner of a kernel of this server, if it has one."""
    return _running.get(kernel_id)


class SandboxProvisioner(LocalProvisioner):
    """A :class:`LocalProvisioner` that launches the kernel inside the user's sandbox limits."""

    limits_config = Dict(
        help="""Limits from the kernelspec (metadata.kernel_provisioner.config.limits_config),
        used where the hub sent none in ORACULO_SANDBOX_LIMITS.""",
    ).tag(config=True)
    env_allow = List(
        Unicode(),
        ["ORACULO_KERNEL_TOKEN"],
        help="""Environment variables (fnmatch patterns) the kernel gets although their names
        look like credentials (*TOKEN*, *SECRET*, *KEY*, *PASSWORD*). Hub and cookie secrets
        are dropped whatever this says.""",
    ).tag(config=True)
    env_deny = List(
        Unicode(),
        help="More environment variables (fnmatch patterns) the kernel never gets.",
    ).tag(config=True)
    token_expires_in = Int(
        24 * 3600,
        help="""Seconds the kernel's own token (ORACULO_KERNEL_TOKEN) stays valid. A restart
        mints a new one when less than an hour is left.""",
    ).tag(config=True)
    transport = Enum(
        ["ipc", "tcp"],
        "ipc",
        help="""How the server reaches the kernel: `ipc` (unix sockets in a 0700 folder of the
        server's OS account: no other account can connect) or `tcp` (Jupyter's default: ports
        on 127.0.0.1 that every local account can connect to).""",
    ).tag(config=True)
    rlimit_nproc = Bool(
        help="""Where no pids cgroup can be made, hold the process limit with RLIMIT_NPROC
        (relative to what the kernel's OS user already runs). Off in containers, whose uid is
        shared with other containers on the host (the container's pids limit holds there).
        Default: ORACULO_SANDBOX_RLIMIT_NPROC != 0.""",
    ).tag(config=True)
    limits = Instance(SandboxLimits)

    @default("rlimit_nproc")
    def _default_rlimit_nproc(self) -> bool:
        return os.environ.get(NPROC_ENV, "1") != "0"

    cgroup: PidsCgroup | None = None
    kernel_token: KernelToken | None = None

    @default("limits")
    def _default_limits(self) -> SandboxLimits:
        if os.environ.get(LIMITS_ENV, "").strip():
            return SandboxLimits.from_environment()
        return SandboxLimits.model_validate(self.limits_config)

    # --- launch ------------------------------------------------------------------------------

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        self._private_sockets()
        self.limits = tighten(self._default_limits(), await cohort_sandbox(self.log))
        kwargs = await super().pre_launch(**kwargs)
        env = sandbox_env(kwargs.get("env") or {}, allow=self.env_allow, deny=self.env_deny)
        env.update(await self._credentials())
        kwargs["env"] = env
        return kwargs

    def _private_sockets(self) -> None:
        """Have the kernel listen on unix sockets in :func:`kernel_socket_dir` (a restart keeps
        the ones it had)."""
        km = self.parent
        if km is None or self.transport != "ipc":
            return
        if km.transport == "ipc" and _socket_dir and os.path.dirname(km.ip) == _socket_dir:
            if _private(_socket_dir):
                return  # a restart: the same sockets
        if km.transport == "ipc":
            # A restart whose folder went (a /tmp cleaner): new sockets, so a new connection
            # file, which the kernel reads them from.
            km.cleanup_connection_file()
        name = self.kernel_id or f"kernel-{os.getpid()}-{next(_launches)}"
        km.transport = "ipc"
        km.ip = os.path.join(kernel_socket_dir(), name)

    async def _credentials(self) -> dict[str, str]:
        env = {}
        for name, value in (
            ("ORACULO_SERVER_URL", server_url()),
            ("ORACULO_MODELS_URL", os.environ.get("ORACULO_MODELS_URL", "")),
        ):
            if value:
                env[name] = value
        hub = HubTokens.from_environment()
        if hub is None:
            return env  # a plain jupyter server: the kernel gets no token
        if self.kernel_token is None or not self.kernel_token.fresh(3600):
            try:
                self.kernel_token = await hub.mint(
                    self.token_expires_in, note=f"oraculo kernel {self.kernel_id}"
                )
            except Exception as e:
                # The kernel still starts; it just cannot call the server or the models.
                self.log.warning("Could not mint a kernel token: %s", type(e).__name__)
                return env
        env["ORACULO_KERNEL_TOKEN"] = self.kernel_token.token
        return env

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        limits = self.limits
        plan = ChildPlan(rlimits=rlimit_plan(limits.rlimits()))
        if limits.processes:
            self._prepare_processes(plan, limits.processes)
        plan.drop_capabilities = os.geteuid() == 0
        plan.nice = kernel_nice()
        kwargs["preexec_fn"] = plan
        info = await super().launch_kernel(cmd, **kwargs)
        if plan.nice > 0 and self.process is not None:
            failed = await asyncio.to_thread(set_autogroup_nice, plan.nice, self.process.pid)
            if failed and failed != errno.ENOENT:
                self.log.warning(
                    "Kernel %s: its session group keeps nice 0 (%s)",
                    self.kernel_id,
                    errno.errorcode.get(failed),
                )
        if self.kernel_id:
            _running[self.kernel_id] = self
        return info

    def _prepare_processes(self, plan: ChildPlan, limit: int) -> None:
        if self.cgroup is not None:
            self.cgroup.remove()
        name = f"{self.kernel_id or 'kernel'}-{os.getpid()}-{next(_launches)}"
        self.cgroup = PidsCgroup.create(name, limit)
        if self.cgroup is not None:
            plan.cgroup_procs = self.cgroup.procs_file
            return
        if os.geteuid() == 0 or not self.rlimit_nproc:
            if os.geteuid() == 0:
                self.log.warning(
                    "Kernel %s runs as root without a pids cgroup: its process limit cannot hold",
                    self.kernel_id,
                )
            return
        # RLIMIT_NPROC counts every task of the real uid, so leave room for what runs already.
        uid = os.getuid()
        running = 0
        for p in psutil.process_iter(["uids", "num_threads"]):
            with contextlib.suppress(psutil.Error, TypeError):
                if p.info["uids"].real == uid:
                    running += p.info["num_threads"] or 1
        plan.rlimits += rlimit_plan({"RLIMIT_NPROC": running + limit})

    # --- stop --------------------------------------------------------------------------------

    async def kill(self, restart: bool = False) -> None:
        await super().kill(restart=restart)
        if self.cgroup is not None:
            # Also what left the kernel's process group (setsid, daemons).
            self.cgroup.kill_all()

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart=restart)
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None
        if not restart:
            if self.kernel_id:
                _running.pop(self.kernel_id, None)
            token, self.kernel_token = self.kernel_token, None
            hub = HubTokens.from_environment()
            if token is not None and hub is not None:
                try:
                    await hub.revoke(token)
                except Exception as e:
                    self.log.warning("Could not revoke a kernel token: %s", type(e).__name__)

    # --- reports -----------------------------------------------------------------------------

    def processes(self) -> list[psutil.Process]:
        """The kernel and every process it started (in its cgroup or below it)."""
        procs: dict[int, psutil.Process] = {}
        if self.cgroup is not None:
            for pid in self.cgroup.pids():
                with contextlib.suppress(psutil.Error):
                    procs[pid] = psutil.Process(pid)
        if self.pid:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(self.pid)
                procs[root.pid] = root
                for child in root.children(recursive=True):
                    procs[child.pid] = child
        return list(procs.values())

    def _processes_enforced_by(self) -> str:
        if self.cgroup is not None:
            return "cgroup"
        if not self.rlimit_nproc:
            return "container"
        return "none" if os.geteuid() == 0 else "rlimit"

    def process_limit_hits(self) -> int:
        """Forks refused by the process limit so far (0 without a cgroup)."""
        return self.cgroup.limit_hits() if self.cgroup is not None else 0

    def usage(self) -> dict[str, Any]:
        """The kernel's memory, CPU and process use against its limits."""
        limits = self.limits
        rss = cpu = 0.0
        kernel_cpu = 0.0
        tasks = 0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                with p.oneshot():
                    rss += p.memory_info().rss
                    times = p.cpu_times()
                    cpu += times.user + times.system
                    tasks += p.num_threads()
                    if p.pid == self.pid:
                        kernel_cpu = times.user + times.system
        return {
            "pids": [p.pid for p in self.processes()],
            "memory_bytes": int(rss),
            "memory_limit_bytes": limits.memory_mb * 1024 * 1024 or None,
            "cpu_seconds": round(kernel_cpu, 2),
            "cpu_seconds_tree": round(cpu, 2),
            "cpu_limit_seconds": limits.cpu_seconds or None,
            "processes": self.cgroup.current() if self.cgroup is not None else tasks,
            "processes_limit": limits.processes or None,
            "processes_enforced_by": self._processes_enforced_by(),
            "file_size_limit_bytes": limits.file_size_mb * 1024 * 1024 or None,
            "open_files_limit": limits.open_files or None,
            "wall_clock_limit_seconds": limits.wall_clock_seconds,
        }
