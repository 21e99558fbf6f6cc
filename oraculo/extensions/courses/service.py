"""Course material out, work back in, with the real nbgrader (0.9) and its exchange.

Each step is nbgrader's own command (``python -m nbgrader <step>``), run as a child process of
the user's server, as the user, so nothing blocks the server and nbgrader's traitlets state never
leaks between calls. A cohort (hub group) is an nbgrader course whose ``course_id`` is the
group's slug and whose exchange the hub made (:mod:`oraculo.hub.exchange`):

- the instructor keeps the course in ``~/courses/<slug>`` (``source/<assignment>/*.ipynb`` with
  nbgrader's cell metadata, ``gradebook.db``): ``release`` = ``generate_assignment`` +
  ``release_assignment``; ``collect`` = ``collect``; ``autograde`` = ``autograde --create`` (the
  scores go into nbgrader's gradebook); ``feedback`` = ``generate_feedback`` +
  ``release_feedback``.
- a student ``fetch``-es into ``~/assignments/<slug>/<assignment>``, ``submit``-s from there,
  and ``fetch_feedback``-s the graded HTML next to it. The submission carries the student's hub
  name, whatever the OS account is called.

Who may do what is the file system's answer in system-users mode (only the instructor's account
owns the course folders; students cannot list ``inbound``); the service also refuses instructor
steps to anyone the hub does not name as the cohort's instructor.

Membership is the hub's answer now, not the start's: the service asks the hub for the user's
cohorts and the ones they teach (``GET /hub/api/users/<name>/cohorts`` with the server's own
token, kept ``membership_ttl`` seconds), so a join or a leave applies to a running server. What
a running process cannot pick up (the OS group of a cohort joined after it started, in
``system-users`` and ``docker`` mode) is said plainly: :meth:`CourseService.overview` lists
those cohorts under ``restart_needed`` with a notice the Cohort panel shows.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from traitlets import Float, List, Unicode, default
from traitlets.config import LoggingConfigurable

from oraculo.extensions.base.errors import BadRequest, Conflict, Forbidden, NotFound, Unavailable
from oraculo.extensions.base.process import run_captured
from oraculo.extensions.courses.gradebook import read_scores
from oraculo.extensions.courses.models import (
    INSTRUCTOR_ACTIONS,
    NAME_PATTERN,
    ActionResult,
    Assignment,
    CourseView,
)
from oraculo.hub.exchange import EXCHANGE_ENV, course_exchange
from oraculo.hub.groups import group_slug
from oraculo.kernels.credentials import server_token

#: The nbgrader commands behind each step, in order.
STEPS: dict[str, list[str]] = {
    "release": ["generate_assignment", "release_assignment"],
    "collect": ["collect"],
    "autograde": ["autograde"],
    "feedback": ["generate_feedback", "release_feedback"],
    "fetch": ["fetch_assignment"],
    "submit": ["submit"],
    "fetch_feedback": ["fetch_feedback"],
}
#: Environment the nbgrader children never get: credentials (autograde runs students' code).
_SECRET = re.compile(r"TOKEN|SECRET|PASSWORD|KEY|JUPYTERHUB_API|JPY_API", re.I)
_LOG_LINE = re.compile(r"^\[(\w+) \| (INFO|WARNING|ERROR|CRITICAL)\] (.*)$")
_NAME = re.compile(NAME_PATTERN)


class CourseService(LoggingConfigurable):
    """Runs nbgrader's steps for the server's user in their cohorts."""

    owner = Unicode(help="The hub user this server belongs to (the student id in submissions).")
    exchange_root = Unicode(
        config=True,
        help="""Folder of the cohorts' nbgrader exchanges, made by the hub
        (oraculo.hub.exchange). Default ORACULO_EXCHANGE_DIR, which the spawner sets.""",
    )
    instructs = List(
        Unicode(),
        config=True,
        help="""Hub groups whose instructor this user is (the group's `instructors` property,
        read by the spawner). Default ORACULO_INSTRUCTS (comma-separated).""",
    )
    cohorts = List(
        Unicode(),
        config=True,
        help="""Hub groups this user belongs to or teaches, as the spawner saw them at start
        (used where the hub cannot be asked). Default ORACULO_COHORTS (comma-separated).""",
    )
    membership_ttl = Float(
        5.0,
        config=True,
        help="""Seconds the hub's answer on the user's cohorts is kept: a join or a leave
        reaches this running server within this long. 0 asks the hub every time.""",
    )
    courses_dir = Unicode(
        config=True,
        help="Where an instructor's courses live, one folder per cohort. Default ~/courses.",
    )
    assignments_dir = Unicode(
        config=True,
        help="Where students' fetched assignments go, per cohort. Default ~/assignments.",
    )
    os_user_prefix = Unicode(
        None,
        allow_none=True,
        config=True,
        help="""Where each hub user has an OS account named <prefix><hub name> (system-users
        mode), the prefix: a collect then sets aside submissions that another account made.
        None (one account for everyone): no such check. Default ORACULO_OS_USER_PREFIX, which
        the system-users spawner sets.""",
    )
    timeout = Float(
        900.0,
        config=True,
        help="Seconds one nbgrader step may take (autograde runs every submission).",
    )

    @default("exchange_root")
    def _default_exchange_root(self) -> str:
        return os.environ.get(EXCHANGE_ENV, "")

    @default("instructs")
    def _default_instructs(self) -> list[str]:
        return [g for g in os.environ.get("ORACULO_INSTRUCTS", "").split(",") if g]

    @default("cohorts")
    def _default_cohorts(self) -> list[str]:
        return [g for g in os.environ.get("ORACULO_COHORTS", "").split(",") if g]

    @default("os_user_prefix")
    def _default_os_user_prefix(self) -> str | None:
        return os.environ.get("ORACULO_OS_USER_PREFIX")

    @default("courses_dir")
    def _default_courses_dir(self) -> str:
        return os.path.join(os.path.expanduser("~"), "courses")

    @default("assignments_dir")
    def _default_assignments_dir(self) -> str:
        return os.path.join(os.path.expanduser("~"), "assignments")

    # --- membership, from the hub ----------------------------------------------------------

    _live: tuple[float, list[str], list[str]] | None = None

    async def membership(self) -> tuple[list[str], list[str]]:
        """``(cohorts, instructs)`` now: the hub's answer with this server's token, kept
        :attr:`membership_ttl` seconds; the start's values where there is no hub to ask or it
        does not answer."""
        now = time.monotonic()
        if self._live is not None and now - self._live[0] < self.membership_ttl:
            return self._live[1], self._live[2]
        api = os.environ.get("JUPYTERHUB_API_URL", "").rstrip("/")
        if not api or not self.owner:
            return list(self.cohorts), list(self.instructs)
        url = f"{api}/users/{quote(self.owner, safe='')}/cohorts"
        headers = {"Authorization": f"token {server_token()}"}
        try:
            async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
                r = await client.get(url, headers=headers)
            data = r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as e:
            self.log.warning("The hub did not say %s's cohorts: %s", self.owner, e)
            data = None
        if not isinstance(data, dict):
            return list(self.cohorts), list(self.instructs)
        cohorts = [str(c) for c in data.get("cohorts") or []]
        instructs = [str(c) for c in data.get("instructs") or []]
        self._live = (now, cohorts, instructs)
        return cohorts, instructs

    def _reachable(self, cohort: str) -> bool:
        """Whether this process can enter the cohort's exchange (in system-users mode, whether
        it holds the cohort's OS group: a process keeps the groups it started with)."""
        root, course_id = course_exchange(self.exchange_root, cohort)
        try:
            os.stat(os.path.join(root, course_id, "outbound"))
        except OSError:
            return False
        return True

    async def overview(self) -> dict[str, Any]:
        """The user's cohorts and the ones they teach now, and those joined after this server
        started that it cannot open until it restarts, with a notice saying so."""
        cohorts, instructs = await self.membership()
        stale = []
        if self.exchange_root:
            stale = [c for c in cohorts if not await asyncio.to_thread(self._reachable, c)]
        notice = None
        if stale:
            notice = (
                f"You joined {', '.join(stale)} after your server started. Your server keeps "
                "the access it started with: restart it to open the cohort's folder and "
                "assignments (File > Hub Control Panel > Stop My Server, then Start My "
                "Server). The cohort's AI policy applies already."
            )
        return {
            "cohorts": cohorts,
            "instructs": instructs,
            "restart_needed": stale,
            "notice": notice,
        }

    # --- paths ------------------------------------------------------------------------------

    async def _exchange(self, cohort: str) -> tuple[str, str]:
        if not _NAME.match(cohort) and group_slug(cohort) != cohort:
            raise BadRequest(f"Not a cohort name: {cohort!r}")
        if not self.exchange_root:
            raise NotFound(f"You are not a member of cohort {cohort}: this server has no cohorts.")
        cohorts, _ = await self.membership()
        if cohort not in cohorts:
            raise NotFound(f"You are not a member of cohort {cohort}.")
        root, course_id = course_exchange(self.exchange_root, cohort)
        if not await asyncio.to_thread(self._reachable, cohort):
            raise Conflict(
                f"You joined cohort {cohort} after your server started: restart your server to "
                "open its folder and assignments (File > Hub Control Panel > Stop My Server, "
                "then Start My Server)."
            )
        return root, course_id

    def course_dir(self, cohort: str) -> Path:
        return Path(self.courses_dir) / group_slug(cohort)

    async def is_instructor(self, cohort: str) -> bool:
        return cohort in (await self.membership())[1]

    # --- the steps --------------------------------------------------------------------------

    async def run(self, cohort: str, assignment: str, action: str) -> ActionResult:
        """Run one step (:data:`STEPS`) of ``assignment`` in ``cohort``."""
        if action not in STEPS:
            raise NotFound(f"No such step: {action!r} (one of {', '.join(STEPS)})")
        if not _NAME.match(assignment):
            raise BadRequest(f"Not an assignment name: {assignment!r}")
        root, course_id = await self._exchange(cohort)
        common = [
            f"--course={course_id}",
            f"--Exchange.root={root}",
            "--Exchange.path_includes_course=True",
        ]
        if action in INSTRUCTOR_ACTIONS:
            if not await self.is_instructor(cohort):
                raise Forbidden(f"Only cohort {cohort}'s instructor may {action} its assignments.")
            cwd = self.course_dir(cohort)
            if action == "release" and not (cwd / "source" / assignment).is_dir():
                raise NotFound(
                    f"No assignment {assignment!r} to release: put its notebooks in "
                    f"{cwd / 'source' / assignment}"
                )
            common.append(f"--CourseDirectory.root={cwd}")
            out = cwd
        else:
            cwd = Path(self.assignments_dir)
            common += [
                f"--CourseDirectory.student_id={self.owner}",
                f"--Exchange.assignment_dir={cwd}",
            ]
            out = cwd / course_id / assignment
        cwd.mkdir(parents=True, exist_ok=True, mode=0o700)
        log: list[str] = []
        if action == "collect":
            log += await asyncio.to_thread(self.set_aside_forged, root, course_id)
        for step in STEPS[action]:
            args = [step, assignment, *common]
            if step in ("generate_assignment", "release_assignment"):
                args.append("--force")
            if step == "autograde":
                args.append("--create")  # students join the gradebook as they submit
            if step == "collect":
                args.append("--update")  # a newer submission replaces the collected one
            log += await self._nbgrader(args, cwd)
        return ActionResult(
            cohort=cohort,
            assignment=assignment,
            action=action,  # type: ignore[arg-type]
            path=str(out),
            log=log,
        )

    def set_aside_forged(self, root: str, course_id: str) -> list[str]:
        """Before a collect: set aside every submission in ``inbound`` whose stated student id
        does not name the OS account that made it (a student submitting as a classmate), so
        nbgrader collects nothing under the classmate's name. It is renamed in place to
        ``.set-aside+<name>``, which nbgrader's ``*+<assignment>+*`` never matches (a rename to
        another folder would need write access to the student's own folder). Only where each
        user has an OS account (``system-users``): with one account for everyone (``process``
        mode) the owner says nothing. Blocking."""
        prefix = self.os_user_prefix
        if prefix is None:
            return []
        inbound = Path(root) / course_id / "inbound"
        said = []
        for name in _listdir(inbound):
            student = name.split("+", 1)[0]
            try:
                made_by = os.lstat(inbound / name).st_uid
                wanted = pwd.getpwnam(prefix + student).pw_uid
            except KeyError:
                wanted = -1
            except OSError:
                continue
            if made_by == wanted and not (inbound / name).is_symlink():
                continue
            try:
                maker = pwd.getpwuid(made_by).pw_name
            except KeyError:
                maker = str(made_by)
            try:
                os.rename(inbound / name, inbound / f".set-aside+{name}")
            except OSError as e:
                raise Conflict(
                    f"Could not set aside {name}, which another account made: {e}"
                ) from e
            said.append(
                f"Set aside {name}: it says it is {student}'s, but account {maker} made it; "
                "nothing collected from it."
            )
            self.log.warning("Cohort course %s: %s", course_id, said[-1])
        return said

    async def _nbgrader(self, args: list[str], cwd: Path) -> list[str]:
        env = {k: v for k, v in os.environ.items() if not _SECRET.search(k)}
        env["PYTHONUNBUFFERED"] = "1"
        try:
            status, output = await run_captured(
                [sys.executable, "-m", "nbgrader", *args], cwd, env, self.timeout
            )
        except TimeoutError:
            raise Unavailable(f"nbgrader {args[0]} took longer than {self.timeout:.0f} s") from None
        lines = output.splitlines()
        logged = [m.group(3) for m in map(_LOG_LINE.match, lines) if m]
        if status != 0:
            errors = [
                m.group(3)
                for m in map(_LOG_LINE.match, lines)
                if m and m.group(2) in ("ERROR", "CRITICAL") and "failed" not in m.group(3)
            ]
            message = errors[0] if errors else f"nbgrader {args[0]} failed"
            self.log.info("nbgrader %s failed: %s", args[0], "\n".join(lines[-20:]))
            if "ermission" in message or "don't own" in message or "not have access" in message:
                raise Forbidden(message)
            if "not found" in message.lower() or "No notebooks" in message:
                raise NotFound(message)
            raise Conflict(message)
        return logged

    # --- what there is ----------------------------------------------------------------------

    async def roster(self, cohort: str) -> dict[str, Any]:
        """The cohort as the hub sees it (members and their servers, sign-ups waiting, the
        policy and what it does now), read with this server's hub token, which holds
        ``read:groups`` only where its owner teaches (instructors only)."""
        if not await self.is_instructor(cohort):
            raise Forbidden(f"Only cohort {cohort}'s instructor may read its members.")
        api = os.environ.get("JUPYTERHUB_API_URL", "").rstrip("/")
        if not api:
            raise Unavailable("This server runs without a hub.")
        headers = {"Authorization": f"token {server_token()}"}
        try:
            async with httpx.AsyncClient(timeout=15, trust_env=False) as client:
                r = await client.get(f"{api}/cohorts/{quote(cohort, safe='')}", headers=headers)
        except httpx.HTTPError as e:
            raise Unavailable(f"The hub did not answer ({type(e).__name__}).") from e
        if r.status_code == 404:
            raise NotFound(f"The hub has no cohort {cohort}.")
        if r.status_code >= 400:
            raise Forbidden(f"The hub refused to show cohort {cohort} (HTTP {r.status_code}).")
        data: dict[str, Any] = r.json()
        return {
            k: data.get(k) for k in ("name", "instructors", "members", "pending", "policy", "now")
        }

    async def set_policy(self, cohort: str, policy: Any) -> dict[str, Any]:
        """Set the cohort's AI policy in the hub (``PUT /hub/api/cohorts/<c>/policy``) with this
        server's hub token, which holds ``custom:oraculo:cohorts:manage`` only for the cohorts
        its owner teaches; the hub validates it and its 400 message is passed on."""
        if not await self.is_instructor(cohort):
            raise Forbidden(f"Only cohort {cohort}'s instructor may set its AI policy.")
        if not isinstance(policy, dict):
            raise BadRequest("The policy must be a JSON object.")
        api = os.environ.get("JUPYTERHUB_API_URL", "").rstrip("/")
        if not api:
            raise Unavailable("This server runs without a hub.")
        headers = {"Authorization": f"token {server_token()}"}
        url = f"{api}/cohorts/{quote(cohort, safe='')}/policy"
        try:
            async with httpx.AsyncClient(timeout=15, trust_env=False) as client:
                r = await client.put(url, headers=headers, json=policy)
        except httpx.HTTPError as e:
            raise Unavailable(f"The hub did not answer ({type(e).__name__}).") from e
        try:
            data: dict[str, Any] = r.json()
        except ValueError:
            data = {}
        if r.status_code == 400:
            raise BadRequest(str(data.get("message") or "The hub refused the policy."))
        if r.status_code == 404:
            raise NotFound(f"The hub has no cohort {cohort}.")
        if r.status_code >= 400:
            raise Forbidden(
                f"The hub refused to set cohort {cohort}'s policy (HTTP {r.status_code})."
            )
        return {"policy": data.get("policy"), "now": data.get("now")}

    async def usage(self, cohort: str, models: Any) -> dict[str, Any]:
        """The cohort's AI use this week, from the model service (instructors only)."""
        await self._exchange(cohort)
        if not await self.is_instructor(cohort):
            raise Forbidden(f"Only cohort {cohort}'s instructor may read its usage.")
        if models is None or not models.configured:
            raise Unavailable("No model service is configured for this server.")
        r = await models.request(
            "GET", "v1/usage/summary", params={"group": cohort, "period": "week"}
        )
        return {"cohort": cohort, "period": "week", "summary": r.json()}

    async def view(self, cohort: str) -> CourseView:
        """The cohort's assignments as the caller sees them (with scores for its instructor)."""
        root, course_id = await self._exchange(cohort)
        instructor = await self.is_instructor(cohort)
        return await asyncio.to_thread(self._view, cohort, root, course_id, instructor)

    def _view(self, cohort: str, root: str, course_id: str, instructor: bool) -> CourseView:
        names: dict[str, Assignment] = {}

        def entry(name: str) -> Assignment:
            return names.setdefault(name, Assignment(name=name))

        for p in _listdir(Path(root) / course_id / "outbound"):
            entry(p).released = True
        mine = Path(self.assignments_dir) / course_id
        for p in _listdir(mine):
            if (mine / p).is_dir():
                entry(p).fetched = True
                entry(p).feedback = sorted(_listdir(mine / p / "feedback"))
        cache = Path(os.path.expanduser("~/.local/share/jupyter/nbgrader_cache")) / course_id
        for p in _listdir(cache):
            parts = p.split("+")
            if len(parts) >= 3 and parts[0] == self.owner and parts[1] in names:
                entry(parts[1]).submitted.append(parts[2])
        course = self.course_dir(cohort)
        if instructor:
            for p in _listdir(course / "source"):
                entry(p).in_source = True
            for name, (max_score, scores) in read_scores(course / "gradebook.db").items():
                a = entry(name)
                a.max_score, a.scores = max_score, scores
        return CourseView(
            cohort=cohort,
            course_id=course_id,
            instructor=instructor,
            course_dir=str(course),
            assignments=sorted(names.values(), key=lambda a: a.name),
        )


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(p for p in os.listdir(path) if not p.startswith("."))
    except OSError:
        return []
