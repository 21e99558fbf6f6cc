"""Shared folders per hub group, made by the hub when a member's server starts.

Each JupyterHub group (an educator's cohort, a team) gets a folder ``<root>/<slug>``. At every
spawn the spawner calls :class:`GroupFolders` for the user's groups: it makes the folders,
links them into the user's home as ``~/shared/<slug>`` (never over a file of the user's own),
and the spawner hands their paths to the user server as ``ORACULO_SHARED_DIRS`` (read by the
workspace index and the agents catalogue).

Who may open a folder depends on the spawner:

- ``system-users``: one OS group per hub group (``oraculo-<slug>``), the folder root-owned,
  group ``oraculo-<slug>``, mode 3770 (setgid: what members make there stays in the group;
  sticky: a member renames or removes only what they made there, so nobody can swap the
  root-owned ``published/`` and ``runs/`` folders the hub makes in it for folders of their own).
  A member's OS account is added to the OS groups of their hub groups and removed from the
  other ``oraculo-*`` groups before their server starts, so the server starts with exactly
  those supplementary groups. A server that is already running keeps the groups it started
  with until it is restarted.
- ``docker``: only the member's group folders are mounted in the container (at the same path);
  as root the hub also makes the OS group and adds its gid to the container.
- ``process``: the folders are made and linked, but every user runs as the hub's account,
  so nothing keeps non-members out.

Group names become folder and OS group names, so they are mapped (:func:`group_slug`) to
``[a-z0-9][a-z0-9_-]*``, at most 24 characters: a name that already fits is kept, any other
(``CS 101``, ``../x``) becomes a cleaned prefix plus 8 hex digits of its SHA-256.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import os
import re
import stat
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from traitlets import Bool, Unicode, default, validate
from traitlets.config import LoggingConfigurable

#: The environment variable that carries a server's group folders (os.pathsep-separated).
SHARED_DIRS_ENV = "ORACULO_SHARED_DIRS"
#: Mode of a group folder in system-users mode: the group's (setgid), sticky (see above).
GROUP_FOLDER_MODE = 0o3770
#: Longest slug: with the ``oraculo-`` prefix an OS group name stays within 32 characters.
MAX_SLUG = 24
_SLUG = re.compile(rf"[a-z0-9][a-z0-9_-]{{0,{MAX_SLUG - 1}}}\Z")


def group_slug(name: str) -> str:
    """A folder and OS-group-safe name for hub group ``name`` (see the module docstring)."""
    if _SLUG.match(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    base = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_")
    base = base[: MAX_SLUG - len(digest) - 1].rstrip("-_")
    return f"{base}-{digest}" if base else f"g-{digest}"


def user_groups(spawner: Any) -> list[str]:
    """The names of the hub groups the spawner's user belongs to, sorted."""
    return sorted({g.name for g in getattr(spawner.user, "groups", [])})


_GROUPADD_LOCK = threading.Lock()
#: Members' spawns (hook threads of one hub) prepare a cohort's folders at the same moment: one
#: at a time checks, moves aside and makes ``material``.
_MATERIAL_LOCK = threading.Lock()


#: One shadow-utils command (useradd, groupadd, gpasswd) at a time from this hub: spawns run
#: them in threads, side by side, and each locks /etc/passwd or /etc/group while it runs.
SHADOW_LOCK = threading.Lock()


def run_shadow_command(cmd: list[str]) -> None:
    """Run a shadow-utils command; retry briefly while another process holds /etc/group's
    lock."""
    for attempt in range(10):
        with SHADOW_LOCK:
            done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode == 0:
            return
        if "lock" not in done.stderr.lower() or attempt == 9:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
        time.sleep(0.2)


class GroupFolders(LoggingConfigurable):
    """Makes hub groups' shared folders, their OS groups and the links in members' homes."""

    enabled = Bool(
        config=True,
        help="""Give each hub group a shared folder that its members' servers see.
        Default on (ORACULO_GROUP_FOLDERS=0 turns it off).""",
    )
    root = Unicode(
        config=True,
        help="""Folder holding one folder per hub group. It is made mode 0711 (members reach
        their group's folder, nobody lists the others); in system-users mode every directory
        above it must let other accounts traverse (o+x). Default ORACULO_GROUPS_DIR, else
        <ORACULO_DATA_DIR>/groups.""",
    )
    os_group_prefix = Unicode(
        "oraculo-",
        config=True,
        help="""Prefix of the OS group made for each hub group (system-users and, as root,
        docker). The hub owns every OS group with this prefix: at each spawn it removes the
        user from those that are not their hub groups'.""",
    )
    home_link_dir = Unicode(
        "shared",
        config=True,
        help="""Folder in each user's home that holds a link to each of their group folders
        (~/shared/<group>); "" makes no links.""",
    )

    @default("enabled")
    def _default_enabled(self) -> bool:
        return os.environ.get("ORACULO_GROUP_FOLDERS", "1") != "0"

    @default("root")
    def _default_root(self) -> str:
        explicit = os.environ.get("ORACULO_GROUPS_DIR")
        if explicit:
            return os.path.abspath(explicit)
        data = os.environ.get("ORACULO_DATA_DIR", os.path.abspath(".data"))
        return os.path.join(data, "groups")

    @validate("root")
    def _validate_root(self, proposal: Any) -> str:
        return os.path.abspath(str(proposal.value))

    @validate("home_link_dir")
    def _validate_home_link_dir(self, proposal: Any) -> str:
        value = str(proposal.value)
        if value and (value.startswith(".") or "/" in value):
            raise ValueError(f"GroupFolders.home_link_dir must be a plain folder name: {value!r}")
        return value

    def folder(self, group: str) -> Path:
        return Path(self.root) / group_slug(group)

    def os_group(self, group: str) -> str:
        return self.os_group_prefix + group_slug(group)

    def staff_os_group(self, cohort: str) -> str:
        """The OS group of a cohort's instructors (they write its ``material`` folder)."""
        return self.os_group_prefix + group_slug(f"{cohort}/instructors")

    # --- folders and OS groups ----------------------------------------------------------------

    def ensure_folders(self, groups: Iterable[str], os_groups: bool = False) -> dict[str, int]:
        """Make the folders of ``groups``; with ``os_groups``, each one root-owned, 3770, in an
        OS group of its own (made when missing). Returns ``{folder path: gid or -1}``."""
        groups = list(groups)
        if not groups:
            return {}
        root = Path(self.root)
        root.mkdir(mode=0o711, parents=True, exist_ok=True)
        if stat.S_IMODE(root.stat().st_mode) != 0o711:
            os.chmod(root, 0o711)
        made: dict[str, int] = {}
        for group in groups:
            path = self.folder(group)
            try:
                path.mkdir(mode=0o770)
            except FileExistsError:
                if path.is_symlink() or not path.is_dir():
                    self.log.error("Group folder %s is not a folder; %s gets none", path, group)
                    continue
            gid = self.ensure_os_group(group) if os_groups else -1
            if gid >= 0:
                os.chown(path, 0, gid)
                os.chmod(path, GROUP_FOLDER_MODE)
                self._ensure_published(path, gid)
            made[str(path)] = gid
        return made

    def _ensure_published(self, folder: Path, gid: int) -> None:
        """``<folder>/published`` and ``<folder>/runs``: root-owned, the group's, 3770 (sticky:
        a release or a shared run there can be replaced only by whoever wrote it, see
        oraculo.extensions.agents.trust). Members can write in ``folder``, so nothing in it is
        followed, and a ``published`` or ``runs`` a member made (before the folder was sticky)
        is moved aside, never adopted: its files would pass for releases."""
        parent = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            for name in ("published", "runs"):
                try:
                    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                if st is not None and st.st_uid != 0:
                    aside = f"{name}.moved-{int(time.time())}-{st.st_uid}"
                    os.rename(name, aside, src_dir_fd=parent, dst_dir_fd=parent)
                    self.log.warning(
                        "%s/%s belonged to uid %d, not root: moved to %s",
                        folder,
                        name,
                        st.st_uid,
                        aside,
                    )
                try:
                    os.mkdir(name, 0o700, dir_fd=parent)
                except FileExistsError:
                    pass
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
                except OSError as e:
                    self.log.error("%s/%s is not a folder (%s): left alone", folder, name, e)
                    continue
                try:
                    os.fchown(fd, 0, gid)
                    os.fchmod(fd, 0o3770)
                finally:
                    os.close(fd)
        finally:
            os.close(parent)

    def ensure_material(self, cohort: str, os_groups: bool = False) -> None:
        """``<cohort folder>/material``: course material that students read and instructors
        write. With ``os_groups``: root-owned, the instructors' OS group's, mode 2775 (members
        reach it through the cohort folder, 2770, and may only read; non-members cannot reach
        it). Students can write in the cohort folder, so nothing there is followed, and a
        ``material`` that is not the hub's (a student made it first) is moved aside."""
        with _MATERIAL_LOCK:
            self._ensure_material(cohort, os_groups)

    def _ensure_material(self, cohort: str, os_groups: bool) -> None:
        folder = self.folder(cohort)
        parent = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            for _ in range(3):
                try:
                    st = os.stat("material", dir_fd=parent, follow_symlinks=False)
                except FileNotFoundError:
                    try:
                        os.mkdir("material", 0o755, dir_fd=parent)
                        break
                    except FileExistsError:
                        continue  # a student made one meanwhile: check it again
                if stat.S_ISDIR(st.st_mode) and (not os_groups or st.st_uid == 0):
                    break
                aside = f"material.moved-{st.st_uid}-{time.time_ns()}"
                try:
                    os.rename("material", aside, src_dir_fd=parent, dst_dir_fd=parent)
                except FileNotFoundError:
                    continue  # its maker moved it meanwhile
                self.log.warning("%s/material was not the hub's: moved to %s", folder, aside)
            else:
                raise RuntimeError(f"{folder}/material changed under the hub three times")
            if not os_groups:
                return
            gid = self.ensure_os_group_named(self.staff_os_group(cohort))
            fd = os.open("material", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
            try:
                os.fchown(fd, 0, gid)
                os.fchmod(fd, 0o2775)
            finally:
                os.close(fd)
        finally:
            os.close(parent)

    def ensure_os_group(self, group: str) -> int:
        return self.ensure_os_group_named(self.os_group(group))

    def ensure_os_group_named(self, name: str) -> int:
        # two members' spawns (hook threads of one hub) must not both groupadd: both can
        # succeed, leaving two groups of one name (the folder in one, the members in the other)
        with _GROUPADD_LOCK:
            try:
                return grp.getgrnam(name).gr_gid
            except KeyError:
                pass
            try:
                run_shadow_command(["groupadd", name])
                self.log.info("Created OS group %s", name)
            except RuntimeError:
                if not _group_exists(name):  # another hub made it meanwhile: fine
                    raise
            return grp.getgrnam(name).gr_gid

    def sync_membership(
        self, os_user: str, groups: Iterable[str], teaching: Iterable[str] = ()
    ) -> None:
        """Make ``os_user`` a member of exactly the OS groups of ``groups`` (and, for the
        cohorts in ``teaching``, of their instructors' group too) among the OS groups this hub
        manages (``os_group_prefix``); other groups are left alone."""
        want = {self.os_group(g) for g in groups} | {self.staff_os_group(c) for c in teaching}
        have = {
            g.gr_name
            for g in grp.getgrall()
            if g.gr_name.startswith(self.os_group_prefix) and os_user in g.gr_mem
        }
        for name in sorted(want - have):
            run_shadow_command(["gpasswd", "--add", os_user, name])
            self.log.info("Added %s to OS group %s", os_user, name)
        for name in sorted(have - want):
            run_shadow_command(["gpasswd", "--delete", os_user, name])
            self.log.info("Removed %s from OS group %s", os_user, name)

    # --- links in the user's home ---------------------------------------------------------------

    def link_into_home(self, home: str, folders: Iterable[str], owner: tuple[int, int]) -> None:
        """Keep ``~/<home_link_dir>/<slug>`` → each folder, and drop links of ours to folders
        the user no longer has. Nothing of the user's own is replaced, and no path inside the
        home is followed (it runs as root in a folder the user controls)."""
        if not self.home_link_dir:
            return
        targets = {Path(f).name: str(f) for f in folders}
        try:
            home_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as e:
            self.log.warning("Cannot open home %s for group links: %s", home, e)
            return
        try:
            if targets:
                try:
                    os.mkdir(self.home_link_dir, 0o755, dir_fd=home_fd)
                    os.chown(self.home_link_dir, *owner, dir_fd=home_fd, follow_symlinks=False)
                except FileExistsError:
                    pass
            try:
                links_fd = os.open(
                    self.home_link_dir,
                    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                    dir_fd=home_fd,
                )
            except OSError as e:
                if e.errno != errno.ENOENT:
                    self.log.warning("%s/%s is not a folder: no group links", home, e.filename)
                return
            try:
                self._sync_links(links_fd, targets, owner)
            finally:
                os.close(links_fd)
        finally:
            os.close(home_fd)

    def _sync_links(self, fd: int, targets: dict[str, str], owner: tuple[int, int]) -> None:
        ours = str(Path(self.root)) + os.sep
        for entry in os.listdir(fd):
            try:
                current = os.readlink(entry, dir_fd=fd)
            except OSError:
                continue  # not a link: the user's own
            if current.startswith(ours) and targets.get(entry) != current:
                os.unlink(entry, dir_fd=fd)
        for slug, target in targets.items():
            try:
                os.symlink(target, slug, dir_fd=fd)
                os.chown(slug, *owner, dir_fd=fd, follow_symlinks=False)
            except FileExistsError:
                try:
                    same = os.readlink(slug, dir_fd=fd) == target
                except OSError:
                    same = False
                if not same:
                    self.log.info("Not linking group folder %s: the user has their own", slug)


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def reachable_by_others(path: str) -> bool:
    """Whether accounts other than the owner can traverse every folder above ``path``."""
    for parent in Path(path).parents:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
    return True
