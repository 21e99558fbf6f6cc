"""The docker spawner, checked for what it asks Docker for.

This machine has no Docker daemon, so :class:`FakeDockerAPI` stands in for the daemon at the
edge: it is docker-py's real ``APIClient`` (which builds and validates the host config) with
the calls that would go over the socket answered locally and recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import docker
import pytest
import requests
from jupyterhub.objects import Hub, Server
from traitlets.config import Config

from oraculo.hub import gpus
from oraculo.hub.spawners import OraculoDockerSpawner


class FakeDockerAPI(docker.APIClient):
    """docker-py's client with its daemon calls answered in memory."""

    def __init__(self) -> None:
        super().__init__(base_url="unix:///nonexistent.sock", version="1.45")
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.containers: dict[str, dict[str, Any]] = {}

    def inspect_image(self, image: str) -> dict[str, Any]:
        self.calls.append(("inspect_image", (image,), {}))
        # What deploy/docker/Dockerfile declares.
        return {"Id": "sha256:feed", "Config": {"Cmd": ["jupyterhub-singleuser"]}}

    def inspect_container(self, container: str) -> dict[str, Any]:
        self.calls.append(("inspect_container", (container,), {}))
        for cid, c in self.containers.items():
            if container in (cid, c["name"]):
                return {
                    "Id": cid,
                    "Name": c["name"],
                    "State": {"Running": c["running"]},
                    "NetworkSettings": {
                        "Ports": {"8888/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32768"}]}
                    },
                }
        response = requests.Response()
        response.status_code = 404
        raise docker.errors.NotFound(f"No such container: {container}", response=response)

    def create_container(self, **kwargs: Any) -> dict[str, str]:
        self.calls.append(("create_container", (), kwargs))
        cid = f"c{len(self.containers):063d}"
        self.containers[cid] = {"name": kwargs["name"], "running": False, "create": kwargs}
        return {"Id": cid}

    def port(self, container: str, private_port: int) -> list[dict[str, str]]:
        self.calls.append(("port", (container, private_port), {}))
        return [{"HostIp": "127.0.0.1", "HostPort": "32768"}]

    def start(self, container: str, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self.calls.append(("start", (container,), {}))
        self.containers[container]["running"] = True

    def stop(self, container: str, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self.calls.append(("stop", (container,), {}))
        self.containers[container]["running"] = False

    def remove_container(self, container: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("remove_container", (container,), {}))
        self.containers.pop(container, None)


@dataclass
class HubUser:
    """What a spawner reads of JupyterHub's user wrapper."""

    name: str
    id: int = 1
    url: str = ""
    admin: bool = False
    server: Server = field(default_factory=Server)
    spawners: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.url = f"/user/{self.name}/"
        self.server = Server(base_url=self.url)


@pytest.fixture
def fake_docker(monkeypatch: pytest.MonkeyPatch) -> FakeDockerAPI:
    client = FakeDockerAPI()
    monkeypatch.setattr(OraculoDockerSpawner, "_client", client)
    monkeypatch.setattr(gpus, "_allocator", None)
    return client


def make_spawner(name: str, config: Config) -> OraculoDockerSpawner:
    user = HubUser(name)
    hub = Hub(ip="127.0.0.1", port=8081, base_url="/hub/")
    return OraculoDockerSpawner(
        user=user,
        hub=hub,
        config=config,
        api_token=f"token-{name}",
        oauth_client_id=f"jupyterhub-user-{name}",
        server=user.server,
    )


async def test_container_gets_image_home_volume_and_gpu(fake_docker: FakeDockerAPI) -> None:
    config = Config()
    config.GpuAllocator.gpu_ids = ["0", "1"]
    spawners = [make_spawner(n, config) for n in ("ada", "grace", "linus")]
    for s in spawners:
        assert await s.start() == ("127.0.0.1", 32768)

    creates = [kw for call, _, kw in fake_docker.calls if call == "create_container"]
    assert [kw["name"] for kw in creates] == ["jupyter-ada", "jupyter-grace", "jupyter-linus"]
    ada = creates[0]
    assert ada["image"] == "oraculo/singleuser:latest"
    assert ada["command"][0] == "jupyterhub-singleuser"
    assert ada["environment"]["JUPYTERHUB_USER"] == "ada"
    assert ada["environment"]["JUPYTERHUB_API_TOKEN"] == "token-ada"
    host = ada["host_config"]
    assert host["Binds"] == ["oraculo-home-ada:/home/jovyan:rw"]
    assert host["AutoRemove"] is True
    # One GPU each by device request, round robin over the two cards.
    requested = [kw["host_config"]["DeviceRequests"] for kw in creates]
    assert [r[0]["DeviceIDs"] for r in requested] == [["0"], ["1"], ["0"]]
    assert requested[0][0]["Capabilities"] == [["gpu"]]
    assert requested[0][0]["Driver"] == "nvidia"
    # Inside the container the one card it was given is device 0.
    assert [kw["environment"]["CUDA_VISIBLE_DEVICES"] for kw in creates] == ["0", "0", "0"]
    assert [kw["environment"]["ORACULO_GPU"] for kw in creates] == ["0", "1", "0"]

    await spawners[0].stop()
    assert gpus.shared_allocator(spawners[1]).assignments() == {"grace/": "1", "linus/": "0"}


async def test_no_gpu_no_device_request(fake_docker: FakeDockerAPI) -> None:
    config = Config()
    config.GpuAllocator.gpu_ids = []
    config.DockerSpawner.image = "registry.example.org/oraculo/singleuser:0.1.0"
    await make_spawner("ada", config).start()
    [(_, _, create)] = [c for c in fake_docker.calls if c[0] == "create_container"]
    assert create["image"] == "registry.example.org/oraculo/singleuser:0.1.0"
    assert "DeviceRequests" not in create["host_config"]
    assert create["environment"]["CUDA_VISIBLE_DEVICES"] == ""
