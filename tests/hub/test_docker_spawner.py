"""The docker spawner, checked for what it asks Docker for.

This machine has no Docker daemon, so :class:`~tests.hub.fakes.FakeDockerAPI` stands in for
the daemon at the edge (the ``fake_docker`` fixture).
"""

from __future__ import annotations

from traitlets.config import Config

from oraculo.hub import gpus
from tests.hub.fakes import FakeDockerAPI, make_spawner


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
    assert ada["command"][:3] == ["python", "-m", "oraculo.singleuser"]
    assert ada["environment"]["JUPYTERHUB_USER"] == "ada"
    assert ada["environment"]["JUPYTERHUB_API_TOKEN"] == "token-ada"
    host = ada["host_config"]
    assert host["Binds"] == ["oraculo-home-ada:/home/jovyan:rw"]
    assert host["AutoRemove"] is True
    # Each container has a network namespace of its own (Docker's bridge), not the host's;
    # its kernels listen on unix sockets inside it in any case (the oraculo-sandbox provisioner).
    assert host["NetworkMode"] == "bridge"
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
