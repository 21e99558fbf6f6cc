"""The three ways Oráculo starts user servers, chosen by name (``c.OraculoHub.spawner``).

- ``process``: every user's server runs as the hub's own OS account, each in a home of its
  own under the data directory. For one person's machine: it does **not** isolate users.
- ``system-users``: one OS account per hub user (``jupyter-<name>``, created on first spawn,
  home 0700); the hub must run as root.
- ``docker``: one container per user from the image built in ``deploy/docker``, with a GPU
  passed through by device request.

Every spawner starts a server through the same hooks (:class:`OraculoSpawnerMixin`): the
account, the shared folders of the user's hub groups (:mod:`oraculo.hub.groups`), one GPU from
the hub's :class:`~oraculo.hub.gpus.GpuAllocator` (kept in the spawner's state across hub
restarts), the sandbox limits of the user's groups, and a wait until a local server listens;
servers on this machine start a few at a time (:class:`StartQueue`), the rest wait their turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
from collections.abc import AsyncIterator
from typing import Any

from dockerspawner import DockerSpawner
from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Bool, HasTraits, Int, Unicode, default

from oraculo.hub.cohorts import cohorts_of_instructor, is_cohort
from oraculo.hub.exchange import EXCHANGE_ENV, CohortExchange, instructors_of
from oraculo.hub.gpus import shared_allocator
from oraculo.hub.groups import (
    SHARED_DIRS_ENV,
    GroupFolders,
    reachable_by_others,
    run_shadow_command,
    user_groups,
)
from oraculo.hub.sandbox import docker_host_config, sandbox_env


class AccountHook:
    """Hook 1: what the server needs before it starts: a home, an OS account. It may block
    (``useradd``), so :meth:`prepare_account` runs :meth:`prepare` off the hub's event loop."""

    def prepare(self) -> None:
        """Make the home or OS account (blocking; runs in a thread)."""

    async def prepare_account(self) -> None:
        await asyncio.to_thread(self.prepare)


class GroupFoldersHook:
    """Hook 2: the shared folders of the user's hub groups, handed to the server as
    ``ORACULO_SHARED_DIRS``. Making them may block (``groupadd``, ``gpasswd``), so that part runs
    off the event loop; the user's groups are read from the hub's database on the loop."""

    #: The user's group folders, made by :meth:`make_group_folders` at this start.
    group_dirs: list[str] = []
    #: The hub groups this user teaches: ``teaching`` and groups whose ``instructors``
    #: property names them (their nbgrader course folders are the user's).
    instructs: list[str] = []
    #: The hub groups whose exchange this server gets (its groups and those it teaches).
    cohorts: list[str] = []
    #: Where the cohorts' nbgrader exchanges are (:mod:`oraculo.hub.exchange`); "" for none.
    exchange_root: str = ""
    #: The cohorts the user teaches (oraculo.hub.cohorts): their folders too, and the right to
    #: write their ``material``.
    teaching: list[str] = []
    #: The cohorts among the user's groups and the ones they teach (their folders get
    #: ``material``: read-only for students).
    cohort_names: list[str] = []

    def prepare_group_folders(self, folders: GroupFolders, groups: list[str]) -> list[str]:
        """Make the user's group folders (and whatever grants access to them); their paths.
        Blocking; runs in a thread."""
        return list(folders.ensure_folders(groups))

    async def make_group_folders(self) -> None:
        folders = GroupFolders(parent=self)
        if not folders.enabled:
            self.group_dirs = []
            return
        groups = user_groups(self)
        user = self.user  # type: ignore[attr-defined]
        db, orm_user = getattr(user, "db", None), getattr(user, "orm_user", None)
        self.teaching = cohorts_of_instructor(db, orm_user) if db and orm_user else []
        self.instructs = sorted(
            set(self.teaching)
            | {g.name for g in getattr(user, "groups", []) if user.name in instructors_of(g)}
        )
        self.cohort_names = sorted(
            {g.name for g in getattr(user, "groups", []) if is_cohort(g)} | set(self.teaching)
        )
        groups = sorted(set(groups) | set(self.instructs))
        self.group_dirs = await asyncio.to_thread(self.prepare_group_folders, folders, groups)
        exchange = CohortExchange(parent=self)
        if exchange.enabled:
            # named even to a server in no group yet: it may join one while it runs
            self.exchange_root = exchange.root
            self.cohorts = groups
            if groups:
                await asyncio.to_thread(self.prepare_exchange, exchange, groups)

    def prepare_exchange(self, exchange: CohortExchange, groups: list[str]) -> None:
        """Make the user's cohorts' nbgrader exchanges (blocking; runs in a thread). Here
        every user is one account: the course folders stay the hub's."""
        for group in groups:
            exchange.ensure(group)

    def group_env(self, env: dict[str, str]) -> dict[str, str]:
        if self.group_dirs:
            env[SHARED_DIRS_ENV] = os.pathsep.join(self.group_dirs)
        if self.exchange_root:
            env[EXCHANGE_ENV] = self.exchange_root
            env["ORACULO_INSTRUCTS"] = ",".join(self.instructs)
            env["ORACULO_COHORTS"] = ",".join(self.cohorts)
        return env


class GpuHook:
    """Hook 3: one GPU per server from the hub-wide allocator, freed on stop, and kept in the
    spawner's state so a restarted hub knows which card each running server holds. The first
    assignment asks ``nvidia-smi`` for the cards, off the event loop."""

    gpu_id: str | None = None
    #: True where the runtime exposes only the assigned card, renumbered from 0 (containers).
    gpu_renumbered = False

    def _server_key(self) -> str:
        return f"{self.user.name}/{self.name}"  # type: ignore[attr-defined]

    async def assign_gpu(self) -> str | None:
        allocator = shared_allocator(self)  # type: ignore[arg-type]
        self.gpu_id = await asyncio.to_thread(allocator.assign, self._server_key())
        return self.gpu_id

    def release_gpu(self) -> None:
        if self.gpu_id is not None:
            shared_allocator(self).release(self._server_key())  # type: ignore[arg-type]
        self.gpu_id = None

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()  # type: ignore[misc]
        if self.gpu_id is not None:
            state["gpu_id"] = self.gpu_id
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)  # type: ignore[misc]
        gpu = state.get("gpu_id")
        if gpu is not None:  # a hub restart: the running server keeps its card
            self.gpu_id = str(gpu)
            shared_allocator(self).restore(self._server_key(), self.gpu_id)  # type: ignore[arg-type]

    def clear_state(self) -> None:
        super().clear_state()  # type: ignore[misc]
        self.release_gpu()

    def gpu_env(self, env: dict[str, str]) -> dict[str, str]:
        # An explicit empty CUDA_VISIBLE_DEVICES hides every GPU from a server that got none.
        if self.gpu_id is None:
            env["CUDA_VISIBLE_DEVICES"] = ""
        else:
            env["CUDA_VISIBLE_DEVICES"] = "0" if self.gpu_renumbered else self.gpu_id
        env["ORACULO_GPU"] = self.gpu_id or ""  # the card's id on the host, for reports
        return env


class ReadinessHook:
    """Hook 4 (local servers): :meth:`until_listening` returns once the new server accepts
    connections (checked every 50 ms), or has exited.

    The hub checks a started server with an exponential backoff (0.2 s, 0.4 s, 0.8 s, 1.6 s,
    jittered): a server ready after 1.2 s was noticed anywhere up to ~2.5 s later. Its first
    check now finds the server there. Bounded by ``http_timeout`` (at most 30 s), after which
    the hub's own wait goes on as before."""

    async def until_listening(self, address: Any) -> None:
        if not isinstance(self, LocalProcessSpawner):
            return
        ip, port = address
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(self.http_timeout, 30)
        while loop.time() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return  # it died: the hub's checks report that
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 1)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


class StartQueue:
    """Servers starting on this machine at once, at most ``limit``; the others wait in order.

    A server's start is a few CPU seconds of imports. When many start together (a class at
    nine o'clock, a hub restart) and all start at once, they share the CPU evenly, so each
    takes as long as all of them together, and past ``http_timeout`` the hub gives up on every
    one, and their work is lost. In turn, each one is up in its few seconds and the last no
    later than before. One queue per hub (the event loop's), shared by every spawner."""

    def __init__(self) -> None:
        self.starting = 0
        self.waiting: list[object] = []  # whose turn comes next first
        self._turns: dict[object, asyncio.Future[None]] = {}

    def ahead_of(self, who: object) -> int | None:
        """How many wait before ``who``; None when it is not waiting."""
        return self.waiting.index(who) if who in self.waiting else None

    @contextlib.asynccontextmanager
    async def turn(self, who: object, limit: int) -> AsyncIterator[None]:
        if limit > 0 and (self.starting >= limit or self.waiting):
            turn = asyncio.get_running_loop().create_future()
            self.waiting.append(who)
            self._turns[who] = turn
            try:
                await turn  # handed a place by the one that ended (see _end)
            except BaseException:
                self._turns.pop(who, None)
                if who in self.waiting:
                    self.waiting.remove(who)
                elif turn.done() and not turn.cancelled():
                    self._end()  # given a place at the moment it was cancelled: pass it on
                raise
        else:
            self.starting += 1
        try:
            yield
        finally:
            self._end()

    def _end(self) -> None:
        while self.waiting:
            turn = self._turns.pop(self.waiting.pop(0))
            if not turn.done():
                turn.set_result(None)  # its place passes on: `starting` stays
                return
        self.starting -= 1


_QUEUES: dict[asyncio.AbstractEventLoop, StartQueue] = {}


def start_queue() -> StartQueue:
    """The hub's one :class:`StartQueue` (one per event loop, so tests' hubs do not share)."""
    loop = asyncio.get_running_loop()
    for old in [k for k in _QUEUES if k.is_closed()]:
        del _QUEUES[old]
    return _QUEUES.setdefault(loop, StartQueue())


class OraculoSpawnerMixin(AccountHook, GroupFoldersHook, GpuHook, ReadinessHook, HasTraits):
    """What every Oráculo spawner adds to its JupyterHub base spawner, as hooks run in order.

    ``start``: the account and home (:class:`AccountHook`), the group folders
    (:class:`GroupFoldersHook`), a GPU (:class:`GpuHook`), then the base spawner's own start,
    whose environment (:meth:`get_env`) gets the group folders, the GPU and the sandbox limits
    of the user's groups; local servers are then awaited until they listen
    (:class:`ReadinessHook`). ``stop`` frees the GPU. Nothing blocking runs on the hub's event
    loop: ``useradd``, ``groupadd``, ``gpasswd`` and ``nvidia-smi`` run in threads.
    """

    concurrent_starts = Int(
        0,
        config=True,
        help="""At most this many servers start on this machine at once (from the spawn until
        the server listens); later ones wait their turn, in order, with their place shown on
        the spawn page. 0: no limit. Set by OraculoHub.concurrent_starts.""",
    )

    async def start(self) -> Any:
        async with start_queue().turn(self, self.concurrent_starts):
            await self.prepare_account()
            await self.make_group_folders()
            await self.assign_gpu()
            try:
                address = await super().start()  # type: ignore[misc]
            except BaseException:
                self.release_gpu()
                raise
            await self.until_listening(address)
            return address

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        queue = start_queue()
        while (ahead := queue.ahead_of(self)) is not None:
            message = f"Waiting for a turn to start: place {ahead + 1} in the queue"
            yield {"progress": 5, "message": message}
            await asyncio.sleep(1)
        async for event in super().progress():  # type: ignore[misc]
            yield event

    async def stop(self, now: bool = False) -> None:
        try:
            await super().stop(now=now)  # type: ignore[misc]
        finally:
            self.release_gpu()

    def get_env(self) -> dict[str, str]:
        env: dict[str, str] = super().get_env()  # type: ignore[misc]
        return sandbox_env(self, self.gpu_env(self.group_env(env)))


class OraculoProcessSpawner(OraculoSpawnerMixin, LocalProcessSpawner):
    """Runs each user's server as the hub's OS account, in ``home_dir_template``.

    Users share one OS account, so one user's code can read another's files: use this only
    where one person (or one trusting team) uses the hub.
    """

    home_dir_template = Unicode(
        "",
        config=True,
        help="""Home directory of each user's server; {username} is replaced by the hub user
        name. Default: <ORACULO_DATA_DIR>/users/{username}.""",
    )

    @default("home_dir_template")
    def _default_home_dir_template(self) -> str:
        data = os.environ.get("ORACULO_DATA_DIR", os.path.abspath(".data"))
        return os.path.join(data, "users", "{username}")

    @property
    def home_dir(self) -> str:
        return self.home_dir_template.format(username=self.user.name)

    def make_preexec_fn(self, name: str) -> Any:
        home = self.home_dir

        def preexec() -> None:
            os.makedirs(home, 0o700, exist_ok=True)
            os.chdir(home)

        return preexec

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        env["USER"] = self.user.name
        env["HOME"] = self.home_dir
        env["SHELL"] = "/bin/bash"
        return env

    def move_certs(self, paths: dict[str, str]) -> dict[str, str]:
        return paths

    def prepare(self) -> None:
        os.makedirs(self.home_dir, 0o700, exist_ok=True)
        os.chmod(self.home_dir, 0o700)

    def prepare_group_folders(self, folders: GroupFolders, groups: list[str]) -> list[str]:
        # One OS account for everyone: the folders are made and linked, not protected.
        paths = list(folders.ensure_folders(groups))
        for cohort in self.cohort_names:
            folders.ensure_material(cohort)
        folders.link_into_home(self.home_dir, paths, (os.getuid(), os.getgid()))
        return paths


class SystemUserSpawner(OraculoSpawnerMixin, LocalProcessSpawner):
    """Runs each user's server under an OS account of its own, created on first spawn.

    Hub user ``alice`` becomes OS user ``jupyter-alice`` (``os_user_prefix``), so no hub name can
    ever map onto an existing system account such as ``root``. Homes are made 0700.
    """

    os_user_prefix = Unicode(
        "jupyter-",
        config=True,
        help="Prefix of the OS account created for each hub user.",
    )
    create_system_users = Bool(
        True,
        config=True,
        help="Create the OS account (useradd) on first spawn when it does not exist yet.",
    )
    home_base = Unicode("/home", config=True, help="Where the OS accounts' homes are created.")

    @property
    def os_user(self) -> str:
        return self.os_user_prefix + self.user.name

    def ensure_os_user(self) -> pwd.struct_passwd:
        try:
            entry = pwd.getpwnam(self.os_user)
        except KeyError:
            if not self.create_system_users:
                raise
            home = os.path.join(self.home_base, self.os_user)
            run_shadow_command(
                [
                    "useradd",
                    "--create-home",
                    "--home-dir",
                    home,
                    "--shell",
                    "/bin/bash",
                    "--user-group",
                    self.os_user,
                ]
            )
            entry = pwd.getpwnam(self.os_user)
            self.log.info("Created OS user %s (uid %d)", self.os_user, entry.pw_uid)
        if entry.pw_uid < 1000:
            raise RuntimeError(f"Refusing to run a server as system account {self.os_user}")
        os.chmod(entry.pw_dir, 0o700)
        return entry

    def make_preexec_fn(self, name: str) -> Any:
        return super().make_preexec_fn(self.os_user)

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        entry = pwd.getpwnam(self.os_user)
        env["USER"] = self.os_user
        env["HOME"] = entry.pw_dir
        env["SHELL"] = entry.pw_shell or "/bin/bash"
        # each hub user's OS account is <prefix><name>: the instructor's server checks who made
        # each submission before nbgrader collects it (oraculo.extensions.courses)
        env["ORACULO_OS_USER_PREFIX"] = self.os_user_prefix
        return env

    def prepare(self) -> None:
        self.ensure_os_user()

    def prepare_group_folders(self, folders: GroupFolders, groups: list[str]) -> list[str]:
        # Before the server starts: LocalProcessSpawner reads the account's supplementary
        # groups (os.getgrouplist) when it builds the process's preexec function.
        paths = list(folders.ensure_folders(groups, os_groups=True))
        for cohort in self.cohort_names:
            folders.ensure_material(cohort, os_groups=True)
        folders.sync_membership(self.os_user, groups, self.teaching)
        entry = pwd.getpwnam(self.os_user)
        folders.link_into_home(entry.pw_dir, paths, (entry.pw_uid, entry.pw_gid))
        self._gids = {g: folders.ensure_os_group(g) for g in groups}
        if paths and not reachable_by_others(folders.root):
            self.log.warning(
                "Group folders under %s are out of reach of OS accounts: a folder above it "
                "lacks o+x",
                folders.root,
            )
        return paths

    def prepare_exchange(self, exchange: CohortExchange, groups: list[str]) -> None:
        # Members enter their cohort's exchange through its OS group; the course folders
        # become the instructor's account's at the instructor's first start.
        uid = pwd.getpwnam(self.os_user).pw_uid
        for group in groups:
            gid = getattr(self, "_gids", {}).get(group, -1)
            exchange.ensure(group, gid, uid if group in self.instructs else -1)


class OraculoDockerSpawner(OraculoSpawnerMixin, DockerSpawner):
    """One container per user from the Oráculo single-user image, GPU by device request."""

    gpu_renumbered = True
    #: The OS groups of the user's group folders (as root), added to the container's user.
    group_gids: list[int] = []
    _configured_host_config: Any = None

    @default("image")
    def _default_image(self) -> str:
        return "oraculo/singleuser:latest"

    @default("remove")
    def _default_remove(self) -> bool:
        return True

    @default("volumes")
    def _default_volumes(self) -> dict[str, str]:
        # One named volume per user holds their home: notebooks, memories, conversations.
        return {"oraculo-home-{username}": "/home/jovyan"}

    @default("notebook_dir")
    def _default_notebook_dir(self) -> str:
        return "/home/jovyan"

    def prepare_group_folders(self, folders: GroupFolders, groups: list[str]) -> list[str]:
        # Only the user's own group folders are mounted. As root the folders get OS groups,
        # whose gids the container's user is given (group_add) so it may write there.
        root = os.geteuid() == 0
        made = folders.ensure_folders(groups, os_groups=root)
        gids = {gid for gid in made.values() if gid >= 0}
        for cohort in self.cohort_names:  # students read the material, instructors write it
            folders.ensure_material(cohort, os_groups=root)
        if root:
            gids |= {
                folders.ensure_os_group_named(folders.staff_os_group(c)) for c in self.teaching
            }
        self.group_gids = sorted(gids)
        return list(made)

    @property
    def volume_binds(self) -> dict[str, dict[str, str]]:
        binds: dict[str, dict[str, str]] = super().volume_binds
        for path in self.group_dirs:  # at the same path, so ORACULO_SHARED_DIRS holds inside
            binds[path] = {"bind": path, "mode": "rw"}
        return binds

    async def create_object(self) -> Any:
        gpu = self.gpu_id  # the card start() took
        if self._configured_host_config is None:
            # What the operator configured, kept apart from what this start adds to it, so
            # a later start drops a GPU or a group the user no longer has.
            self._configured_host_config = getattr(self, "extra_host_config")  # noqa: B009 - untyped
        configured = self._configured_host_config
        if callable(configured):
            configured = configured(self)
        extra: dict[str, Any] = {**docker_host_config(self), **dict(configured)}
        if self.group_gids:
            extra["group_add"] = [*extra.get("group_add", []), *map(str, self.group_gids)]
        if gpu is not None:
            extra["device_requests"] = [
                {
                    "Driver": "nvidia",
                    "DeviceIDs": [gpu],
                    "Capabilities": [["gpu"]],
                }
            ]
        self.extra_host_config = extra
        return await super().create_object()
