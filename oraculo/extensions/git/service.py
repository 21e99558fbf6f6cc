"""Commit and push a file of a git repository in the user's home, with the user's own login.

Course material and team repositories come into homes with nbgitpuller links
(``/user/<name>/git-pull?repo=...``, the ``nbgitpuller`` server extension). To send work back,
:meth:`GitService.commit` commits one file (a notebook) of the repository it is in and pushes
the branch to its remote, as the user: the author is the hub user unless the repository says
otherwise, and the login for the remote's host is the one the user stored with
:meth:`GitService.set_credential`.

Logins are kept in git's own credential-store format in ``~/.oraculo/git/credentials`` (mode
0600, in a 0700 folder), which only the user's OS account can read; git reads them through
``git credential-store --file=... get`` for this one push, so they never go into a repository's
config or a command line, and the API never answers a password back. A push that fails (a wrong
password, a rejected push) is a clear error that names the commit, which stays in the local
repository: nothing is lost.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from traitlets import Float, Unicode, default
from traitlets.config import LoggingConfigurable

from oraculo.extensions.base.errors import BadRequest, Conflict, NotFound, OraculoError
from oraculo.extensions.base.process import run_captured
from oraculo.extensions.git.models import CommitRequest, CommitResult, Credential, CredentialRequest


class PushFailed(OraculoError):
    """The commit was made, but the remote did not take it (it stays in the local repository)."""

    status = 502
    type = "push_failed"
    reason = "Push failed"


class GitService(LoggingConfigurable):
    """Commits and pushes with the user's stored logins."""

    root_dir = Unicode(help="The server's root folder (the user's home); paths are relative to it.")
    user = Unicode(help="The hub user: the commit author unless the repository names one.")
    credentials_path = Unicode(
        help="""The user's git logins (git-credential-store format, mode 0600). Default
        ~/.oraculo/git/credentials.""",
    ).tag(config=True)
    timeout = Float(120.0, help="Seconds a git command may take before it is stopped.").tag(
        config=True
    )
    email_domain = Unicode(
        "oraculo.invalid",
        help="Domain of the author e-mail (<user>@<domain>) when the repository sets none.",
    ).tag(config=True)

    @default("credentials_path")
    def _default_credentials_path(self) -> str:
        return os.path.join(os.path.expanduser("~"), ".oraculo", "git", "credentials")

    # --- logins -------------------------------------------------------------------------------

    def _read(self) -> list[tuple[str, str, str, str]]:
        """(protocol, host, username, password) of each stored login."""
        try:
            text = Path(self.credentials_path).read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            url = urlsplit(line.strip())
            if url.scheme and url.hostname and url.username is not None:
                host = url.netloc.rpartition("@")[2]
                out.append((url.scheme, host, unquote(url.username), unquote(url.password or "")))
        return out

    def _write(self, entries: list[tuple[str, str, str, str]]) -> None:
        path = Path(self.credentials_path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        lines = [f"{p}://{quote(u, safe='')}:{quote(pw, safe='')}@{h}\n" for p, h, u, pw in entries]
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("".join(lines))
        os.replace(tmp, path)

    def list_credentials(self) -> list[Credential]:
        return [Credential(protocol=p, host=h, username=u) for p, h, u, _ in self._read()]

    def set_credential(self, req: CredentialRequest) -> tuple[Credential, bool]:
        """Store (or replace) the login for ``req.host``; True when it is new."""
        entries = [e for e in self._read() if (e[0], e[1]) != (req.protocol, req.host)]
        created = len(entries) == len(self._read())
        entries.append((req.protocol, req.host, req.username, req.password))
        self._write(entries)
        return Credential(protocol=req.protocol, host=req.host, username=req.username), created

    def delete_credential(self, host: str) -> None:
        entries = self._read()
        kept = [e for e in entries if e[1] != host]
        if len(kept) == len(entries):
            raise NotFound(f"No git login stored for {host}")
        self._write(kept)

    # --- commit and push ----------------------------------------------------------------------

    async def _git(self, cwd: str, *args: str, check: bool = True) -> tuple[int, str]:
        env = {
            **os.environ,
            "GIT_TERMINAL_PROMPT": "0",  # fail, never wait for a password on a terminal
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "LC_ALL": "C",
        }
        # git runs in the server, outside the kernel's sandbox: no hook or fsmonitor that the
        # user's code (or a repository) put in place runs with it
        argv = ["git", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", *args]
        try:
            status, out = await run_captured(argv, cwd, env, self.timeout)
        except TimeoutError:
            raise PushFailed(
                f"git {args[0]} took over {self.timeout:g} s and was stopped"
            ) from None
        text = _scrub(out)
        if check and status:
            raise BadRequest(f"git {args[0]} failed: {text.strip()}")
        return status, text

    def _resolve(self, path: str) -> Path:
        root = Path(self.root_dir).resolve()
        # relative to the home, or absolute (the %git magic sends the kernel's absolute path)
        target = (root / path).resolve()
        if target != root and root not in target.parents:
            raise BadRequest(f"{path} is outside the home folder")
        if not target.is_file():
            raise NotFound(f"No such file: {path}")
        return target

    def _inside(self, top: str, path: str) -> tuple[Path, Path]:
        repo, root = Path(top).resolve(), Path(self.root_dir).resolve()
        if repo != root and root not in repo.parents:
            raise BadRequest(f"{path} is in a repository outside the home folder")
        return repo, root

    async def commit(self, req: CommitRequest) -> CommitResult:
        target = self._resolve(req.path)
        code, top = await self._git(str(target.parent), "rev-parse", "--show-toplevel", check=False)
        if code:
            raise BadRequest(f"{req.path} is not in a git repository")
        repo, root = self._inside(top.strip(), req.path)
        rel = str(target.relative_to(repo))
        author: list[str] = []
        if (await self._git(str(repo), "config", "user.name", check=False))[0]:
            author += ["-c", f"user.name={self.user}"]
        if (await self._git(str(repo), "config", "user.email", check=False))[0]:
            author += ["-c", f"user.email={self.user}@{self.email_domain}"]
        await self._git(str(repo), "add", "--", rel)
        code, out = await self._git(
            str(repo), *author, "commit", "-q", "-m", req.message, "--", rel, check=False
        )
        if code:
            if "nothing" in out or "no changes" in out:
                raise Conflict(f"{req.path} has no changes to commit")
            raise BadRequest(f"git commit failed: {out.strip()}")
        sha = (await self._git(str(repo), "rev-parse", "HEAD"))[1].strip()
        branch = (await self._git(str(repo), "rev-parse", "--abbrev-ref", "HEAD"))[1].strip()
        result = CommitResult(
            repository=str(repo.relative_to(root)), commit=sha, branch=branch, pushed=False
        )
        if not req.push:
            return result
        code, remote = await self._git(str(repo), "config", f"branch.{branch}.remote", check=False)
        remote = remote.strip() if code == 0 else "origin"
        code, url = await self._git(str(repo), "remote", "get-url", remote, check=False)
        if code:
            raise PushFailed(f"Committed {sha[:12]}, but the repository has no remote to push to")
        result.remote = _without_login(url.strip())
        code, out = await self._git(
            str(repo),
            "-c",
            "credential.helper=",
            "-c",
            # git's store helper, for lookups only: a refused login is not erased (nor a good
            # one rewritten) behind the user's back; the user replaces it through the API
            'credential.helper=!f() { test "$1" = get && exec git credential-store '
            f"--file={shlex.quote(self.credentials_path)} get; }}; f",
            "push",
            "--porcelain",
            remote,
            f"HEAD:refs/heads/{branch}",
            check=False,
        )
        if code:
            raise PushFailed(
                f"Committed {sha[:12]} on {branch}, kept in {result.repository}, but the push to "
                f"{result.remote} failed: {out.strip()[-2000:]}"
            )
        result.pushed, result.output = True, out.strip()
        return result


def _without_login(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return url


def _scrub(text: str) -> str:
    """git's messages without any ``user:password@`` a URL in them carries."""
    return re.sub(r"(\w+://)[^/@\s]+@", r"\1", text)
