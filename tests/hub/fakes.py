"""Stand-ins at the edge for the hub tests: a Docker daemon this machine does not have.

:class:`FakeDockerAPI` is docker-py's real ``APIClient`` (which builds and validates the host
config) with the calls that would go over the socket answered locally and recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import requests
from jupyterhub.objects import Hub, Server
from traitlets.config import Config

from oraculo.hub.spawners import OraculoDockerSpawner


def dockerfile_cmd() -> list[str]:
    """The ``CMD`` that deploy/docker/Dockerfile declares (exec form), as the image reports it."""
    dockerfile = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "Dockerfile"
    line = next(x for x in dockerfile.read_text().splitlines() if x.startswith("CMD "))
    cmd: list[str] = json.loads(line[4:])
    return cmd


class FakeDockerAPI(docker.APIClient):
    """docker-py's client with its daemon calls answered in memory."""

    def __init__(self) -> None:
        super().__init__(base_url="unix:///nonexistent.sock", version="1.45")
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.containers: dict[str, dict[str, Any]] = {}

    def inspect_image(self, image: str) -> dict[str, Any]:
        self.calls.append(("inspect_image", (image,), {}))
        return {"Id": "sha256:feed", "Config": {"Cmd": dockerfile_cmd()}}

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
class HubGroup:
    """What a spawner reads of a JupyterHub group."""

    name: str


@dataclass
class HubUser:
    """What a spawner reads of JupyterHub's user wrapper."""

    name: str
    id: int = 1
    url: str = ""
    admin: bool = False
    server: Server = field(default_factory=Server)
    spawners: dict[str, Any] = field(default_factory=dict)
    groups: list[HubGroup] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.url = f"/user/{self.name}/"
        self.server = Server(base_url=self.url)


def make_spawner(name: str, config: Config, groups: tuple[str, ...] = ()) -> OraculoDockerSpawner:
    user = HubUser(name, groups=[HubGroup(g) for g in groups])
    hub = Hub(ip="127.0.0.1", port=8081, base_url="/hub/")
    return OraculoDockerSpawner(
        user=user,
        hub=hub,
        config=config,
        api_token=f"token-{name}",
        oauth_client_id=f"jupyterhub-user-{name}",
        server=user.server,
    )
