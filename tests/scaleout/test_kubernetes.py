"""What KubeSpawner would run for a user, rendered from ``deploy/kubernetes/values.yaml``.

No cluster is reachable here, but KubeSpawner builds its pod manifest without one. The hub
configuration is what the chart would produce from this values file: the chart's mapping of
``singleuser`` (image, memory, CPU, profiles) to ``KubeSpawner`` settings, then our
``hub.extraConfig``, executed as written. The pod spec must carry the same hooks as a local
server: resource limits, sandbox limits by group, only the user's group folders as volumes, a GPU
as a resource request in the GPU profile, and an environment with no credential in it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from kubernetes_asyncio.config import kube_config
from traitlets.config import Config

from oraculo.hub.kube import GPU_RESOURCE, TOKEN_KEY, OraculoKubeSpawner
from oraculo.kernels.limits import LIMITS_ENV
from tests.harness import REPO

VALUES = REPO / "deploy" / "kubernetes" / "values.yaml"
MODELS = REPO / "deploy" / "kubernetes" / "models.yaml"
TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def chart_config(values: dict[str, Any]) -> Config:
    """The hub configuration the chart makes from ``values`` (the parts these values use),
    then our extraConfig."""
    c = Config()
    single = values["singleuser"]
    c.KubeSpawner.image = f"{single['image']['name']}:{single['image']['tag']}"
    c.KubeSpawner.mem_limit = single["memory"]["limit"]
    c.KubeSpawner.mem_guarantee = single["memory"]["guarantee"]
    c.KubeSpawner.cpu_limit = float(single["cpu"]["limit"])
    c.KubeSpawner.cpu_guarantee = float(single["cpu"]["guarantee"])
    c.KubeSpawner.profile_list = single["profileList"]
    c.KubeSpawner.namespace = "oraculo"
    for name, snippet in values["hub"]["extraConfig"].items():
        exec(compile(snippet, f"values.yaml:hub.extraConfig.{name}", "exec"), {"c": c})
    return c


@pytest.fixture(scope="module")
def values(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    # KubeSpawner loads a client configuration when it is made; this one names a cluster that
    # is never contacted (nothing here talks to the API).
    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "none", "user": {"token": "unused"}}],
                "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
                "current-context": "none",
            }
        )
    )
    # (the client read $KUBECONFIG when it was imported: point its default there instead)
    before = kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(kubeconfig)
    try:
        yield dict(yaml.safe_load(VALUES.read_text()))
    finally:
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = before


async def render(values: dict[str, Any], name: str, groups: list[str], profile: str) -> Any:
    c = chart_config(values)
    assert c.JupyterHub.spawner_class == "oraculo-kubernetes"
    user = SimpleNamespace(
        name=name,
        id=7,
        url=f"/user/{name}/",
        escaped_name=name,
        groups=[SimpleNamespace(name=g) for g in groups],
    )
    hub = SimpleNamespace(
        public_host="",
        url="http://hub:8081/hub/",
        base_url="/hub/",
        api_url="http://hub:8081/hub/api",
    )
    spawner = OraculoKubeSpawner(_mock=True, config=c, user=user, hub=hub)
    spawner.api_token = TOKEN
    spawner.user_options = {"profile": profile}
    await spawner.load_user_options()
    await spawner.make_group_folders()
    await spawner.assign_gpu()
    return spawner, (await spawner.get_pod_manifest()).to_dict()


def container_env(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}


async def test_pod_carries_limits_group_folders_and_no_credential(values: dict[str, Any]) -> None:
    spawner, pod = await render(values, "ada", ["cohort-a", "staff"], "cpu")
    container = pod["spec"]["containers"][0]
    assert container["image"] == "registry.example.org/oraculo/singleuser:0.1.0"
    resources = container["resources"]
    assert resources["limits"] == {"cpu": 2.0, "memory": 3 * 2**30}  # the chart's 3G
    assert resources["requests"] == {"cpu": 0.25, "memory": 2**30}
    # the image's own command, with our arguments (an image's implicit command takes none)
    assert container["args"][:3] == ["python", "-m", "oraculo.singleuser"]
    assert "--LabApp.extension_manager=readonly" in container["args"]

    env = container_env(pod)
    # sandbox limits: the most generous of her groups (staff)
    limits = json.loads(env[LIMITS_ENV]["value"])
    assert limits["memory_mb"] == 8192 and limits["processes"] == 1024
    assert env["CUDA_VISIBLE_DEVICES"]["value"] == ""
    assert env["ORACULO_MODELS_URL"]["value"] == "http://proxy-public/services/models/"
    # group folders: only hers, each its own subPath of the one shared volume
    mounts = {m["mount_path"]: m for m in container["volume_mounts"]}
    assert mounts["/srv/oraculo/groups/cohort-a"]["sub_path"] == "cohort-a"
    assert mounts["/srv/oraculo/groups/staff"]["sub_path"] == "staff"
    assert not any("cohort-b" in p for p in mounts)
    assert env["ORACULO_SHARED_DIRS"]["value"].split(":") == [
        "/srv/oraculo/groups/cohort-a",
        "/srv/oraculo/groups/staff",
    ]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "oraculo-groups")
    claim = volume.get("persistent_volume_claim") or volume.get("persistentVolumeClaim")
    assert claim in (
        {"claim_name": "oraculo-groups", "read_only": None},
        {"claimName": "oraculo-groups"},
    )

    # no credential in the pod spec: the token is a reference to the server's own Secret
    for name in ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN"):
        assert env[name]["value"] is None
        ref = env[name]["value_from"]["secretKeyRef"]  # sent to the API as written
        assert ref == {"name": spawner.token_secret_name, "key": TOKEN_KEY}
    assert TOKEN not in json.dumps(pod, default=str)
    secret = spawner.token_secret()
    assert secret.metadata.name == spawner.token_secret_name
    assert secret.string_data == {TOKEN_KEY: TOKEN}
    # the narrow scopes the server's token gets (the kernel's is minted from it, narrower)
    assert "access:services!service=models" in spawner.server_token_scopes
    assert not any(s.startswith(("admin", "servers")) for s in spawner.server_token_scopes)


async def test_gpu_profile_requests_one_gpu(values: dict[str, Any]) -> None:
    _, pod = await render(values, "grace", ["cohort-a"], "gpu")
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources["limits"][GPU_RESOURCE] == "1"
    assert resources["requests"][GPU_RESOURCE] == "1"
    assert pod["spec"]["node_selector"] == {"nvidia.com/gpu.present": "true"}
    env = container_env(pod)
    assert "CUDA_VISIBLE_DEVICES" not in env  # the device plugin sets it to the pod's card
    limits = json.loads(env[LIMITS_ENV]["value"])
    assert limits["memory_mb"] == 2048  # not staff: the default


async def test_no_groups_no_group_volume(values: dict[str, Any]) -> None:
    _, pod = await render(values, "eve", [], "cpu")
    assert not any(v["name"] == "oraculo-groups" for v in pod["spec"]["volumes"] or [])
    assert "ORACULO_SHARED_DIRS" not in container_env(pod)


def test_model_service_deployment_matches_the_hub_service(values: dict[str, Any]) -> None:
    docs = list(yaml.safe_load_all(MODELS.read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    service = next(d for d in docs if d["kind"] == "Service")
    url = values["hub"]["services"]["models"]["url"]
    assert (
        url
        == f"http://{service['metadata']['name']}.oraculo.svc:{service['spec']['ports'][0]['port']}"
    )
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    for secret in ("JUPYTERHUB_API_TOKEN", "ORACULO_USAGE_DB_URL"):
        assert "secretKeyRef" in env[secret]["valueFrom"] and "value" not in env[secret]
    assert env["JUPYTERHUB_SERVICE_PREFIX"]["value"] == "/services/models/"


def test_values_keep_secrets_out(values: dict[str, Any]) -> None:
    text = VALUES.read_text() + Path(MODELS).read_text()
    assert "password:" not in text.replace("# password:", "")
    assert values["hub"]["db"]["url"].count(":") == 2  # user@host:port, no password
