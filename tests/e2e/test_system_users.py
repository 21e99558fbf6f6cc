"""system-users mode: each hub user's server and kernel run as an OS account of their own."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import HubClient, HubProcess, User, new_user

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
