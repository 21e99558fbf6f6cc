"""Trust in shared agents: who wrote an agent notebook, which exact version a user approved, and
published releases.

- **Owner and version come from the file system**, never from the notebook's metadata: the owner
  is the account that owns the file (``jupyter-<name>`` in system-users mode maps back to hub
  user ``<name>``), the version is the sha256 of the file's bytes, read through one descriptor
  (the bytes parsed, hashed and stat'ed are the same file).
- **Approvals**: a shared agent (one from a group folder) runs only once the runner approved its
  exact digest. Approvals are kept per user in ``~/.oraculo/agents/approvals.json`` (folder
  0700, file 0600); a changed notebook has a new digest, so it is refused until approved again.
- **Published releases**: ``<group folder>/published/<name>.ipynb``, a copy owned by its
  publisher, mode 0644, in a sticky folder (``+t``): teammates can read it, only its publisher
  (or root) can replace or remove it, so the team approves once per release, not per edit; a
  team's maintainers (named in the hub group's properties) replace it through the hub
  (:func:`replace_through_hub`, oraculo.hub.releases), never through a looser mode. The
  folder itself is trusted only when the hub made it (:func:`trusted_folder`: a real folder,
  sticky, owned by root or by the group folder's owner); in system-users mode the group folder
  is sticky too, so no member can rename ``published/`` away and put a folder of their own in
  its place, and one that is not the hub's is neither listed nor written to.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import pwd
import stat
import tempfile
from pathlib import Path
from typing import Any

import httpx

from oraculo.extensions.agents.models import AgentSpec
from oraculo.extensions.base.errors import Conflict
from oraculo.kernels import credentials

#: The folder, in a group folder, that holds the published releases of the team's agents.
PUBLISHED = "published"
#: The folder, in a group folder, that holds the runs members share with the team (read-only).
SHARED_RUNS = "runs"
#: Mode of the published folder: group-writable, sticky (only a file's owner replaces it),
#: setgid (new files stay the group's).
PUBLISHED_MODE = 0o3770


def account_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def os_user_prefix(user: str) -> str:
    """The prefix the hub puts before a hub user's name to make its OS account
    (``ORACULO_OS_USER_PREFIX``, else read from this server's own account: ``jupyter-ana`` for
    hub user ``ana`` gives ``jupyter-``); "" when the accounts are not per user."""
    explicit = os.environ.get("ORACULO_OS_USER_PREFIX")
    if explicit is not None:
        return explicit
    own = account_name(os.getuid())
    if user and own != user and own.endswith(user):
        return own[: -len(user)]
    return ""


def hub_owner(uid: int, prefix: str) -> str:
    """The hub user who owns files of ``uid``: the OS account's name without the per-user
    prefix; an account without the prefix (root, the hub's own) is named as it is."""
    name = account_name(uid)
    if prefix and name.startswith(prefix) and len(name) > len(prefix):
        return name[len(prefix) :]
    return name


def read_file(path: Path, *, follow: bool = True) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file and its stat, through one descriptor."""
    flags = os.O_RDONLY | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is not a regular file")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def review(spec: AgentSpec) -> dict[str, Any]:
    """What a runner reviews before approving: the digest and every line of code that runs."""
    return {
        "agent": spec.name,
        "digest": spec.sha256,
        "owner": spec.owner,
        "path": spec.path,
        "published": spec.published,
        "setup": spec.setup,
        "tools": [{"name": t.name, "source": t.source} for t in spec.tools],
    }


class ApprovalRequired(Conflict):
    """409: a shared agent's current version is not approved by this runner."""

    type = "approval_required"
    reason = "Approval required"

    def __init__(self, specs: list[AgentSpec]) -> None:
        names = ", ".join(f"{s.name} ({s.sha256[:12]})" for s in specs)
        super().__init__(
            f"Shared agent code not approved by you: {names}. Review the tools' source and "
            'start the run again with "approve": "<digest>".'
        )
        self.specs = specs

    def to_json(self) -> dict[str, Any]:
        first = review(self.specs[0])
        return {
            **super().to_json(),
            "agent": first["agent"],
            "digest": first["digest"],
            "owner": first["owner"],
            "tools": first["tools"],
            "setup": first["setup"],
            "approvals": [review(s) for s in self.specs],
        }


class Approvals:
    """One user's approved agent digests, ``{digest: {agent, owner, path, approved}}``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _secure_folder(self) -> None:
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for f in (folder, folder.parent):  # ~/.oraculo/agents and ~/.oraculo
            if f.name in ("agents", ".oraculo") and stat.S_IMODE(f.stat().st_mode) != 0o700:
                os.chmod(f, 0o700)

    def read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def approved(self, digest: str) -> bool:
        return bool(digest) and digest in self.read()

    def add(self, specs: list[AgentSpec]) -> None:
        self._secure_folder()
        data = self.read()
        when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        for s in specs:
            data[s.sha256] = {"agent": s.name, "owner": s.owner, "path": s.path, "approved": when}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".approvals-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def trusted_folder(group_folder: Path, name: str) -> Path | None:
    """``<group_folder>/<name>`` when it is the hub's: a folder (not a link), sticky, owned by
    root or by whoever owns the group folder (the hub's account, when users are not OS
    accounts). None otherwise: absent, or a member's, whose files must not pass for the team's
    releases or runs."""
    folder = group_folder / name
    try:
        st, parent = os.lstat(folder), os.stat(group_folder)
    except OSError:
        return None
    hubs = st.st_uid in (0, parent.st_uid)
    if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and hubs:
        return folder
    return None


def sticky_folder(group_folder: Path, name: str) -> Path:
    """``<group_folder>/<name>``, a sticky folder of the hub's (made here when the hub has not
    made it and this account owns the group folder); PermissionError if it is not trusted."""
    folder = group_folder / name
    try:
        if os.stat(group_folder).st_uid == os.geteuid():
            folder.mkdir(mode=PUBLISHED_MODE)
            os.chmod(folder, PUBLISHED_MODE)  # the umask took bits off
    except FileExistsError:
        pass
    if trusted_folder(group_folder, name) is None:
        raise PermissionError(
            f"{folder} is not the team's sticky folder made by the hub: not writing there"
        )
    return folder


def write_shared_run(group_folder: Path, run_id: str, lines: list[str]) -> Path:
    """A run's events as ``<group_folder>/runs/<id>.jsonl``: this account's file, 0644, in the
    sticky runs folder (teammates read it; only its owner replaces it)."""
    path = sticky_folder(group_folder, SHARED_RUNS) / f"{run_id}.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            raise PermissionError(f"{path} is another account's")
        os.fchmod(fd, 0o644)
        os.write(fd, "".join(lines).encode("utf-8"))
    finally:
        os.close(fd)
    return path


def append_shared_run(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


async def replace_through_hub(data: bytes, group_folder: Path, name: str) -> Path | None:
    """Ask the hub (root, in system-users mode) to replace a teammate's release with ``data``:
    it does when this user is one of the team's maintainers (oraculo.hub.releases). The path
    written; None outside a hub; PermissionError with the hub's reason when it refuses."""
    hub = credentials.HubTokens.from_environment()
    if hub is None:
        return None
    url = f"{hub.api_url}/oraculo/users/{hub.user}/releases/{group_folder.name}/{name}"
    body = {"notebook": base64.b64encode(data).decode("ascii")}
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.post(
                url, json=body, headers={"Authorization": f"token {hub.api_token}"}
            )
    except httpx.HTTPError as e:
        raise PermissionError(f"The hub did not answer ({type(e).__name__})") from e
    if r.status_code == 200:
        return Path(r.json()["path"])
    if r.status_code == 400:
        return None  # not a mode in which the hub replaces releases
    try:
        reason = r.json().get("message") or r.text
    except ValueError:
        reason = r.text
    raise PermissionError(reason)


def publish_copy(data: bytes, group_folder: Path, name: str) -> Path:
    """Write ``data`` as ``<group_folder>/published/<name>.ipynb``: a file owned by this account,
    0644, in the sticky published folder (made here when the hub has not made it). Replacing a
    teammate's release fails with PermissionError (the sticky bit)."""
    folder = sticky_folder(group_folder, PUBLISHED)
    target = folder / f"{name}.ipynb"
    try:
        existing = os.lstat(target)
    except FileNotFoundError:
        existing = None
    if existing is not None and existing.st_uid != os.geteuid():
        who = account_name(existing.st_uid)
        raise PermissionError(f"{target} was published by {who}: only they can replace it")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}-", suffix=".ipynb")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)  # the sticky bit refuses this over another account's file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
