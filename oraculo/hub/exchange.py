"""nbgrader's exchange, one per cohort, made by the hub so that students cannot read each other's
work.

Course material goes out and work comes back in through nbgrader's own exchange (see
:mod:`oraculo.extensions.courses`). nbgrader's documented multi-user layout is one world-writable
exchange root holding a folder per course, made by whoever releases first; on a shared machine a
student could make that folder first and read every submission. So the hub, as root, makes each
cohort's exchange before any member's server starts::

    <root>/                       root:root            0711  nobody lists the cohorts
    <root>/<slug>/                root:oraculo-<slug>  0710  the cohort's members only
    <root>/<slug>/exchange/       root:root            1777  nbgrader's Exchange.root (sticky)
    <root>/<slug>/exchange/<slug>/              <instructor>  0755  the course (course_id = slug)
                                 .../outbound/  <instructor>  0755  released material, read-only
                                 .../inbound/   <instructor>  2733  students write, cannot list
                                 .../feedback/  <instructor>  0711  feedback by unguessable name

The course folders belong to the cohort's instructor (the first hub user named in the group's
``instructors`` property who is also a member) from their first server start on; until then
root keeps them, so no student can take them. A submission is a folder of the student's own in
``inbound``, named ``<student>+<assignment>+<time>+<72 random bits>``: another student can
neither list ``inbound`` nor guess the name, and their own copy stays in their 0700 home.

In the ``process`` spawner's mode every user is the hub's account: the folders are made with the
same modes but keep nobody out.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from traitlets import Bool, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from oraculo.hub.groups import group_slug

#: The environment variable that tells user servers where the cohorts' exchanges are.
EXCHANGE_ENV = "ORACULO_EXCHANGE_DIR"
#: The hub group property naming a cohort's instructors (a list of hub user names).
INSTRUCTORS_PROPERTY = "instructors"

#: nbgrader's modes for a course's folders (ExchangeReleaseAssignment.init_dest).
COURSE_MODES = {"": 0o755, "outbound": 0o755, "inbound": 0o2733, "feedback": 0o711}


def instructors_of(group: Any) -> list[str]:
    """The hub user names a hub group (ORM object) names as its instructors."""
    names = (getattr(group, "properties", None) or {}).get(INSTRUCTORS_PROPERTY) or []
    return [str(n) for n in names] if isinstance(names, list) else []


def course_exchange(root: str, group: str) -> tuple[str, str]:
    """``(Exchange.root, course_id)`` of hub group ``group`` under the exchange ``root``."""
    slug = group_slug(group)
    return os.path.join(root, slug, "exchange"), slug


class CohortExchange(LoggingConfigurable):
    """Makes each cohort's nbgrader exchange with the ownership and modes described above."""

    enabled = Bool(
        config=True,
        help="""Give each hub group an nbgrader exchange (course material out, work back in).
        Default on (ORACULO_EXCHANGE=0 turns it off).""",
    )
    root = Unicode(
        config=True,
        help="""Folder holding one nbgrader exchange per hub group. Made root-owned 0711; in
        system-users mode every folder above it must let other accounts traverse (o+x).
        Default ORACULO_EXCHANGE_DIR, else <ORACULO_DATA_DIR>/exchange.""",
    )

    @default("enabled")
    def _default_enabled(self) -> bool:
        return os.environ.get("ORACULO_EXCHANGE", "1") != "0"

    @default("root")
    def _default_root(self) -> str:
        explicit = os.environ.get(EXCHANGE_ENV)
        if explicit:
            return os.path.abspath(explicit)
        data = os.environ.get("ORACULO_DATA_DIR", os.path.abspath(".data"))
        return os.path.join(data, "exchange")

    @validate("root")
    def _validate_root(self, proposal: Any) -> str:
        return os.path.abspath(str(proposal.value))

    def ensure(self, group: str, gid: int = -1, instructor_uid: int = -1) -> str:
        """Make ``group``'s exchange; ``gid``: the cohort's OS group (members only may enter),
        ``instructor_uid``: the account that owns the course folders from now on. Returns the
        nbgrader ``Exchange.root``. Blocking (runs in the spawner's thread)."""
        as_root = os.geteuid() == 0
        root = Path(self.root)
        root.mkdir(mode=0o711, parents=True, exist_ok=True)
        _own(root, 0, 0, 0o711, as_root)
        ex_root, slug = course_exchange(self.root, group)
        cohort = root / slug
        _mkdir(cohort)
        _own(cohort, 0, gid if gid >= 0 else 0, 0o710 if gid >= 0 else 0o755, as_root)
        _mkdir(Path(ex_root))
        _own(Path(ex_root), 0, 0, 0o1777, as_root)
        course = Path(ex_root) / slug
        for sub, mode in COURSE_MODES.items():
            path = course / sub if sub else course
            _mkdir(path)
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise RuntimeError(f"{path} is not a folder")
            # The course folders are ours or the instructor's: the sticky root above keeps
            # anyone else from replacing them, so only their owner changes here.
            owner = instructor_uid if instructor_uid >= 0 else st.st_uid
            _own(path, owner, -1, mode, as_root)
        return ex_root


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        if path.is_symlink() or not path.is_dir():
            raise RuntimeError(f"{path} is not a folder") from None


def _own(path: Path, uid: int, gid: int, mode: int, as_root: bool) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if as_root:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
