"""Git end to end: a repository served by the test over git's smart HTTP (``git http-backend``
behind a small local server that asks for a login to push), pulled into alice's home with an
nbgitpuller link through the real hub, then a notebook committed and pushed with alice's own
stored login, from the API and from the ``%git`` magic of her kernel.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import nbformat
import pytest
from nbformat import v4

from tests.harness import User

ENVELOPE = {"message", "reason", "type"}
LOGIN = ("alice-git", "correct horse battery staple")


@dataclass
class GitServer:
    """Bare repositories under ``root``, served over smart HTTP on 127.0.0.1; anyone may clone,
    only ``LOGIN`` may push."""

    root: Path
    url: str = ""
    pushes: list[str] = field(default_factory=list)  # the login of each accepted push
    refused: int = 0


def _handler(server: GitServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _serve(self) -> None:
            path, _, query = self.path.partition("?")
            push = "git-receive-pack" in path or "service=git-receive-pack" in query
            user = ""
            if push:
                auth = self.headers.get("Authorization", "")
                given = base64.b64decode(auth[6:]).decode() if auth.startswith("Basic ") else ""
                if given != ":".join(LOGIN):
                    server.refused += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                user = LOGIN[0]
            body = self._body()
            env = {
                "PATH": os.environ["PATH"],
                "GIT_PROJECT_ROOT": str(server.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "REQUEST_METHOD": self.command,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_USER": user,
                "REMOTE_ADDR": "127.0.0.1",
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            }
            out = subprocess.run(
                ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
            ).stdout
            head, _, payload = out.partition(b"\r\n\r\n")
            if not payload and b"\n\n" in out:
                head, _, payload = out.partition(b"\n\n")
            headers = [h.split(":", 1) for h in head.decode().splitlines() if ":" in h]
            status = next((int(v.split()[0]) for k, v in headers if k.lower() == "status"), 200)
            self.send_response(status)
            for key, value in headers:
                if key.lower() != "status":
                    self.send_header(key, value.strip())
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            if push and self.command == "POST" and status == 200:
                server.pushes.append(user)

        do_GET = do_POST = _serve

    return Handler


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    root = tmp_path_factory.mktemp("git-server")
    server = GitServer(root)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Teacher", "GIT_AUTHOR_EMAIL": "t@example.org"}
    env |= {"GIT_COMMITTER_NAME": "Teacher", "GIT_COMMITTER_EMAIL": "t@example.org"}
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout


def make_repo(server: GitServer, name: str, files: dict[str, str]) -> str:
    """A bare repository ``<name>.git`` (branch main) with ``files`` in its first commit."""
    bare = server.root / f"{name}.git"
    git(server.root, "init", "-q", "--bare", "-b", "main", str(bare))
    work = server.root / f"{name}-work"
    git(server.root, "clone", "-q", str(bare), str(work))
    for path, text in files.items():
        (work / path).write_text(text)
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "first")
    git(work, "push", "-q", "origin", "HEAD:main")
    return f"{server.url}/{name}.git"


def notebook(*sources: str) -> str:
    return nbformat.writes(v4.new_notebook(cells=[v4.new_code_cell(s) for s in sources]))


async def pull(user: User, repo: str, target: str) -> list[dict[str, Any]]:
    """What an nbgitpuller link does once the page opens: its event stream, to the end.

    nbgitpuller waits 1 s for its lock and otherwise answers "Another git operation is
    currently running, try again": the previous pull's handler may still hold it for a moment
    after its last event (seen on a loaded machine), so that answer is tried again, as its
    page tells a person to."""
    params = {"repo": repo, "branch": "main", "targetpath": target}
    url = f"/user/{user.name}/git-pull/api"
    for _ in range(10):
        events = []
        async with user.client.http.stream(
            "GET", url, params=params, headers=user.auth, timeout=120
        ) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        busy = events and "Another git operation" in str(events[-1].get("message", ""))
        if not busy:
            return events
        await asyncio.sleep(1)
    return events


def home(user: User) -> Path:
    return user.client.hub.data_dir / "users" / user.name


async def test_an_nbgitpuller_link_brings_course_material_into_the_home(
    alice: User, git_server: GitServer
) -> None:
    repo = make_repo(git_server, "course", {"lesson.ipynb": notebook("print('lesson 1')")})
    link = f"/user/{alice.name}/git-pull"
    params = {"repo": repo, "branch": "main", "urlpath": "lab/tree/course/lesson.ipynb"}
    r = await alice.api("GET", link, params=params)
    assert r.status_code == 200 and "git-pull" in r.text  # the page a student's link opens
    events = await pull(alice, repo, "course")
    assert events[-1]["phase"] == "finished", events
    r = await alice.api("GET", f"/user/{alice.name}/api/contents/course/lesson.ipynb")
    assert r.status_code == 200
    assert r.json()["content"]["cells"][0]["source"] == "print('lesson 1')"

    # the teacher adds a lesson; the same link brings it, and the student's own work stays
    work = git_server.root / "course-work"
    (work / "lesson2.ipynb").write_text(notebook("print('lesson 2')"))
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "lesson 2")
    git(work, "push", "-q", "origin", "HEAD:main")
    (home(alice) / "course" / "my-notes.md").write_text("mine\n")
    events = await pull(alice, repo, "course")
    assert events[-1]["phase"] == "finished", events
    assert (home(alice) / "course" / "lesson2.ipynb").is_file()
    assert (home(alice) / "course" / "my-notes.md").read_text() == "mine\n"


async def test_commit_and_push_a_notebook_with_my_own_login(
    alice: User, git_server: GitServer
) -> None:
    repo = make_repo(git_server, "analyses", {"analysis.ipynb": notebook("1 + 1")})
    events = await pull(alice, repo, "analyses")
    assert events[-1]["phase"] == "finished", events
    base = f"/user/{alice.name}/api/v1/git"
    nb_path = home(alice) / "analyses" / "analysis.ipynb"
    nb_path.write_text(notebook("1 + 1", "print('alice was here')"))

    # no login stored yet: the push is refused, the commit is kept in the home
    r = await alice.api(
        "POST", f"{base}/commits", json={"path": "analyses/analysis.ipynb", "message": "Add a cell"}
    )
    assert r.status_code == 502, r.text
    err = r.json()
    assert set(err) == ENVELOPE and err["type"] == "push_failed"
    first = git(home(alice) / "analyses", "rev-parse", "HEAD").strip()
    assert first[:12] in err["message"] and "kept" in err["message"]
    assert (
        git(home(alice) / "analyses", "log", "-1", "--format=%an %s").strip()
        == f"{alice.name} Add a cell"
    )

    # a wrong password: refused again, and the password is in no message
    wrong = {
        "host": urlsplit(repo).netloc,
        "username": LOGIN[0],
        "password": "wrong",
        "protocol": "http",
    }
    r = await alice.api("POST", f"{base}/credentials", json=wrong)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"{base}/credentials/{wrong['host'].replace(':', '%3A')}"
    nb_path.write_text(notebook("1 + 1", "print('alice was here')", "2 + 2"))
    r = await alice.api(
        "POST", f"{base}/commits", json={"path": "analyses/analysis.ipynb", "message": "Another"}
    )
    assert r.status_code == 502 and "wrong" not in r.text

    # the right one (replacing the wrong): both commits go to the team's repository
    r = await alice.api("POST", f"{base}/credentials", json={**wrong, "password": LOGIN[1]})
    assert r.status_code == 200 and r.json() == {
        "protocol": "http",
        "host": wrong["host"],
        "username": LOGIN[0],
    }
    nb_path.write_text(notebook("1 + 1", "print('alice was here')", "2 + 2", "3 + 3"))
    r = await alice.api(
        "POST", f"{base}/commits", json={"path": "analyses/analysis.ipynb", "message": "Third"}
    )
    assert r.status_code == 201, r.text
    done = r.json()
    assert done["pushed"] is True and done["branch"] == "main" and done["repository"] == "analyses"
    assert done["remote"] == repo
    assert git_server.pushes == [LOGIN[0]] and git_server.refused >= 2
    bare = git_server.root / "analyses.git"
    log = git(bare, "log", "--format=%an|%s", "main").splitlines()
    assert log == [
        f"{alice.name}|Third",
        f"{alice.name}|Another",
        f"{alice.name}|Add a cell",
        "Teacher|first",
    ]
    assert git(bare, "rev-parse", "main").strip() == done["commit"]

    # the login is listed without its password, kept 0600 in alice's home, not in git's config
    r = await alice.api("GET", f"{base}/credentials")
    assert r.json() == {
        "credentials": [{"protocol": "http", "host": wrong["host"], "username": LOGIN[0]}]
    }
    assert LOGIN[1] not in r.text
    store = home(alice) / ".oraculo" / "git" / "credentials"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700
    assert "correct%20horse" in store.read_text()
    assert LOGIN[1] not in (home(alice) / "analyses" / ".git" / "config").read_text()

    # nothing to commit is a 409; bad input is a 400 or 404 in the error envelope
    r = await alice.api(
        "POST", f"{base}/commits", json={"path": "analyses/analysis.ipynb", "message": "again"}
    )
    assert r.status_code == 409 and r.json()["type"] == "conflict"
    for body, status in [
        ({"path": "../../../../etc/passwd", "message": "x"}, 400),
        ({"path": "/etc/passwd", "message": "x"}, 400),
        ({"path": "analyses/nope.ipynb", "message": "x"}, 404),
        ({"path": "course", "message": ""}, 400),
        ({"path": "analyses/analysis.ipynb"}, 400),
        ({"path": "analyses/analysis.ipynb", "message": "x", "force": True}, 400),
    ]:
        r = await alice.api("POST", f"{base}/commits", json=body)
        assert r.status_code == status and set(r.json()) == ENVELOPE, (body, r.text)
    (home(alice) / "loose.txt").write_text("not in a repository\n")
    r = await alice.api("POST", f"{base}/commits", json={"path": "loose.txt", "message": "x"})
    assert r.status_code == 400 and "not in a git repository" in r.json()["message"]
    for bad in [
        {"host": "a b", "username": "u", "password": "p"},
        {"host": "h", "username": "u", "password": "p\nq"},
    ]:
        r = await alice.api("POST", f"{base}/credentials", json=bad)
        assert r.status_code == 400 and r.json()["type"] == "invalid_request"
    r = await alice.api("DELETE", f"{base}/credentials/no-such-host")
    assert r.status_code == 404


async def test_the_git_magic_commits_and_pushes_from_the_kernel(
    alice: User, git_server: GitServer
) -> None:
    # (after the test above: the analyses repository is in alice's home, her login is stored)
    nb_path = home(alice) / "analyses" / "analysis.ipynb"
    nb_path.write_text(notebook("1 + 1", "'from the magic'"))
    # a hook the user's code left in the repository does not run in the server (outside the
    # kernel's sandbox) when it commits and pushes
    marker = home(alice) / "hook-ran"
    for hook in ("pre-commit", "pre-push", "post-commit"):
        path = home(alice) / "analyses" / ".git" / "hooks" / hook
        path.write_text(f"#!/bin/sh\ntouch {marker}\n")
        path.chmod(0o755)
    kernel = await alice.start_kernel("oraculo")
    try:
        out = await alice.execute(
            kernel, "%git commit -m 'From the magic' analyses/analysis.ipynb", timeout=120
        )
        assert "pushed to" in out["stdout"], out
        log = git(git_server.root / "analyses.git", "log", "-1", "--format=%an|%s", "main")
        assert log.strip() == f"{alice.name}|From the magic"
        assert not marker.exists()
        out = await alice.execute(kernel, "%git logins")
        assert out["stdout"].strip().endswith(f"{LOGIN[0]}@{urlsplit(git_server.url).netloc}")
        out = await alice.execute(kernel, "%git commit analyses/analysis.ipynb")
        assert "usage" in out["stderr"]
        # the kernel's narrow token gets no password back either
        out = await alice.execute(
            kernel,
            "import os, httpx\n"
            "r = httpx.get(os.environ['ORACULO_SERVER_URL'] + 'api/v1/git/credentials',"
            " headers={'Authorization': 'token ' + os.environ['ORACULO_KERNEL_TOKEN']})\n"
            "print(r.status_code, 'correct horse' in r.text)",
        )
        assert out["stdout"].strip() == "200 False", out
    finally:
        await alice.api("DELETE", f"/user/{alice.name}/api/kernels/{kernel}")


async def test_another_users_token_and_no_token_are_refused(alice: User, mallory: User) -> None:
    base = f"/user/{alice.name}/api/v1/git"
    calls = [
        ("GET", f"{base}/credentials", None),
        ("POST", f"{base}/credentials", {"host": "h", "username": "m", "password": "p"}),
        ("DELETE", f"{base}/credentials/h", None),
        ("POST", f"{base}/commits", {"path": "analyses/analysis.ipynb", "message": "mallory"}),
    ]
    async with httpx.AsyncClient(base_url=alice.client.hub.url) as bare:
        for method, path, body in calls:
            r = await bare.request(method, path, json=body, headers=mallory.auth)
            assert r.status_code == 403, (method, path, r.status_code)
            r = await bare.request(method, path, json=body)
            assert r.status_code in (302, 401, 403), (method, path, r.status_code)
        r = await bare.get(
            f"/user/{alice.name}/git-pull/api", params={"repo": "x"}, headers=mallory.auth
        )
        assert r.status_code == 403


@pytest.mark.browser
async def test_a_student_opens_an_nbgitpuller_link_in_the_browser(
    alice: User, git_server: GitServer, artifacts: Path
) -> None:
    """What a student does: click the course's link, sign in, land in JupyterLab on the lesson."""
    from urllib.parse import urlencode

    from playwright.async_api import async_playwright

    from tests.harness import CHROMIUM_ARGS, PASSWORD

    repo = make_repo(git_server, "course2", {"week1.ipynb": notebook("print('week 1')")})
    # (nbgitpuller names the folder after the URL's last part, course2.git, unless told)
    query = urlencode(
        {
            "repo": repo,
            "branch": "main",
            "targetPath": "course2",
            "urlpath": "lab/tree/course2/week1.ipynb",
        }
    )
    link = f"/hub/user-redirect/git-pull?{query}"
    hub = alice.client.hub
    seen: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("request", lambda r: seen.append(r.url))
            await page.goto(f"{hub.url}{link}")
            await page.fill("#username_input", alice.name)
            await page.fill("#password_input", PASSWORD)
            await page.screenshot(path=str(artifacts / "git-1-sign-in.png"))
            await page.click("#login_submit")
            await page.wait_for_url("**/git-pull?**", timeout=60_000)
            await page.screenshot(path=str(artifacts / "git-2-pulling.png"))
            await page.wait_for_url("**/lab/tree/course2/week1.ipynb**", timeout=120_000)
            try:  # the lesson's cell, in JupyterLab's editor (its tokens are spans of their own)
                await page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=90_000)
                await page.get_by_text("week 1").first.wait_for(timeout=30_000)
            finally:
                await page.screenshot(path=str(artifacts / "git-3-lesson-open.png"))
        finally:
            await browser.close()
    assert (home(alice) / "course2" / "week1.ipynb").is_file()
    offsite = [u for u in seen if urlsplit(u).hostname not in ("127.0.0.1", None)]
    assert [u for u in offsite if not u.startswith("data:")] == []
