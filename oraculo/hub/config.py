"""Everything the hub needs, built once from a few operator-facing settings.

``jupyterhub_config.py`` stays declarative::

    from oraculo.hub.config import OraculoHub
    OraculoHub(config=c).apply(c)

Operators choose with ``c.OraculoHub.<trait>`` above that line, or with the ``ORACULO_*``
environment variables each trait's default reads. :meth:`OraculoHub.apply` then sets the
JupyterHub, proxy, spawner, authenticator, role and service configuration.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import psutil
from traitlets import Bool, Dict, Int, List, Set, TraitError, Unicode, default, validate
from traitlets.config import Config, LoggingConfigurable

from . import operators
from .database import shared_usage_url, sqlalchemy_url
from .releases import HANDLERS as RELEASE_HANDLERS

#: Spawner names an operator picks from, and the JupyterHub entry points they stand for.
SPAWNERS = {
    "process": "oraculo-process",
    "system-users": "oraculo-system-users",
    "docker": "oraculo-docker",
}

#: Authenticator names; any other JupyterHub authenticator entry point name (``github``,
#: ``generic-oauth`` from oauthenticator, ``shared-password`` ...) is passed through.
AUTHENTICATORS = {
    "native": "oraculo-native",
    "oidc": "oraculo-oidc",  # any OpenID Connect provider: oraculo.hub.oauth
    "lti13": "oraculo-lti13",  # launches from an LMS into cohorts: oraculo.hub.lti
}

#: Custom scopes Oráculo features check.
CUSTOM_SCOPES = {
    "custom:oraculo:usage:read-all": {
        "description": "Read every user's model-service usage, not just one's own.",
    },
    "custom:oraculo:budgets:write": {
        "description": "Set and remove usage budgets of users and groups.",
    },
    "custom:oraculo:audit:read-all": {
        "description": "Read and export every user's execution audit trail.",
    },
    "custom:oraculo:cohorts:manage": {
        "description": "Change a cohort through /hub/api/cohorts (its instructors, !group=).",
    },
    "custom:oraculo:cohorts:create": {
        "description": "Make a new cohort through /hub/api/cohorts and become its instructor.",
    },
}

#: What a user's server token may do: the JupyterHub defaults, reaching the model service, and
#: minting the user's narrow, expiring tokens (the kernel gets one of those, never this one).
SERVER_TOKEN_SCOPES = [
    "users:activity!user",
    "access:servers!server",
    "access:services!service=models",
    # The user's memories and workspace index (oraculo.stores); a kernel's token never has it.
    "access:services!service=stores",
    # Operators only (the hub intersects it with the owner's permissions): their Usage panel
    # links to the operator's dashboard when the model service lets the server read everyone's
    # usage. A server could already mint its owner's tokens (tokens!user).
    "custom:oraculo:usage:read-all",
    "tokens!user",
    # The cohorts an instructor teaches, for the Cohort panel: JupyterHub intersects this with
    # the owner's own permissions, so it is read:groups!group=<cohort> for an instructor
    # (oraculo.hub.cohorts) and nothing for anyone else.
    "read:groups",
    # Likewise the Cohort panel's policy editor: intersected with the owner's permissions,
    # custom:oraculo:cohorts:manage!group=<cohort> for an instructor, nothing for a student.
    "custom:oraculo:cohorts:manage",
    # The owner's groups, so a running server learns a join or a leave (courses, the Cohort
    # panel) from GET /hub/api/users/<name>/cohorts without a restart.
    "read:users:groups!user",
]

REPO_ROOT = Path(__file__).resolve().parents[2]

#: The operator's dashboard's service name, and what it asks the hub to put in a viewer's
#: OAuth token (see oraculo.hub.dashboard.app).
DASHBOARD = "usage-dashboard"
DASHBOARD_OAUTH_SCOPES = [
    "access:services!service=models",
    "custom:oraculo:usage:read-all",
    "custom:oraculo:budgets:write",
    "list:users",
    "read:users",
    "list:groups",
    "read:groups",
    "read:servers",
    "admin:server_state",
    "delete:servers",
]


def docker_bridge_address(interface: str = "docker0") -> str | None:
    """The host's IPv4 address on Docker's default bridge, or None where there is none."""
    for address in psutil.net_if_addrs().get(interface, []):
        if address.family == socket.AF_INET:
            return str(address.address)
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a service nobody needs to find by number)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env_int(name: str, fallback: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else fallback


class OraculoHub(LoggingConfigurable):
    """Operator settings of an Oráculo hub, and the JupyterHub configuration they imply."""

    ip = Unicode(
        config=True, help="Address the public proxy listens on. Default ORACULO_IP or 127.0.0.1."
    )
    port = Int(config=True, help="Public port of the proxy. Default ORACULO_PORT or 8000.")
    hub_port = Int(
        config=True,
        help="Port of the hub's own API (behind the proxy). Default ORACULO_HUB_PORT or 8081.",
    )
    hub_ip = Unicode(
        config=True,
        help="""Address the hub's own API listens on; user servers call it there. Default
        ORACULO_HUB_IP, else with the `docker` spawner the host's address on Docker's default
        bridge (docker0, host-internal: containers cannot reach the host's 127.0.0.1), else
        127.0.0.1.""",
    )
    proxy_api_port = Int(
        config=True,
        help="Port of configurable-http-proxy's REST API. Default ORACULO_PROXY_API_PORT or 8001.",
    )
    data_dir = Unicode(
        config=True,
        help="""Where the hub keeps its state: sqlite database, cookie secret, bootstrapped
        admin password, user homes in `process` mode, model-service usage.
        Default ORACULO_DATA_DIR or ./.data.""",
    )
    db_url = Unicode(
        config=True,
        help="""Hub database URL. Default ORACULO_DB_URL or sqlite in data_dir. Scale out:
        postgresql://user:password@host/db (psycopg 3, the `postgres` extra); with it the model
        service keeps its usage in the same database unless usage_db_url says otherwise.""",
    )
    usage_db_url = Unicode(
        config=True,
        help="""Where the model service records usage (its daily quotas are counted from it):
        a SQLAlchemy URL shared by every model-service process. Default ORACULO_USAGE_DB_URL,
        else the hub's database when that is PostgreSQL, else a sqlite file of the service's
        own in data_dir/models.""",
    )
    spawner = Unicode(
        config=True,
        help=f"""How user servers start: one of {sorted(SPAWNERS)}. `process` runs every user
        under the hub's OS account and does not isolate users from each other. Default
        ORACULO_SPAWNER, else `system-users` when the hub runs as root and `process` otherwise.""",
    )
    allow_root_process_spawner = Bool(
        config=True,
        help="""Let a hub running as root use the `process` spawner, which runs every user's
        code as root (each can read every other user's files and every secret of the host).
        Refused without this; logged as a warning with it. Default
        ORACULO_ALLOW_ROOT_PROCESS_SPAWNER=1 or off.""",
    )
    authenticator = Unicode(
        config=True,
        help="""How people sign in: `native` (sign-up with admin approval, admin account made
        on first start) or any JupyterHub authenticator name, e.g. `github` or
        `generic-oauth` from oauthenticator. Default ORACULO_AUTHENTICATOR or native.""",
    )
    admin_users = Set(
        Unicode(),
        config=True,
        help="""Hub admins. Default ORACULO_ADMIN_USERS (comma separated), else {'admin'}
        with the native authenticator and none with the others.""",
    )
    instructors_group = Unicode(
        config=True,
        help="""Members of this hub group may make cohorts (POST /hub/api/cohorts) and become
        their instructors (role oraculo-instructors, scope custom:oraculo:cohorts:create); an
        admin adds people to it. Default ORACULO_INSTRUCTORS_GROUP or `instructors`; empty:
        only admins make cohorts.""",
    )
    open_signup = Bool(
        config=True,
        help="""With the native authenticator: accounts that sign up may sign in at once,
        without an admin's approval. Default ORACULO_OPEN_SIGNUP=1 or off.""",
    )
    models_service = Bool(
        config=True,
        help="""Run the shared model service as a hub-managed service at /services/models/.
        Default on (ORACULO_MODELS_SERVICE=0 turns it off).""",
    )
    models_port = Int(
        config=True, help="Port of the model service. Default ORACULO_MODELS_PORT or 8002."
    )
    dashboard_port = Int(
        config=True,
        help="""Port of the operator's dashboard (a hub service at /services/usage-dashboard/,
        with the model service). Default ORACULO_DASHBOARD_PORT or 8003.""",
    )
    stores_service = Bool(
        config=True,
        help="""Keep every user's memories and workspace index in one hub-managed service
        (oraculo.stores, at <data_dir>/stores/<user>/, out of reach of the user's own code)
        instead of LanceDB in each user's server: about 100 MB less per active server
        (benchmarks/density.py). A server's old ~/.oraculo/memory moves there on first use.
        Default on (ORACULO_STORES_SERVICE=0 turns it off).""",
    )
    stores_port = Int(
        config=True, help="Port of the store service. Default ORACULO_STORES_PORT or 8004."
    )
    models_config_file = Unicode(
        "", config=True, help="Config file handed to the model service (model registry, limits)."
    )
    cull_idle_timeout = Int(
        config=True,
        help="""Stop user servers idle for this many seconds (jupyterhub-idle-culler as a hub
        service). 0 turns culling off. Default ORACULO_CULL_IDLE_TIMEOUT or 3600.""",
    )
    kernel_cull_idle_timeout = Int(
        config=True,
        help="""Shut down a user's kernel once it has been idle this many seconds with no client
        connected (no notebook or console open on it). Its variables are gone; the next chat,
        execute or agent run starts a fresh kernel. Busy kernels and kernels with an open
        notebook are kept. Frees the kernel's memory (~40 MB) on servers that stay up.
        0 keeps kernels until their server stops. Default ORACULO_KERNEL_CULL_IDLE_TIMEOUT or
        3600.""",
    )
    kernel_cull_interval = Int(
        300, config=True, help="How often (seconds) each server looks for idle kernels to cull."
    )
    malloc_arena_max = Int(
        config=True,
        help="""MALLOC_ARENA_MAX for user servers and their kernels and panel servers: how many
        glibc malloc arenas a process may make (glibc's default is 8 per core; each thread that
        allocates may get its own, and freed memory stays in it). 0 leaves glibc's default.
        Default ORACULO_MALLOC_ARENA_MAX or 0 (see README, scale-out, Density).""",
    )
    concurrent_starts = Int(
        config=True,
        help="""At most this many users' servers start on this machine at once (process and
        system-users spawners; from the spawn until the server listens). The others wait their
        turn in order, their place shown on the spawn page, so that when many start together
        each is up in its few seconds instead of all sharing the CPU until the hub gives up on
        them. A spawn may wait up to start_timeout (300 s with a limit, 120 s without). 0: no
        limit. Default ORACULO_CONCURRENT_STARTS or twice the CPU count (at least 2).""",
    )
    kernel_nice = Int(
        config=True,
        help="""The nice value (0-19) users' kernels run at: the code users, the assistant and
        agents run, and what it starts. Where the CPU is short (a kernel in a long loop on a
        small machine), the hub, its proxy, the model service and users' servers come first,
        so sign-in, routing, chat and the notebook itself stay prompt. Between users nothing
        changes (every kernel runs at the same value), and an idle CPU is used by whoever asks.
        The kernel's session scheduling group (Linux's autogroup) gets the same value. A
        kernel cannot lower its own nice value (that takes CAP_SYS_NICE), but Linux lets
        anyone set their session group's between 0 and 19, or start a new session (setsid) in
        a group of its own at 0: a default that puts the platform first, not a CPU limit
        (those are the sandbox's and the container's). 0 turns it off. Default
        ORACULO_KERNEL_NICE or 10 (see README, scale-out, Load).""",
    )
    group_folders = Bool(
        config=True,
        help="""Give each hub group a shared folder (<groups_dir>/<group>) that its members'
        servers index and take agents from, linked as ~/shared/<group>. Default on
        (ORACULO_GROUP_FOLDERS=0 turns it off).""",
    )
    groups_dir = Unicode(
        config=True,
        help="""Where the group folders live. Default ORACULO_GROUPS_DIR, else
        /srv/oraculo/groups with the system-users spawner (data_dir is private to the hub)
        and <data_dir>/groups with the others.""",
    )
    slack = Bool(
        config=True,
        help="""Run the Slack app (oraculo.hub.slack) as a hub service at /services/slack/:
        linked Slack users ask the assistant in a DM or channel. Needs
        ORACULO_SLACK_SIGNING_SECRET and ORACULO_SLACK_BOT_TOKEN (ORACULO_SLACK_API_URL points
        it at another Web API). Default on when ORACULO_SLACK_SIGNING_SECRET is set.""",
    )
    slack_port = Int(
        config=True, help="Port of the Slack app service. Default ORACULO_SLACK_PORT or 8003."
    )
    docs_dir = Unicode(
        config=True,
        help="""The built docs site (`mkdocs build` of docs/, which ./dev.sh does) that the hub
        serves to everyone, signed in or not, at /services/docs/. Default ORACULO_DOCS_DIR,
        else build/docs-site in this checkout. No site there (or ""): no docs service.""",
    )
    docs_port = Int(
        config=True,
        help="Port of the docs service (127.0.0.1). Default ORACULO_DOCS_PORT, else a free one.",
    )
    singleuser_extra_args = List(
        Unicode(), config=True, help="Extra command-line arguments for every user server."
    )
    extra_environment = Dict(config=True, help="Extra environment variables for every user server.")

    @default("ip")
    def _default_ip(self) -> str:
        return os.environ.get("ORACULO_IP", "127.0.0.1")

    @default("port")
    def _default_port(self) -> int:
        return _env_int("ORACULO_PORT", 8000)

    @default("hub_port")
    def _default_hub_port(self) -> int:
        return _env_int("ORACULO_HUB_PORT", 8081)

    @default("hub_ip")
    def _default_hub_ip(self) -> str:
        chosen = os.environ.get("ORACULO_HUB_IP", "")
        if chosen:
            return chosen
        if self.spawner == "docker":
            bridge = docker_bridge_address()
            if bridge is None:
                raise TraitError(
                    "the docker spawner needs the hub's API where containers reach it: Docker's "
                    "bridge (docker0) has no IPv4 address here; start dockerd or set "
                    "c.OraculoHub.hub_ip"
                )
            return bridge
        return "127.0.0.1"

    @default("proxy_api_port")
    def _default_proxy_api_port(self) -> int:
        return _env_int("ORACULO_PROXY_API_PORT", 8001)

    @default("docs_dir")
    def _default_docs_dir(self) -> str:
        return os.environ.get("ORACULO_DOCS_DIR") or str(REPO_ROOT / "build" / "docs-site")

    @default("docs_port")
    def _default_docs_port(self) -> int:
        return _env_int("ORACULO_DOCS_PORT", 0) or free_port()

    @default("models_port")
    def _default_models_port(self) -> int:
        return _env_int("ORACULO_MODELS_PORT", 8002)

    @default("dashboard_port")
    def _default_dashboard_port(self) -> int:
        return _env_int("ORACULO_DASHBOARD_PORT", 8003)

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return os.path.abspath(os.environ.get("ORACULO_DATA_DIR", ".data"))

    @default("db_url")
    def _default_db_url(self) -> str:
        return os.environ.get("ORACULO_DB_URL") or f"sqlite:///{self.data_dir}/jupyterhub.sqlite"

    @validate("db_url")
    def _validate_db_url(self, proposal: Any) -> str:
        return sqlalchemy_url(str(proposal.value))

    @default("usage_db_url")
    def _default_usage_db_url(self) -> str:
        return shared_usage_url(self.db_url, os.environ.get("ORACULO_USAGE_DB_URL", ""))

    @default("spawner")
    def _default_spawner(self) -> str:
        # As root, users get OS accounts of their own (as The Littlest JupyterHub does).
        return os.environ.get("ORACULO_SPAWNER") or (
            "system-users" if os.geteuid() == 0 else "process"
        )

    @default("allow_root_process_spawner")
    def _default_allow_root_process_spawner(self) -> bool:
        return os.environ.get("ORACULO_ALLOW_ROOT_PROCESS_SPAWNER", "0") == "1"

    def check_spawner(self) -> None:
        """Refuse the `process` spawner in a root hub unless the operator allowed it, and then
        say loudly what it means."""
        if self.spawner != "process" or os.geteuid() != 0:
            return
        if not self.allow_root_process_spawner:
            raise RuntimeError(
                "Refusing the `process` spawner in a hub running as root: every user's code "
                "would run as root. Use the default `system-users` spawner (an OS account per "
                "user), or set c.OraculoHub.allow_root_process_spawner = True "
                "(ORACULO_ALLOW_ROOT_PROCESS_SPAWNER=1) on a machine only you use."
            )
        self.log.warning(
            "!!! The `process` spawner in a hub running as root: EVERY USER'S CODE RUNS AS "
            "ROOT. Any user can read every other user's files, the hub's secrets and anything "
            "else on this machine. Allowed by allow_root_process_spawner; use `system-users` "
            "where more than one person signs in. !!!"
        )

    @default("authenticator")
    def _default_authenticator(self) -> str:
        return os.environ.get("ORACULO_AUTHENTICATOR", "native")

    @default("admin_users")
    def _default_admin_users(self) -> set[str]:
        # `admin` is the account the native authenticator makes on first start; with an
        # outside provider it would be whoever holds that name there.
        names = os.environ.get(
            "ORACULO_ADMIN_USERS", "admin" if self.authenticator == "native" else ""
        )
        return {n.strip() for n in names.split(",") if n.strip()}

    @default("instructors_group")
    def _default_instructors_group(self) -> str:
        return os.environ.get("ORACULO_INSTRUCTORS_GROUP", "instructors")

    @default("open_signup")
    def _default_open_signup(self) -> bool:
        return os.environ.get("ORACULO_OPEN_SIGNUP", "0") == "1"

    @default("models_service")
    def _default_models_service(self) -> bool:
        return os.environ.get("ORACULO_MODELS_SERVICE", "1") != "0"

    @default("stores_service")
    def _default_stores_service(self) -> bool:
        return os.environ.get("ORACULO_STORES_SERVICE", "1") != "0"

    @default("stores_port")
    def _default_stores_port(self) -> int:
        return _env_int("ORACULO_STORES_PORT", 8004)

    @default("slack")
    def _default_slack(self) -> bool:
        return bool(os.environ.get("ORACULO_SLACK_SIGNING_SECRET"))

    @default("slack_port")
    def _default_slack_port(self) -> int:
        return _env_int("ORACULO_SLACK_PORT", 8003)

    @default("cull_idle_timeout")
    def _default_cull_idle_timeout(self) -> int:
        return _env_int("ORACULO_CULL_IDLE_TIMEOUT", 3600)

    @default("kernel_cull_idle_timeout")
    def _default_kernel_cull_idle_timeout(self) -> int:
        return _env_int("ORACULO_KERNEL_CULL_IDLE_TIMEOUT", 3600)

    @default("concurrent_starts")
    def _default_concurrent_starts(self) -> int:
        return max(0, _env_int("ORACULO_CONCURRENT_STARTS", max(2, 2 * (os.cpu_count() or 1))))

    @default("kernel_nice")
    def _default_kernel_nice(self) -> int:
        return _env_int("ORACULO_KERNEL_NICE", 10)

    @validate("kernel_nice")
    def _valid_kernel_nice(self, proposal: Any) -> int:
        nice = int(proposal["value"])
        if not 0 <= nice <= 19:
            raise TraitError(f"kernel_nice must be 0-19, not {nice}")
        return nice

    @default("malloc_arena_max")
    def _default_malloc_arena_max(self) -> int:
        return _env_int("ORACULO_MALLOC_ARENA_MAX", 0)

    @default("group_folders")
    def _default_group_folders(self) -> bool:
        return os.environ.get("ORACULO_GROUP_FOLDERS", "1") != "0"

    @default("groups_dir")
    def _default_groups_dir(self) -> str:
        explicit = os.environ.get("ORACULO_GROUPS_DIR")
        if explicit:
            return os.path.abspath(explicit)
        if self.spawner == "system-users":
            # Other OS accounts must traverse every folder above it; data_dir is 0700.
            return "/srv/oraculo/groups"
        return os.path.join(self.data_dir, "groups")

    @validate("spawner")
    def _validate_spawner(self, proposal: Any) -> str:
        if proposal.value not in SPAWNERS:
            raise TraitError(
                f"OraculoHub.spawner must be one of {sorted(SPAWNERS)}, not {proposal.value!r}"
            )
        return str(proposal.value)

    @property
    def public_url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def proxy_command(self) -> list[str]:
        local = REPO_ROOT / "node_modules" / ".bin" / "configurable-http-proxy"
        if local.exists():
            return [str(local)]
        found = shutil.which("configurable-http-proxy")
        return [found or "configurable-http-proxy"]

    def roles(self) -> list[dict[str, Any]]:
        roles: list[dict[str, Any]] = [
            {
                "name": "user",
                "scopes": [
                    "self",
                    "access:services!service=models",
                    "access:services!service=stores",
                ],
            },
            {
                "name": "oraculo-admin",
                "description": "Oráculo administration beyond JupyterHub's admin role.",
                # and the operator's dashboard (admins reach every service anyway)
                "scopes": [*CUSTOM_SCOPES, f"access:services!service={DASHBOARD}"],
                "users": sorted(self.admin_users),
            },
        ]
        if self.instructors_group:
            roles.append(
                {
                    "name": "oraculo-instructors",
                    "description": "May make cohorts and becomes their instructor.",
                    "scopes": ["custom:oraculo:cohorts:create"],
                    "groups": [self.instructors_group],
                }
            )
        if self.slack:
            # every user may open the Slack app's link and settings pages (hub OAuth)
            roles[0]["scopes"].append("access:services!service=slack")
            # asks a linked user's own server (chat; execute only where the user allowed it)
            roles.append(
                {"name": "slack", "scopes": ["access:servers", "read:users"], "services": ["slack"]}
            )
        if self.models_service:
            # cohort AI policies (oraculo.models.cohorts): every group's members and properties
            roles.append(
                {
                    "name": "oraculo-models",
                    "description": "The model service reads cohorts' members and AI policies.",
                    "scopes": ["list:groups", "read:groups"],
                    "services": ["models"],
                }
            )
        if self.cull_idle_timeout:
            roles.append(
                {
                    "name": "idle-culler",
                    "scopes": [
                        "list:users",
                        "read:users:activity",
                        "read:servers",
                        "delete:servers",
                    ],
                    "services": ["idle-culler"],
                }
            )
        return roles

    def models_url(self) -> str:
        """Where the model service listens: the hub's own API address, host-internal."""
        return f"http://{self.hub_ip}:{self.models_port}"

    def stores_url(self) -> str:
        """Where the store service listens: beside the model service. Servers call it there
        directly (not through the proxy): memory search is on the chat's critical path."""
        return f"http://{self.hub_ip}:{self.stores_port}"

    def services(self) -> list[dict[str, Any]]:
        services: list[dict[str, Any]] = []
        if self.models_service:
            command = [sys.executable, "-m", "oraculo.models"]
            if self.models_config_file:
                command += ["--config-file", self.models_config_file]
            services.append(
                {
                    "name": "models",
                    "url": self.models_url(),
                    "command": command,
                    "environment": {
                        "ORACULO_DATA_DIR": self.data_dir,
                        "HF_HUB_OFFLINE": "1",
                        "TRANSFORMERS_OFFLINE": "1",
                        **(
                            {"ORACULO_USAGE_DB_URL": self.usage_db_url} if self.usage_db_url else {}
                        ),
                    },
                    "oauth_no_confirm": True,
                    # its root page tells operators about the dashboard (a token that may not
                    # read everyone's usage never carries the scope)
                    "oauth_client_allowed_scopes": ["custom:oraculo:usage:read-all"],
                }
            )
            services.append(
                {
                    "name": DASHBOARD,
                    "url": f"http://127.0.0.1:{self.dashboard_port}",
                    "command": [sys.executable, "-m", "oraculo.hub.dashboard"],
                    "environment": {
                        "ORACULO_MODELS_API_URL": (
                            f"http://127.0.0.1:{self.models_port}/services/models/"
                        ),
                    },
                    "oauth_no_confirm": True,
                    # the viewer's token, which the dashboard reads and acts with: only what the
                    # viewer holds of these (the hub's Services menu shows the link only to
                    # those who may open it)
                    "oauth_client_allowed_scopes": DASHBOARD_OAUTH_SCOPES,
                }
            )
        if self.stores_service:
            services.append(
                {
                    "name": "stores",
                    "url": self.stores_url(),
                    "command": [sys.executable, "-m", "oraculo.stores"],
                    "environment": {"ORACULO_DATA_DIR": self.data_dir},
                    # an API for servers, with no page: kept out of the hub's Services menu
                    "display": False,
                }
            )
        if self.slack:
            slack_env = {
                k: os.environ[k]
                for k in (
                    "ORACULO_SLACK_SIGNING_SECRET",
                    "ORACULO_SLACK_BOT_TOKEN",
                    "ORACULO_SLACK_API_URL",
                )
                if k in os.environ
            }
            services.append(
                {
                    "name": "slack",
                    "url": f"http://127.0.0.1:{self.slack_port}",
                    "command": [sys.executable, "-m", "oraculo.hub.slack"],
                    "environment": {
                        "ORACULO_DATA_DIR": self.data_dir,
                        "ORACULO_PUBLIC_URL": self.public_url,
                        **slack_env,
                    },
                    "oauth_no_confirm": True,
                }
            )
        if self.docs_dir and os.path.isfile(os.path.join(self.docs_dir, "index.html")):
            services.append(
                {
                    "name": "docs",
                    "url": f"http://127.0.0.1:{self.docs_port}",
                    "command": [sys.executable, "-m", "oraculo.hub.docs", self.docs_dir],
                    "display": True,  # in the hub's Services menu
                }
            )
        if self.cull_idle_timeout:
            services.append(
                {
                    "name": "idle-culler",
                    "command": [
                        sys.executable,
                        "-m",
                        "oraculo.hub.culler",
                        f"--timeout={self.cull_idle_timeout}",
                    ],
                }
            )
        return services

    def kernel_culling_args(self) -> list[str]:
        """jupyter_server's own idle-kernel culling, as ``kernel_cull_idle_timeout`` says."""
        if not self.kernel_cull_idle_timeout:
            return []
        return [
            f"--MappingKernelManager.cull_idle_timeout={self.kernel_cull_idle_timeout}",
            f"--MappingKernelManager.cull_interval={self.kernel_cull_interval}",
            "--MappingKernelManager.cull_connected=False",
            "--MappingKernelManager.cull_busy=False",
        ]

    def singleuser_args(self) -> list[str]:
        # Extensions come with the environment or image: JupyterLab's PyPI extension manager
        # would pip-install into it (the shared one, in process mode) from the internet.
        args = [
            "--LabApp.extension_manager=readonly",
            *self.kernel_culling_args(),
            *self.singleuser_extra_args,
        ]
        if self.spawner == "process" and os.geteuid() == 0:
            # Every server runs as the hub's account; as root, Jupyter must be told it may.
            args.append("--ServerApp.allow_root=True")
        return args

    def apply(self, c: Config) -> Config:
        """Write the JupyterHub configuration these settings imply into ``c``."""
        self.check_spawner()
        os.makedirs(self.data_dir, 0o700, exist_ok=True)
        os.environ.setdefault("ORACULO_DATA_DIR", self.data_dir)

        c.JupyterHub.bind_url = self.public_url
        c.JupyterHub.hub_ip = self.hub_ip
        c.JupyterHub.hub_port = self.hub_port
        c.JupyterHub.db_url = self.db_url
        c.JupyterHub.cookie_secret_file = os.path.join(self.data_dir, "jupyterhub_cookie_secret")
        c.JupyterHub.pid_file = os.path.join(self.data_dir, "jupyterhub.pid")
        c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{self.proxy_api_port}"
        c.ConfigurableHTTPProxy.command = self.proxy_command()
        c.ConfigurableHTTPProxy.pid_file = os.path.join(self.data_dir, "proxy.pid")

        c.JupyterHub.authenticator_class = AUTHENTICATORS.get(
            self.authenticator, self.authenticator
        )
        c.Authenticator.admin_users = set(self.admin_users)
        if self.authenticator == "native":
            import nativeauthenticator

            templates = os.path.join(os.path.dirname(nativeauthenticator.__file__), "templates")
            c.JupyterHub.template_paths = [templates]
            c.NativeAuthenticator.open_signup = self.open_signup
            c.NativeAuthenticator.check_common_password = True
            c.NativeAuthenticator.minimum_password_length = 10
            c.NativeAuthenticator.allowed_failed_logins = 5
            c.NativeAuthenticator.seconds_before_next_try = 60

        c.JupyterHub.spawner_class = SPAWNERS[self.spawner]
        if self.spawner == "docker":  # the image's command, in the image's Python
            c.DockerSpawner.cmd = None  # (DockerSpawner refuses an empty list)
        else:
            c.Spawner.cmd = [sys.executable, "-m", "oraculo.singleuser"]
        c.Spawner.args = self.singleuser_args()
        c.Spawner.default_url = "/lab"
        local = self.spawner in ("process", "system-users")
        c.Spawner.concurrent_starts = self.concurrent_starts if local else 0
        # a spawn's start includes its wait for a turn
        c.Spawner.start_timeout = 300 if local and self.concurrent_starts else 120
        c.Spawner.http_timeout = 90
        c.Spawner.server_token_scopes = SERVER_TOKEN_SCOPES
        environment: dict[str, str] = {}
        if self.models_service:
            # containers cannot reach the public proxy on the host's 127.0.0.1: they call the
            # service where it listens, on the bridge (its hub-token check is the same there)
            base = self.models_url() if self.spawner == "docker" else self.public_url
            environment["ORACULO_MODELS_URL"] = f"{base}/services/models/"
        if self.stores_service:
            environment["ORACULO_STORES_URL"] = f"{self.stores_url()}/services/stores/"
        if self.malloc_arena_max:
            environment["MALLOC_ARENA_MAX"] = str(self.malloc_arena_max)
        if self.kernel_nice:
            environment["ORACULO_KERNEL_NICE"] = str(self.kernel_nice)
        environment.update(self.extra_environment)
        c.Spawner.environment = environment
        c.GroupFolders.enabled = self.group_folders
        c.GroupFolders.root = self.groups_dir
        c.JupyterHub.extra_handlers = list(RELEASE_HANDLERS)  # maintainers replace releases

        c.JupyterHub.custom_scopes = CUSTOM_SCOPES
        c.JupyterHub.load_roles = self.roles()
        operators.install()  # admins made on the admin page get oraculo-admin too
        c.JupyterHub.services = self.services()
        return c
