"""Runs a real Oráculo hub (JupyterHub + configurable-http-proxy + services) for the tests.

Everything binds to 127.0.0.1 on free ports; each hub gets a data directory of its own. A
:class:`HubClient` signs up, signs in (form posts with XSRF, as a browser does), makes API
tokens, spawns servers and runs code in kernels over the kernel websocket, all through the
public proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import psutil
import websockets

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PASSWORD = "correct-horse-battery-9"
#: How the browser tests start Debian's chromium: headless, and quiet on a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN_PASSWORD = "admin-horse-battery-staple-42"


#: ``(method, path, response)`` of the answers of oraculo's APIs (a user server's ``/api/v1``, the
#: model service) that tests received through :meth:`User.api`; at the end of the session
#: tests/conftest.py checks them against the OpenAPI documents (tests/extensions/api/contract.py).
RECORDED: list[tuple[str, str, httpx.Response]] = []


def record(method: str, r: httpx.Response) -> None:
    path = r.request.url.path
    api = re.match(r"^/user/[^/]+/api/v1/", path) or path.startswith("/services/models/")
    if api and len(r.content) < 1_000_000:
        RECORDED.append((method.upper(), path, r))


_GIVEN: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 now and not handed out before by this process: the system may
    hand the same free port to two binds in a row, and a hub given it for both its own port and
    its proxy's API port fails to start (seen once in a run)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


async def wait_for(
    check: Callable[[], Awaitable[Any]], timeout: float, what: str, interval: float = 0.1
) -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = await check()
            if result:
                return result
        except (httpx.HTTPError, OSError) as e:
            last_error = e
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


@dataclass
class HubProcess:
    """One running hub. ``env`` adds to (or overrides) the ORACULO_* settings."""

    data_dir: Path
    spawner: str = "process"
    config_file: Path = REPO / "jupyterhub_config.py"
    models: bool = False
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "hub.log"

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "ORACULO_DATA_DIR": str(self.data_dir),
                "ORACULO_PORT": str(self.port),
                "ORACULO_HUB_PORT": str(free_port()),
                "ORACULO_PROXY_API_PORT": str(free_port()),
                "ORACULO_MODELS_PORT": str(free_port()),
                "ORACULO_DASHBOARD_PORT": str(free_port()),
                "ORACULO_STORES_PORT": str(free_port()),
                "ORACULO_SPAWNER": self.spawner,
                # The process spawner runs every user as the hub's own account (root in CI),
                # which a root hub refuses unless told so (allow_root_process_spawner).
                "ORACULO_ALLOW_ROOT_PROCESS_SPAWNER": "1" if self.spawner == "process" else "0",
                "ORACULO_MODELS_SERVICE": "1" if self.models else "0",
                "ORACULO_OPEN_SIGNUP": "1",
                "ORACULO_ADMIN_PASSWORD": ADMIN_PASSWORD,
                "HF_HUB_OFFLINE": "1",
                "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            }
        )
        env.update(self.env)
        return env

    async def start(self, timeout: float = 90) -> HubProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "jupyterhub"), "-f", str(self.config_file)],
            cwd=self.data_dir,
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        async def healthy() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.log_tail()}")
            async with httpx.AsyncClient(timeout=2) as c:
                r = await c.get(f"{self.url}/hub/health")
                return r.status_code == 200

        try:
            await wait_for(healthy, timeout, "the hub to answer through the proxy", 0.2)
        except BaseException:
            self.stop()
            raise
        return self

    async def models_loaded(self, timeout: float = 180, interval: float = 0.25) -> None:
        """Wait until the hub's model service has loaded its models (its health says ok)."""

        async def loaded() -> bool:
            async with httpx.AsyncClient(timeout=5) as c:
                r = await c.get(f"{self.url}/services/models/health")
                return r.status_code == 200 and r.json().get("status") == "ok"

        await wait_for(loaded, timeout, "the hub's model service to load", interval)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the hub (it stops its servers and proxy), then end anything left over."""
        if self.proc is None:
            return
        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for p in family:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None


class HubClient:
    """A browser-like client of one hub: cookies, XSRF, tokens, servers, kernels."""

    def __init__(self, hub: HubProcess) -> None:
        self.hub = hub
        self.http = httpx.AsyncClient(base_url=hub.url, timeout=30, follow_redirects=False)
        #: The signed-in sessions :func:`new_user` made through this client; closed with it, so
        #: a test that forgets a user's own client leaks no connection (its ResourceWarning,
        #: an error under warnings-as-errors, fails whichever test runs when it is collected).
        #: Close this client only when its users are done.
        self.sessions: list[HubClient] = []

    async def aclose(self) -> None:
        for session in self.sessions:
            await session.aclose()
        await self.http.aclose()

    async def _form(self, path: str, data: dict[str, str]) -> httpx.Response:
        page = await self.http.get(path)
        match = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
        assert match, f"no _xsrf field on {path}"
        return await self.http.post(path, data={**data, "_xsrf": match.group(1)})

    async def signup(self, name: str, password: str = PASSWORD) -> None:
        r = await self._form(
            "/hub/signup",
            {
                "username": name,
                "signup_password": password,
                "signup_password_confirmation": password,
            },
        )
        assert r.status_code == 200, r.text[:500]
        alert = re.search(r'class="alert ([^"]+)"[^>]*>(.*?)</div>', r.text, re.S)
        assert alert and "alert-success" in alert.group(1), alert and alert.group(2).strip()

    async def login(self, name: str, password: str = PASSWORD) -> None:
        r = await self._form("/hub/login", {"username": name, "password": password})
        assert r.status_code == 302, f"login of {name} failed: {r.status_code}"
        assert "jupyterhub-session-id" in self.http.cookies or any(
            c.startswith("jupyterhub-hub-login") for c in self.http.cookies
        )

    async def token(self, name: str, scopes: list[str] | None = None) -> str:
        """Make an API token for the signed-in user ``name`` (cookie + XSRF header)."""
        xsrf = self.http.cookies.get("_xsrf", path="/hub/") or self.http.cookies.get("_xsrf")
        body: dict[str, Any] = {"note": f"test {uuid.uuid4().hex[:6]}", "expires_in": 3600}
        if scopes is not None:
            body["scopes"] = scopes
        r = await self.http.post(
            f"/hub/api/users/{name}/tokens", json=body, headers={"X-XSRFToken": xsrf or ""}
        )
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


@dataclass
class User:
    """A signed-up, signed-in hub user with an API token."""

    name: str
    token: str
    client: HubClient

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    @property
    def server_url(self) -> str:
        return f"{self.client.hub.url}/user/{self.name}/"

    async def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**self.auth, **kw.pop("headers", {})}
        r = await self.client.http.request(method, path, headers=headers, **kw)
        record(method, r)
        return r

    async def spawn(self, timeout: float = 120) -> None:
        r = await self.api("POST", f"/hub/api/users/{self.name}/server")
        assert r.status_code in (201, 202, 400), r.text  # 400: already running
        await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float = 120) -> dict[str, Any]:
        async def ready() -> dict[str, Any] | None:
            r = await self.api("GET", f"/hub/api/users/{self.name}")
            server = r.json().get("servers", {}).get("")
            if server and server.get("ready"):
                return server
            if server is None and r.json().get("pending") is None:
                raise RuntimeError(f"{self.name}'s server stopped:\n{self.client.hub.log_tail()}")
            return None

        result: dict[str, Any] = await wait_for(ready, timeout, f"{self.name}'s server", 0.1)
        return result

    async def stop_server(self, timeout: float = 60) -> None:
        r = await self.api("DELETE", f"/hub/api/users/{self.name}/server")
        assert r.status_code in (202, 204), r.text

        async def stopped() -> bool:
            r = await self.api("GET", f"/hub/api/users/{self.name}")
            return "" not in r.json().get("servers", {})

        await wait_for(stopped, timeout, f"{self.name}'s server to stop")

    async def start_kernel(self, name: str = "") -> str:
        body = {"name": name} if name else {}
        r = await self.api("POST", f"/user/{self.name}/api/kernels", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def kernel_ws_url(self, kernel_id: str) -> str:
        base = self.client.hub.url.replace("http://", "ws://")
        return f"{base}/user/{self.name}/api/kernels/{kernel_id}/channels"

    async def execute(
        self, kernel_id: str, code: str, timeout: float = 60, store_history: bool = False
    ) -> dict[str, Any]:
        """Run ``code`` over the kernel websocket; return stdout, stderr, results and error.
        ``store_history``: as JupyterLab runs a cell (it goes in the kernel's input history)."""
        return await execute_over_ws(
            self.kernel_ws_url(kernel_id), self.auth, code, timeout, store_history
        )


def execute_request(
    code: str, username: str = "test", store_history: bool = False
) -> tuple[str, dict[str, Any]]:
    """A kernel ``execute_request`` message for the websocket, and its msg_id."""
    msg_id = uuid.uuid4().hex
    request = {
        "header": {
            "msg_id": msg_id,
            "username": username,
            "session": uuid.uuid4().hex,
            "msg_type": "execute_request",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "channel": "shell",
        "content": {
            "code": code,
            "silent": False,
            "store_history": store_history,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        },
    }
    return msg_id, request


async def execute_over_ws(
    url: str, headers: dict[str, str], code: str, timeout: float = 60, store_history: bool = False
) -> dict[str, Any]:
    msg_id, request = execute_request(code, store_history=store_history)
    out: dict[str, Any] = {"stdout": "", "stderr": "", "results": [], "error": None}
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        await ws.send(json.dumps(request))

        async def collect() -> None:
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    out[content["name"]] += content["text"]
                elif kind in ("execute_result", "display_data"):
                    out["results"].append(content["data"])
                elif kind == "error":
                    out["error"] = {"name": content["ename"], "value": content["evalue"]}
                elif kind == "status" and content["execution_state"] == "idle":
                    return

        await asyncio.wait_for(collect(), timeout)
    return out


async def new_user(client: HubClient, name: str | None = None) -> User:
    """Sign up a fresh user (open sign-up in tests), sign in, make a token."""
    name = name or f"u{uuid.uuid4().hex[:8]}"
    session = HubClient(client.hub)
    client.sessions.append(session)
    await session.signup(name)
    await session.login(name)
    token = await session.token(name)
    return User(name=name, token=token, client=session)


@dataclass
class PanelPage:
    """A Chromium page signed in through the hub's login form, with what it fetched."""

    page: Any
    #: Every request and websocket URL the page opened.
    seen: list[str] = field(default_factory=list)
    #: ``"<status> <url>"`` of every response with a status of 400 or more.
    bad: list[str] = field(default_factory=list)

    def offsite(self) -> list[str]:
        """URLs the page fetched from anywhere but 127.0.0.1 (``data:`` aside)."""
        hosts = {u: urlparse(u.removeprefix("blob:")).hostname for u in self.seen}
        return sorted(u for u, h in hosts.items() if h != "127.0.0.1" and not u.startswith("data:"))


@contextlib.asynccontextmanager
async def signed_in_panel(
    user: User, panel: str, viewport: dict[str, int], password: str = PASSWORD
) -> AsyncIterator[PanelPage]:
    """Chromium signed in as ``user`` on the login page, sent on to ``oraculo-panels/<panel>``."""
    from playwright.async_api import async_playwright

    hub = user.client.hub
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            out = PanelPage(await browser.new_page(viewport=viewport))
            out.page.on("request", lambda r: out.seen.append(r.url))
            out.page.on("websocket", lambda ws: out.seen.append(ws.url))
            out.page.on(
                "response",
                lambda r: out.bad.append(f"{r.status} {r.url}") if r.status >= 400 else None,
            )
            await out.page.goto(
                f"{hub.url}/hub/login?next=/user/{user.name}/oraculo-panels/{panel}"
            )
            await out.page.fill("#username_input", user.name)
            await out.page.fill("#password_input", password)
            await out.page.click("#login_submit")
            yield out
        finally:
            await browser.close()


class SystemUsersTeam:
    """A system-users hub (real OS accounts) with three users: ana and ben in hub group
    ``group``, eve not; made by :func:`system_users_team`."""

    def __init__(self, hub: HubProcess, admin: User, group: str, users: list[User]) -> None:
        self.hub, self.admin, self.group = hub, admin, group
        self.ana, self.ben, self.eve = users

    @property
    def folder(self) -> Path:
        """The group's shared folder."""
        return Path(self.hub.env["ORACULO_GROUPS_DIR"]) / self.group

    async def run_code(self, user: User, code: str) -> dict[str, Any]:
        """``code`` in a new kernel of ``user``'s (as their OS account)."""
        kernel = await user.start_kernel()
        return await user.execute(kernel, code)

    async def read(self, user: User, path: Path) -> dict[str, Any]:
        return await self.run_code(user, f"print(open({str(path)!r}).read(), end='')")


@contextlib.asynccontextmanager
async def system_users_team(
    workdir: Path, label: str, *, models: bool = False
) -> AsyncIterator[SystemUsersTeam]:
    """Start a system-users hub (as root) whose group folders are under /tmp (so other accounts
    traverse), sign up three users ``<label[0]><tag>{a,b,e}``, put the first two in hub group
    ``<label>-<tag>`` and start their servers (once the model service answers, with ``models``).
    On exit: the hub stopped, the OS accounts, the OS group and the folders removed."""
    tag = uuid.uuid4().hex[:6]
    groups_dir = Path(f"/tmp/oraculo-{label}-{tag}")
    hub = HubProcess(
        workdir, spawner="system-users", models=models, env={"ORACULO_GROUPS_DIR": str(groups_dir)}
    )
    await hub.start()
    group = f"{label}-{tag}"
    names = [f"{label[0]}{tag}{n}" for n in ("a", "b", "e")]
    admin_client = HubClient(hub)
    signup = HubClient(hub)  # closed last: closing it signs its users' sessions out
    people: list[User] = []
    try:
        await admin_client.login("admin", ADMIN_PASSWORD)
        admin = User("admin", await admin_client.token("admin"), admin_client)
        for name in names:
            people.append(await new_user(signup, name))
        r = await admin.api("POST", f"/hub/api/groups/{group}", json={"users": names[:2]})
        assert r.status_code == 201, r.text
        if models:
            await hub.models_loaded()
        await asyncio.gather(*(person.spawn() for person in people))
        yield SystemUsersTeam(hub, admin, group, people)
    finally:
        for person in people:
            await person.client.aclose()
        await signup.aclose()
        await admin_client.aclose()
        hub.stop()
        for name in names:
            subprocess.run(["userdel", "--remove", f"jupyter-{name}"], capture_output=True)
        subprocess.run(["groupdel", f"oraculo-{group}"], capture_output=True)
        shutil.rmtree(groups_dir, ignore_errors=True)
