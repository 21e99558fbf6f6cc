"""DockerSpawner against a real Docker daemon (Debian's docker.io; ``./dev.sh test`` starts it).

Two users sign in and get a container each, from an image made here (``docker_images.py``). In
ada's container code runs in her kernel, and the container has the limits we configured, her
home in a named volume that outlives the container, and her group's folder; bob's container has
none of ada's files, not her group's folder, and his token does not reach her server.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import ADMIN_PASSWORD, HubClient, HubProcess, User, new_user

from .docker_images import daemon_running, docker, ensure_user_image, host_mounts

# The first run on a machine makes the base image with debootstrap (3 min on a busy 2-core box).
pytestmark = [pytest.mark.root, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
async def docker_hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HubProcess]:
    if not daemon_running():
        pytest.fail("no Docker daemon: ./dev.sh test installs docker.io and starts dockerd")
    image = ensure_user_image()
    folder = tmp_path_factory.mktemp("docker-hub")
    config = folder / "jupyterhub_config.py"
    config.write_text(
        f"""from oraculo.hub.config import OraculoHub
c = get_config()  # noqa: F821
c.OraculoHub.spawner = "docker"
c.SandboxConfig.default_limits = {{"memory_mb": 512, "processes": 64}}
OraculoHub(config=c).apply(c)  # hub_ip: docker0's address, where containers reach the hub
c.DockerSpawner.image = {image!r}
c.DockerSpawner.mem_limit = "1G"
c.DockerSpawner.volumes = {{
    "oraculo-home-{{username}}": "/home/jovyan",
    **{host_mounts()!r},
}}
"""
    )
    hub = await HubProcess(folder, spawner="docker", config_file=config, models=True).start()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture(scope="module")
async def users(docker_hub: HubProcess) -> AsyncIterator[dict[str, User]]:
    suffix = uuid.uuid4().hex[:6]
    client = HubClient(docker_hub)
    ada = await new_user(client, f"ada{suffix}")
    bob = await new_user(client, f"bob{suffix}")
    admin = HubClient(docker_hub)
    await admin.login("admin", ADMIN_PASSWORD)
    token = await admin.token("admin")
    r = await admin.http.post(
        "/hub/api/groups/cohort",
        json={"users": [ada.name]},
        headers={"Authorization": f"token {token}"},
    )
    assert r.status_code == 201, r.text
    try:
        await ada.spawn(timeout=180)
        await bob.spawn(timeout=180)
        yield {"ada": ada, "bob": bob}
    finally:
        for u in (ada, bob):
            await u.client.aclose()
        await admin.aclose()
        await client.aclose()
        docker_hub.stop()  # stops (and removes) the containers
        for u in (ada, bob):
            subprocess.run(["docker", "volume", "rm", f"oraculo-home-{u.name}"], check=False)


def inspect(name: str) -> dict[str, Any]:
    return dict(json.loads(docker("inspect", f"jupyter-{name}").stdout)[0])


async def run(user: User, code: str) -> dict[str, Any]:
    kernel = await user.start_kernel()
    out = await user.execute(kernel, code, timeout=120)
    assert out["error"] is None, out
    return out


async def test_container_limits_home_and_group_folder(
    docker_hub: HubProcess, users: dict[str, User]
) -> None:
    ada = users["ada"]
    box = inspect(ada.name)
    assert box["Config"]["Image"].startswith("oraculo/singleuser")
    assert box["HostConfig"]["Memory"] == 2**30
    assert box["HostConfig"]["PidsLimit"] == 64 * 4 + 256  # room for 4 kernels at their limit
    assert box["HostConfig"]["NetworkMode"] == "bridge"
    mounts = {m["Destination"]: m for m in box["Mounts"]}
    assert mounts["/home/jovyan"]["Type"] == "volume"
    assert mounts["/home/jovyan"]["Name"] == f"oraculo-home-{ada.name}"
    group = str(docker_hub.data_dir / "groups" / "cohort")
    assert mounts[group]["RW"] is True
    assert all(not m["RW"] for d, m in mounts.items() if d not in ("/home/jovyan", group))

    out = await run(
        ada,
        "import os, pathlib\n"
        "pathlib.Path('~/note.txt').expanduser().write_text('ada was here')\n"
        f"pathlib.Path({group!r}, 'hello.txt').write_text('for the cohort')\n"
        "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "print(os.getuid(), os.environ['HOME'], len(pids))\n",
    )
    uid, home, processes = out["stdout"].split()
    assert uid == "1000" and home == "/home/jovyan"
    assert int(processes) < 20  # its own processes only: server, kernel, tini
    assert (Path(group) / "hello.txt").read_text() == "for the cohort"

    # the home outlives the container
    await ada.stop_server()
    await ada.spawn(timeout=180)
    again = await run(ada, "print(open('/home/jovyan/note.txt').read())")
    assert again["stdout"].strip() == "ada was here"


async def test_another_users_container_is_kept_apart(
    docker_hub: HubProcess, users: dict[str, User]
) -> None:
    ada, bob = users["ada"], users["bob"]
    group = str(docker_hub.data_dir / "groups" / "cohort")
    out = await run(
        bob,
        f"import os\nprint(os.path.exists({group!r}), os.path.exists('/home/jovyan/note.txt'))\n",
    )
    assert out["stdout"].split() == ["False", "False"]
    mounts = {m["Destination"] for m in inspect(bob.name)["Mounts"]}
    assert group not in mounts
    # bob's token does not reach ada's server
    async with httpx.AsyncClient(base_url=docker_hub.url, timeout=30) as http:
        r = await http.get(f"/user/{ada.name}/api/kernels", headers=bob.auth)
        assert r.status_code in (403, 404), r.status_code
        r = await http.get(f"/user/{ada.name}/api/v1/status", headers=bob.auth)
        assert r.status_code in (403, 404), r.status_code


async def test_a_containers_server_reaches_the_model_service(
    docker_hub: HubProcess, users: dict[str, User]
) -> None:
    # The server in the container calls the model service on the bridge, not on the host's
    # 127.0.0.1 (which inside the container is the container itself).
    ada = users["ada"]
    r = await ada.api(
        "POST",
        f"/user/{ada.name}/api/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 4,
            "temperature": 0,
        },
        timeout=120,
    )
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["choices"][0]["message"]["content"], reply
    assert reply["usage"]["completion_tokens"] >= 1


async def test_a_containers_memories_live_in_the_hubs_store_service(
    docker_hub: HubProcess, users: dict[str, User]
) -> None:
    # The server in the container reaches the store service on the bridge; the tables are in
    # the hub's data folder, outside every container, and another user's search finds nothing.
    ada, bob = users["ada"], users["bob"]
    memory = f"/user/{ada.name}/api/v1/memory"
    r = await ada.api("POST", memory, json={"key": "desk", "value": "Desk 7, third floor"})
    assert r.status_code == 201, r.text
    r = await ada.api("GET", memory, params={"q": "where is my desk?"}, timeout=60)
    assert r.status_code == 200 and r.json()["hits"][0]["key"] == "desk", r.text
    folder = docker_hub.data_dir / "stores" / ada.name
    assert {p.name for p in folder.iterdir()} == {"memories.lance", "passages.lance"}
    assert all(docker_hub.data_dir.as_posix() not in m["Source"] or "groups" in m["Source"]
               for m in inspect(ada.name)["Mounts"])  # fmt: skip
    out = await run(ada, "import os\nprint(os.path.exists('/home/jovyan/.oraculo/memory'))\n")
    assert out["stdout"].strip() == "False"
    r = await bob.api("GET", f"/user/{bob.name}/api/v1/memory", params={"q": "desk"}, timeout=60)
    assert r.status_code == 200 and r.json()["hits"] == [], r.text
