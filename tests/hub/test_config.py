"""OraculoHub turns a few operator settings into the whole JupyterHub configuration."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest
from traitlets import TraitError
from traitlets.config import Config

from oraculo.hub.config import (
    CUSTOM_SCOPES,
    SERVER_TOKEN_SCOPES,
    OraculoHub,
    docker_bridge_address,
)
from oraculo.kernels.credentials import KERNEL_TOKEN_SCOPES
from tests.harness import HubProcess


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> None:
    for name in list(os.environ):
        if name.startswith("ORACULO_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def build(**settings: object) -> Config:
    c = Config()
    for k, v in settings.items():
        setattr(c.OraculoHub, k, v)
    return OraculoHub(config=c).apply(c)


def test_embedded_defaults(clean_env: None, tmp_path: os.PathLike[str]) -> None:
    c = build()
    data = os.path.join(str(tmp_path), ".data")
    assert c.JupyterHub.bind_url == "http://127.0.0.1:8000"
    assert c.JupyterHub.hub_ip == "127.0.0.1"
    assert c.JupyterHub.db_url == f"sqlite:///{data}/jupyterhub.sqlite"
    assert c.JupyterHub.authenticator_class == "oraculo-native"
    # As root, users get OS accounts of their own; otherwise everyone is the hub's account.
    root = os.geteuid() == 0
    assert c.JupyterHub.spawner_class == ("oraculo-system-users" if root else "oraculo-process")
    assert c.Authenticator.admin_users == {"admin"}
    assert c.NativeAuthenticator.open_signup is False
    assert c.Spawner.default_url == "/lab"
    assert c.Spawner.cmd == [sys.executable, "-m", "oraculo.singleuser"]
    assert c.Spawner.args[0] == "--LabApp.extension_manager=readonly"
    assert c.Spawner.server_token_scopes == SERVER_TOKEN_SCOPES
    assert c.Spawner.environment["ORACULO_MODELS_URL"] == "http://127.0.0.1:8000/services/models/"
    # memories and the workspace index: straight to the store service, beside the hub's API
    assert c.Spawner.environment["ORACULO_STORES_URL"] == "http://127.0.0.1:8004/services/stores/"
    assert c.ConfigurableHTTPProxy.command[0].endswith("configurable-http-proxy")
    assert os.stat(data).st_mode & 0o777 == 0o700


def test_environment_overrides(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORACULO_PORT", "9000")
    monkeypatch.setenv("ORACULO_SPAWNER", "docker")
    monkeypatch.setenv("ORACULO_ADMIN_USERS", "ada, grace")
    monkeypatch.setenv("ORACULO_DB_URL", "postgresql://hub@db/hub")
    monkeypatch.setenv("ORACULO_HUB_IP", "10.1.2.3")
    c = build()
    assert c.JupyterHub.hub_ip == "10.1.2.3"
    assert c.JupyterHub.bind_url == "http://127.0.0.1:9000"
    assert c.JupyterHub.spawner_class == "oraculo-docker"
    # the image's own command and Python, never the hub's interpreter path
    assert c.DockerSpawner.cmd is None and "cmd" not in c.Spawner
    assert c.Authenticator.admin_users == {"ada", "grace"}
    assert c.JupyterHub.db_url == "postgresql://hub@db/hub"


def test_docker_hub_listens_where_containers_reach_it(clean_env: None) -> None:
    # Containers cannot reach the host's 127.0.0.1: with the docker spawner the hub's API listens
    # on Docker's bridge (./dev.sh test starts dockerd, so docker0 exists here).
    bridge = docker_bridge_address()
    assert bridge is not None, "docker0 has no IPv4 address: is dockerd running?"
    assert not bridge.startswith("127.")
    assert build(spawner="docker").JupyterHub.hub_ip == bridge
    assert build(spawner="docker", hub_ip="10.9.8.7").JupyterHub.hub_ip == "10.9.8.7"
    assert docker_bridge_address("oraculo-no-such-interface") is None


def test_config_beats_environment(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORACULO_SPAWNER", "docker")
    assert build(spawner="system-users").JupyterHub.spawner_class == "oraculo-system-users"


def test_unknown_spawner_is_refused(clean_env: None) -> None:
    with pytest.raises(TraitError, match="must be one of"):
        build(spawner="kubernetes-someday")


def test_other_authenticators_pass_through(clean_env: None) -> None:
    c = build(authenticator="github")
    assert c.JupyterHub.authenticator_class == "github"
    assert "template_paths" not in c.JupyterHub


def test_roles_scopes_and_services(clean_env: None) -> None:
    c = build()
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert "access:services!service=models" in roles["user"]["scopes"]
    assert roles["oraculo-admin"]["users"] == ["admin"]
    # and the operator's dashboard
    dashboard = "access:services!service=usage-dashboard"
    assert set(roles["oraculo-admin"]["scopes"]) == {*CUSTOM_SCOPES, dashboard}
    assert roles["idle-culler"]["services"] == ["idle-culler"]
    assert c.JupyterHub.custom_scopes == CUSTOM_SCOPES
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert services["models"]["command"] == [sys.executable, "-m", "oraculo.models"]
    assert services["models"]["environment"]["HF_HUB_OFFLINE"] == "1"
    stores = services["stores"]
    assert stores["command"] == [sys.executable, "-m", "oraculo.stores"]
    assert stores["url"] == "http://127.0.0.1:8004"
    assert stores["environment"]["ORACULO_DATA_DIR"].endswith(".data")
    assert stores["display"] is False  # no page: not in the hub's Services menu
    # a user's server reaches their store; a kernel's narrow token never does
    assert "access:services!service=stores" in roles["user"]["scopes"]
    assert "access:services!service=stores" in SERVER_TOKEN_SCOPES
    assert "access:services!service=stores" not in KERNEL_TOKEN_SCOPES
    # the dashboard reads and acts with the viewer's own OAuth token: never more than this
    board = services["usage-dashboard"]
    assert board["command"] == [sys.executable, "-m", "oraculo.hub.dashboard"]
    assert "custom:oraculo:usage:read-all" in board["oauth_client_allowed_scopes"]
    assert not {"admin:users", "access:servers", "tokens", "admin:servers"} & set(
        board["oauth_client_allowed_scopes"]
    )
    # Through our entry point, which restores SIGINT so the hub's shutdown need not wait on it.
    assert services["idle-culler"]["command"] == [
        sys.executable,
        "-m",
        "oraculo.hub.culler",
        "--timeout=3600",
    ]


def test_switches_turn_services_off(clean_env: None) -> None:
    c = build(models_service=False, stores_service=False, cull_idle_timeout=0, docs_dir="")
    assert c.JupyterHub.services == []
    assert "ORACULO_MODELS_URL" not in c.Spawner.environment
    assert "ORACULO_STORES_URL" not in c.Spawner.environment
    assert "idle-culler" not in {r["name"] for r in c.JupyterHub.load_roles}


def test_root_process_mode_allows_root(clean_env: None) -> None:
    args = build(spawner="process", allow_root_process_spawner=True).Spawner.args
    assert ("--ServerApp.allow_root=True" in args) == (os.geteuid() == 0)
    assert "--ServerApp.allow_root=True" not in build(spawner="system-users").Spawner.args


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a hub running as root")


@needs_root
def test_a_root_hub_refuses_the_process_spawner_unless_allowed(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(RuntimeError, match="Refusing the `process` spawner"):
        build(spawner="process")
    monkeypatch.setenv("ORACULO_SPAWNER", "process")
    with pytest.raises(RuntimeError, match="allow_root_process_spawner"):
        build()

    caplog.set_level(logging.WARNING)
    assert build(allow_root_process_spawner=True).JupyterHub.spawner_class == "oraculo-process"
    assert "EVERY USER'S CODE RUNS AS ROOT" in caplog.text
    caplog.clear()
    monkeypatch.setenv("ORACULO_ALLOW_ROOT_PROCESS_SPAWNER", "1")
    assert build().JupyterHub.spawner_class == "oraculo-process"
    assert "EVERY USER'S CODE RUNS AS ROOT" in caplog.text


@needs_root
async def test_a_root_hub_started_with_the_process_spawner(tmp_path: Path, hub: HubProcess) -> None:
    """A real hub: without the opt-in it does not start, and says why; with it (as the test
    harness runs the suite's hub), it starts and warns in its log."""
    refused = HubProcess(tmp_path / "refused", env={"ORACULO_ALLOW_ROOT_PROCESS_SPAWNER": "0"})
    with pytest.raises(RuntimeError, match="hub exited") as info:
        await refused.start()
    assert "Refusing the `process` spawner in a hub running as root" in str(info.value)

    assert hub.spawner == "process"
    assert "EVERY USER'S CODE RUNS AS ROOT" in hub.log_path.read_text()


def test_the_slack_app_runs_once_its_signing_secret_is_set(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = build()
    assert "slack" not in {s["name"] for s in c.JupyterHub.services}
    monkeypatch.setenv("ORACULO_SLACK_SIGNING_SECRET", "s3cret")
    monkeypatch.setenv("ORACULO_SLACK_BOT_TOKEN", "xoxb-1")
    monkeypatch.setenv("ORACULO_SLACK_PORT", "8123")
    c = build()
    slack = next(s for s in c.JupyterHub.services if s["name"] == "slack")
    assert slack["url"] == "http://127.0.0.1:8123"
    assert slack["command"] == [sys.executable, "-m", "oraculo.hub.slack"]
    assert slack["environment"]["ORACULO_SLACK_SIGNING_SECRET"] == "s3cret"
    assert "ORACULO_SLACK_API_URL" not in slack["environment"]  # Slack's own, by default
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["slack"]["scopes"] == ["access:servers", "read:users"]
    assert "access:services!service=slack" in roles["user"]["scopes"]
    assert "slack" not in {s["name"] for s in build(slack=False).JupyterHub.services}


def test_the_docs_service_serves_a_built_site(clean_env: None, tmp_path: os.PathLike[str]) -> None:
    site = os.path.join(tmp_path, "site")
    assert "docs" not in {s["name"] for s in build(docs_dir=site).JupyterHub.services}
    os.makedirs(site)
    with open(os.path.join(site, "index.html"), "w") as f:
        f.write("<h1>docs</h1>")
    docs = next(s for s in build(docs_dir=site).JupyterHub.services if s["name"] == "docs")
    assert docs["command"] == [sys.executable, "-m", "oraculo.hub.docs", site]
    assert docs["url"].startswith("http://127.0.0.1:")


def test_malloc_arena_max_reaches_user_servers_only_when_set(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "MALLOC_ARENA_MAX" not in build().Spawner.environment  # glibc's own default
    assert build(malloc_arena_max=2).Spawner.environment["MALLOC_ARENA_MAX"] == "2"
    monkeypatch.setenv("ORACULO_MALLOC_ARENA_MAX", "4")
    assert build().Spawner.environment["MALLOC_ARENA_MAX"] == "4"


def test_local_servers_start_a_few_at_a_time_unless_configured(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = build()
    assert c.Spawner.concurrent_starts == max(2, 2 * (os.cpu_count() or 1))
    assert c.Spawner.start_timeout == 300  # a spawn's start includes its wait for a turn
    c = build(concurrent_starts=0)
    assert (c.Spawner.concurrent_starts, c.Spawner.start_timeout) == (0, 120)
    monkeypatch.setenv("ORACULO_CONCURRENT_STARTS", "3")
    assert build().Spawner.concurrent_starts == 3
    # containers start their servers after the spawner's start returns: no queue there
    assert build(spawner="docker").Spawner.concurrent_starts == 0


def test_users_kernels_run_at_nice_10_unless_configured(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert build().Spawner.environment["ORACULO_KERNEL_NICE"] == "10"
    assert "ORACULO_KERNEL_NICE" not in build(kernel_nice=0).Spawner.environment
    monkeypatch.setenv("ORACULO_KERNEL_NICE", "15")
    assert build().Spawner.environment["ORACULO_KERNEL_NICE"] == "15"
    with pytest.raises(TraitError, match="0-19"):
        build(kernel_nice=-5)  # a higher priority than the hub's is never handed out


def test_idle_kernels_are_culled_after_an_hour_unless_configured(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = build().Spawner.args
    assert "--MappingKernelManager.cull_idle_timeout=3600" in args
    assert "--MappingKernelManager.cull_interval=300" in args
    assert "--MappingKernelManager.cull_connected=False" in args  # an open notebook keeps it
    monkeypatch.setenv("ORACULO_KERNEL_CULL_IDLE_TIMEOUT", "0")
    assert not [a for a in build().Spawner.args if "cull" in a]
