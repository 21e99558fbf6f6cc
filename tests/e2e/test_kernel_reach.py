"""What code in a user's own kernel can reach, tried as an attacker (an agent tool, a shared
notebook) would: no hub token, nothing broader than the kernel's own narrow credential, no
terminal, no new kernel, no new token.

The kernel reads the environment and command line of every process it may (in ``process`` mode:
its server and everything under it; in ``system-users`` mode: all of /proc, of which only its
own account's are readable), every file of its runtime folder, its home's dotfolders and /tmp, and
hands back every string shaped like a JupyterHub token. The test (root, outside) asks the hub what
each one may do, and knows the server's hub token from the server's /proc entry.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psutil
import pytest

from tests.harness import HubClient, HubProcess, User, new_user, wait_for

ATTACK = r"""
import json, os, re, stat, urllib.request, urllib.error
TOKEN = re.compile(rb"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")
found = {}

def look(where, data):
    for m in TOKEN.findall(data):
        found.setdefault(m.decode(), where)

def read(path, limit=1 << 18):
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return b""

def tree(pid):
    children = {}
    for child in os.listdir("/proc"):
        if child.isdigit():
            stat_ = read(f"/proc/{child}/stat").rsplit(b")", 1)[-1].split()
            if len(stat_) > 1:
                children.setdefault(int(stat_[1]), []).append(int(child))
    pids, todo = set(), [pid]
    while todo:
        p = todo.pop()
        pids.add(p)
        todo += [c for c in children.get(p, []) if c not in pids]
    return pids

every = {int(p) for p in os.listdir("/proc") if p.isdigit()}
pids = tree(os.getppid()) if SCOPE == "server" else every
readable = []
for pid in sorted(pids):
    env, cmd = read(f"/proc/{pid}/environ"), read(f"/proc/{pid}/cmdline")
    if env:
        readable.append(pid)
    name = cmd.replace(b"\0", b" ")[:120].decode(errors="replace")
    look(f"/proc/{pid}/environ ({name})", env)
    look(f"/proc/{pid}/cmdline ({name})", cmd)

home = os.path.expanduser("~")
folders = [os.path.join(home, d) for d in os.listdir(home) if d.startswith(".")] + ["/tmp"]
try:
    from jupyter_core.paths import jupyter_runtime_dir
    folders.append(jupyter_runtime_dir())
except Exception:
    pass
files = 0
for folder in folders:
    for root, dirs, names in os.walk(folder):
        if folder == "/tmp" and root.count(os.sep) >= 3:
            dirs[:] = []  # sockets and connection files sit at most two levels down
        for name in names:
            path = os.path.join(root, name)
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    continue  # a FIFO would block the read
            except OSError:
                continue
            files += 1
            look(path, read(path))

def call(method, url, body=None):
    req = urllib.request.Request(url, method=method, data=json.dumps(body or {}).encode(),
        headers={"Authorization": "token " + os.environ["ORACULO_KERNEL_TOKEN"],
                 "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code

server = os.environ["ORACULO_SERVER_URL"].rstrip("/")
tries = {
    "terminal": call("POST", server + "/api/terminals"),
    "kernel": call("POST", server + "/api/kernels", {"name": "oraculo"}),
    "session": call("POST", server + "/api/sessions",
                    {"path": "x.ipynb", "type": "notebook", "kernel": {"name": "oraculo"}}),
    "mint": call("POST", HUB + "/hub/api/users/" + USER + "/tokens", {"note": "mine"}),
    "status": call("GET", server + "/api/v1/status"),
    # the user's memories and workspace index: the server's token reaches them, a kernel's not
    "stores": call("POST", HUB + "/services/stores/api/v1/tables/memories", {"op": "count"}),
}
print(json.dumps({"found": found, "pids": len(pids), "readable": readable, "files": files,
                  "tries": tries, "own": os.environ["ORACULO_KERNEL_TOKEN"]}))
"""


def server_process(hub: HubProcess, name: str) -> psutil.Process:
    """The user's single-user server (the test runs as root, so it may read its environment)."""
    assert hub.proc is not None
    for p in psutil.Process(hub.proc.pid).children(recursive=True):
        if "oraculo.singleuser" in " ".join(p.cmdline()):
            try:
                if p.environ().get("JUPYTERHUB_USER") == name:
                    return p
            except psutil.Error:
                continue
    raise AssertionError(f"no server process of {name}")


async def scopes_of(hub: HubProcess, token: str) -> set[str] | None:
    async with httpx.AsyncClient(base_url=hub.url, timeout=30) as c:
        r = await c.get("/hub/api/user", headers={"Authorization": f"token {token}"})
    return set(r.json().get("scopes", [])) if r.status_code == 200 else None


async def attack(user: User, scope: str) -> None:
    hub = user.client.hub
    # Everything a server runs as the user, running: the panel server and a terminal.
    r = await user.api("GET", f"/user/{user.name}/oraculo-panels/workspace")
    assert r.status_code == 200, r.status_code
    r = await user.api("POST", f"/user/{user.name}/api/terminals")
    assert r.status_code == 200, r.text
    terminal = r.json()["name"]
    try:
        kernel = await user.start_kernel()
        code = f"SCOPE = {scope!r}; HUB = {hub.url!r}; USER = {user.name!r}\n{ATTACK}"
        out = await user.execute(kernel, code, timeout=120)
        assert out["error"] is None, out
        report: dict[str, Any] = json.loads(out["stdout"])
    finally:
        await user.api("DELETE", f"/user/{user.name}/api/terminals/{terminal}")

    assert report["pids"] >= 3 and report["files"] > 0, report  # it did look
    # The server's hub token (it may mint tokens), anywhere, would fail the scope check below.
    own = await scopes_of(hub, report["own"])
    assert own is not None and not any(s.startswith(("tokens", "servers")) for s in own), own
    for token, where in report["found"].items():
        scopes = await scopes_of(hub, token)
        if scopes is not None:
            assert scopes <= own, f"{where} holds a token broader than the kernel's: {scopes - own}"
    # What the server started with: its hub token is out of its /proc entry.
    assert "JUPYTERHUB_API_TOKEN" not in server_process(hub, user.name).environ()
    assert report["tries"] == {
        "terminal": 403,
        "kernel": 403,
        "session": 403,
        "mint": 403,
        "status": 200,
        "stores": 403,
    }, report["tries"]


async def test_a_kernel_reaches_no_credential_broader_than_its_own(alice: User) -> None:
    """`process` mode: the kernel shares its server's OS account (here root, without ptrace)."""
    await attack(alice, "server")


#: The servers of this hub load one feature (status): the server's hardening must not depend on
#: which features load (it once came with the execute feature).
ONE_FEATURE_CONFIG = """
from oraculo.hub.config import OraculoHub

c = get_config()
c.OraculoHub.singleuser_extra_args = [
    "--OraculoExtension.features=oraculo.extensions.status.feature:StatusFeature"
]
OraculoHub(config=c).apply(c)
"""


@pytest.fixture(scope="module")
async def system_user(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[User]:
    data = tmp_path_factory.mktemp("hub-reach")
    config = data / "jupyterhub_config.py"
    config.write_text(ONE_FEATURE_CONFIG)
    hub = await HubProcess(data, spawner="system-users", config_file=config).start()
    client = HubClient(hub)
    name = f"r{uuid.uuid4().hex[:7]}"
    try:
        user = await new_user(client, name)
        await user.spawn()
        yield user
        await user.client.aclose()
    finally:
        await client.aclose()
        hub.stop()
        subprocess.run(["userdel", "--remove", f"jupyter-{name}"], capture_output=True)


@pytest.mark.root
async def test_a_system_users_kernel_reaches_no_credential_broader_than_its_own(
    system_user: User,
) -> None:
    """`system-users` mode: the kernel scans all of /proc as its own OS account."""
    await attack(system_user, "all")


@pytest.mark.root
async def test_our_folder_in_the_home_is_private_from_the_start(system_user: User) -> None:
    kernel = await system_user.start_kernel()
    code = "import os, stat; print(oct(stat.S_IMODE(os.stat(os.path.expanduser('~/.oraculo'))[0])))"
    out = await system_user.execute(kernel, code)
    assert out["stdout"].strip() == "0o700", out


@pytest.mark.root
async def test_the_store_services_tables_are_out_of_the_kernels_reach(system_user: User) -> None:
    """The user's tables live in the hub's data folder (oraculo.stores), which the user's own
    OS account cannot open: the kernel can neither read nor change them behind the server."""
    hub = system_user.client.hub
    row = {"key": "k", "value": "v", "text": "k: v", "vector": [0.1] * 384}
    async with httpx.AsyncClient(base_url=hub.url, timeout=60) as c:
        r = await c.post(
            "/services/stores/api/v1/tables/memories",
            json={"op": "upsert", "rows": [row]},
            headers=system_user.auth,
        )
    assert r.status_code == 200, r.text
    folder = hub.data_dir / "stores" / system_user.name
    assert (folder / "memories.lance").is_dir()
    kernel = await system_user.start_kernel()
    code = f"""
import json, os
tried = {{}}
for path in {[str(folder.parent), str(folder), str(folder / "memories.lance")]!r}:
    try:
        tried[path] = sorted(os.listdir(path))
    except OSError as e:
        tried[path] = type(e).__name__
try:
    open({str(folder / "memories.lance" / "x")!r}, "w")
    tried["write"] = "written"
except OSError as e:
    tried["write"] = type(e).__name__
print(json.dumps(tried))
"""
    out = await system_user.execute(kernel, code)
    tried = json.loads(out["stdout"])
    assert set(tried.values()) == {"PermissionError"}, tried


@pytest.mark.root
async def test_narrow_tokens_of_an_earlier_server_are_revoked_at_start(system_user: User) -> None:
    """Kernels outlive a server that is killed; the next server would not know their tokens for
    narrow (and let them open terminals), so it revokes them. Other tokens are left alone."""
    user = system_user
    tokens = {}
    for note in ("oraculo kernel left-over", "mine"):
        r = await user.api(
            "POST", f"/hub/api/users/{user.name}/tokens", json={"note": note, "expires_in": 600}
        )
        assert r.status_code == 201, r.text
        tokens[note] = r.json()["token"]
    await user.stop_server()
    await user.spawn()
    hub = user.client.hub

    async def revoked() -> bool:
        return await scopes_of(hub, tokens["oraculo kernel left-over"]) is None

    await wait_for(revoked, 30, "the left-over kernel token to be revoked")
    assert await scopes_of(hub, tokens["mine"]) is not None


PRIORITY = r"""
import json, os
def group(pid="self"):
    return int(open(f"/proc/{pid}/autogroup").read().rsplit("nice", 1)[1])
out = {"nice": os.getpriority(os.PRIO_PROCESS, 0), "group": group()}
for name, attempt in {
    "own": lambda: os.setpriority(os.PRIO_PROCESS, 0, 0),
    "server": lambda: os.setpriority(os.PRIO_PROCESS, SERVER, -5),
    "ahead of the hub": lambda: os.write(os.open("/proc/self/autogroup", os.O_WRONLY), b"-5"),
}.items():
    try:
        attempt()
        out[name] = "allowed"
    except OSError as e:
        out[name] = type(e).__name__
out["after"] = [os.getpriority(os.PRIO_PROCESS, 0), group()]
print(json.dumps(out))
"""


async def check_priority(user: User) -> None:
    """The user's kernel runs at nice 10 (the hub's default), its session group too, behind the
    hub and the user's server (0); its code can put neither itself back nor its server ahead."""
    hub = user.client.hub
    assert hub.proc is not None
    server = server_process(hub, user.name)
    assert psutil.Process(hub.proc.pid).nice() == 0
    assert server.nice() == 0
    kernel = await user.start_kernel()
    out = await user.execute(kernel, f"SERVER = {server.pid}\n{PRIORITY}", timeout=120)
    assert out["error"] is None, out
    report = json.loads(out["stdout"])
    assert report == {
        "nice": 10,
        "group": 10,
        "own": "PermissionError",
        "server": "PermissionError",
        "ahead of the hub": "PermissionError",
        "after": [10, 10],
    }, report
    assert server.nice() == 0


async def test_a_kernel_cannot_put_itself_ahead_of_the_hub(alice: User) -> None:
    """`process` mode as root: the kernel has no CAP_SYS_NICE."""
    await check_priority(alice)


@pytest.mark.root
async def test_a_system_users_kernel_cannot_put_itself_ahead_of_the_hub(
    system_user: User,
) -> None:
    await check_priority(system_user)
