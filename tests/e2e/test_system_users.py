"""system-users mode: each hub user's server and kernel run as an OS account of their own,
and no other account can read a user's files or listen to a user's kernel."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import stat
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets

from tests.harness import HubClient, HubProcess, User, execute_request, new_user

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
async def users(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[list[User]]:
    hub = await HubProcess(tmp_path_factory.mktemp("hub-sysusers"), spawner="system-users").start()
    client = HubClient(hub)
    names = [f"s{uuid.uuid4().hex[:7]}" for _ in range(2)]
    people: list[User] = []
    try:
        for name in names:
            people.append(await new_user(client, name))
        for person in people:
            await person.spawn()
        yield people
    finally:
        for person in people:
            await person.client.aclose()
        await client.aclose()
        hub.stop()
        for name in names:
            subprocess.run(["userdel", "--remove", f"jupyter-{name}"], capture_output=True)


async def test_each_user_has_an_account_and_a_private_home(users: list[User]) -> None:
    for user in users:
        entry = pwd.getpwnam(f"jupyter-{user.name}")
        assert entry.pw_uid >= 1000
        home = Path(entry.pw_dir)
        st = home.stat()
        assert stat.S_IMODE(st.st_mode) == 0o700
        assert st.st_uid == entry.pw_uid

        kernel = await user.start_kernel()
        out = await user.execute(
            kernel, "import os, pwd; print(pwd.getpwuid(os.getuid()).pw_name, os.getcwd())"
        )
        assert out["stdout"].split() == [entry.pw_name, entry.pw_dir]


async def test_a_kernel_cannot_read_another_users_home(users: list[User]) -> None:
    alice, bob = users
    bob_home = pwd.getpwnam(f"jupyter-{bob.name}").pw_dir
    secret = Path(bob_home) / "secret.txt"
    secret.write_text("bob's only")
    os.chown(secret, pwd.getpwnam(f"jupyter-{bob.name}").pw_uid, -1)

    kernel = await alice.start_kernel()
    for code in (f"os.listdir({bob_home!r})", f"open({str(secret)!r}).read()"):
        out = await alice.execute(kernel, f"import os\n{code}")
        assert out["error"] is not None and out["error"]["name"] == "PermissionError", out

    kernel = await bob.start_kernel()
    out = await bob.execute(kernel, f"print(open({str(secret)!r}).read())")
    assert out["stdout"] == "bob's only\n"


#: What another user's code tries, from its own kernel: find every listening socket it can see
#: (/proc/net/tcp*, /proc/net/unix, ss), subscribe to each with ZeroMQ (a kernel's IOPub is a
#: PUB socket: whoever subscribes gets everything the kernel prints, unencrypted), and listen.
ATTACK = r"""
import json, socket, subprocess, time, zmq
secret = SECRET.encode()
found = {"tcp": [], "unix": [], "refused": [], "heard": 0, "ss": ""}
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).read().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A":  # LISTEN
            found["tcp"].append(int(f[1].rsplit(":", 1)[1], 16))
for line in open("/proc/net/unix").read().splitlines()[1:]:
    f = line.split()
    if len(f) >= 8 and f[-1].startswith("/"):
        found["unix"].append(f[-1])
found["ss"] = subprocess.run(["ss", "-lnxt"], capture_output=True, text=True).stdout
ctx = zmq.Context()
poller = zmq.Poller()
def subscribe(url):
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(url)
    poller.register(s, zmq.POLLIN)
for port in sorted(set(found["tcp"])):
    subscribe(f"tcp://127.0.0.1:{port}")
for path in sorted(set(found["unix"])):
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except PermissionError:
        found["refused"].append(path)
        continue
    except OSError:
        continue
    finally:
        probe.close()
    subscribe("ipc://" + path)
deadline = time.monotonic() + 4
while time.monotonic() < deadline:
    for s, _ in poller.poll(100):
        if any(secret in frame for frame in s.recv_multipart()):
            found["heard"] += 1
print(json.dumps(found))
"""


async def test_another_user_cannot_listen_to_a_kernel(users: list[User]) -> None:
    """Bob's kernel prints a secret over and over; alice's code scans every socket it can
    see and subscribes to each. Bob's kernel sockets are there to see, and refuse her."""
    alice, bob = users
    secret = f"bob-secret-{uuid.uuid4().hex}"
    victim = await bob.start_kernel()
    info = await bob.execute(
        victim, "from ipykernel.connect import get_connection_info; print(get_connection_info())"
    )
    connection = json.loads(info["stdout"])

    _, request = execute_request(
        f"import time\nfor i in range(600):\n    print({secret!r}, flush=True)\n"
        "    time.sleep(0.05)"
    )
    async with websockets.connect(
        bob.kernel_ws_url(victim), additional_headers=bob.auth, max_size=None
    ) as ws:
        await ws.send(json.dumps(request))

        async def printing() -> None:
            while True:
                msg = json.loads(await ws.recv())
                if msg["msg_type"] == "stream" and secret in msg["content"]["text"]:
                    return

        await asyncio.wait_for(printing(), 30)  # bob's kernel is printing the secret now
        attacker = await alice.start_kernel()
        out = await alice.execute(attacker, f"SECRET = {secret!r}\n{ATTACK}", timeout=60)
        r = await bob.api("POST", f"/user/{bob.name}/api/kernels/{victim}/interrupt")
        assert r.status_code == 204
    assert out["error"] is None, out
    found = json.loads(out["stdout"])
    assert found["heard"] == 0, "alice's code read bob's kernel output"
    # The attack was real: it saw bob's kernel's sockets and was refused by every one of them.
    assert connection["transport"] == "ipc", connection
    bobs = [p for p in found["unix"] if p.startswith(connection["ip"] + "-")]
    assert bobs and set(bobs) <= set(found["refused"]), found
    for name in ("shell_port", "iopub_port", "control_port", "stdin_port", "hb_port"):
        assert connection[name] not in found["tcp"]
    assert connection["ip"] in found["ss"]  # ss lists the paths too: seen, not reachable
