"""Team maintainers replace a teammate's published agent release, through the hub.

A release is ``<group folder>/published/<name>.ipynb``, owned by its publisher's OS account in a
root-owned sticky folder (see oraculo.extensions.agents.trust): in system-users mode only its
publisher, or root, can replace it. A team's maintainers may replace it too; they are named by an
admin in the hub group's properties (``PUT /hub/api/groups/<group>/properties`` with
``{"maintainers": ["ana", ...]}``). Their server asks the hub, which runs as root, to do it:

``POST /hub/api/oraculo/users/<user>/releases/<group>/<name>`` with
``{"notebook": "<base64 of the notebook's bytes>"}``

needs the user's ``users:activity`` scope (the server's own token or the user's full token; a
kernel's token lacks it, so code in a maintainer's kernel, a teammate's agent tool included,
cannot use the maintainer's right). The hub checks that the user is a member of the group and
either published the release or is one of the group's maintainers, then writes the new bytes to
a fresh file it gives to the user's OS account (0644, the group's) and renames it over the old
one. Nothing in the folder is followed and no mode is loosened; the new file has a new digest,
so every teammate approves it again. Answers 200 with ``{"path", "owner", "replaced"}``; 403 when
the user may not replace it; 400 for a bad name or body; 404 for an unknown group.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import pwd
import re
import stat
from pathlib import Path
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from oraculo.hub.groups import GroupFolders, group_slug

#: Largest notebook a release may be (bytes).
MAX_RELEASE = 8 * 1024 * 1024
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}\Z")


def maintainers(properties: Any) -> list[str]:
    """The group's maintainers from its properties (a list of hub user names; else none)."""
    value = (properties or {}).get("maintainers") if isinstance(properties, dict) else None
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str)]


def replace_release(
    group_folder: Path, name: str, data: bytes, uid: int, may_replace_any: bool
) -> tuple[Path, int | None]:
    """Write ``data`` as ``<group_folder>/published/<name>.ipynb`` owned by ``uid``; a release
    of another account's only with ``may_replace_any``. Returns the path and the uid that owned
    the release it replaced (None: there was none). Runs as root: nothing is followed."""
    gfd = os.open(group_folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        pfd = os.open("published", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=gfd)
    finally:
        os.close(gfd)
    try:
        st = os.fstat(pfd)
        if st.st_uid != 0 or not st.st_mode & stat.S_ISVTX:
            raise PermissionError(f"{group_folder}/published is not the hub's sticky folder")
        target = f"{name}.ipynb"
        try:
            old: os.stat_result | None = os.stat(target, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        if old is not None and not stat.S_ISREG(old.st_mode):
            raise PermissionError(f"{target} in {group_folder}/published is not a release")
        if old is not None and old.st_uid != uid and not may_replace_any:
            raise PermissionError(
                f"{target} was published by {_account(old.st_uid)}: only they or the team's "
                "maintainers can replace it"
            )
        tmp = f".{name}-{os.urandom(6).hex()}.ipynb"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=pfd)
        try:
            try:
                os.fchown(fd, uid, st.st_gid)
                os.fchmod(fd, 0o644)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.rename(tmp, target, src_dir_fd=pfd, dst_dir_fd=pfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=pfd)
            except OSError:
                pass
            raise
        return group_folder / "published" / target, (old.st_uid if old is not None else None)
    finally:
        os.close(pfd)


def _account(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class ReleaseAPIHandler(APIHandler):
    """``POST /hub/api/oraculo/users/<user>/releases/<group>/<name>`` (see the module)."""

    @needs_scope("users:activity")
    async def post(self, user_name: str, group: str, name: str) -> None:
        user = self.find_user(user_name)
        if user is None:
            raise web.HTTPError(404, f"No user {user_name}")
        # the hub group's name, or its folder's name (what a server knows)
        orm_group = next(
            (g for g in user.orm_user.groups if group in (g.name, group_slug(g.name))), None
        )
        if orm_group is None:
            raise web.HTTPError(403, f"{user_name} is not a member of {group}")
        if not _NAME.match(name):
            raise web.HTTPError(400, f"Not an agent name: {name!r}")
        os_user = getattr(user.spawner, "os_user", None)
        if not os_user:
            raise web.HTTPError(400, "Only system-users mode replaces releases through the hub")
        try:
            body = json.loads(self.request.body or b"{}")
            data = base64.b64decode(body["notebook"], validate=True)
            json.loads(data)
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise web.HTTPError(400, 'Send {"notebook": "<base64 of the notebook>"}') from None
        if len(data) > MAX_RELEASE:
            raise web.HTTPError(400, f"A release is at most {MAX_RELEASE} bytes")
        uid = pwd.getpwnam(os_user).pw_uid
        maintainer = user_name in maintainers(orm_group.properties)
        folder = GroupFolders(config=self.settings.get("config")).folder(orm_group.name)
        try:
            path, replaced = replace_release(folder, name, data, uid, maintainer)
        except PermissionError as e:
            raise web.HTTPError(403, str(e)) from None
        except FileNotFoundError:
            raise web.HTTPError(404, f"{group} has no published folder") from None
        self.log.info(
            "%s (%s) replaced release %s of %s (was %s)",
            user_name,
            "maintainer" if maintainer else "publisher",
            name,
            group,
            _account(replaced) if replaced is not None else "none",
        )
        self.write(
            {
                "path": str(path),
                "owner": user_name,
                "replaced": _account(replaced) if replaced is not None else None,
            }
        )


#: Added to ``c.JupyterHub.extra_handlers`` (prefixed with the hub's ``/hub/``).
HANDLERS = [
    (r"/api/oraculo/users/([^/]+)/releases/([^/]+)/([^/]+)", ReleaseAPIHandler),
]
