"""The hub's cohort API (``/hub/api/cohorts``) and the sign-up page that knows cohorts.

Served by the hub itself (the authenticator adds these handlers, ahead of JupyterHub's own), so
every check is a JupyterHub scope on the cohort's group: reads need ``read:groups!group=<c>``,
writes ("manage") ``custom:oraculo:cohorts:manage!group=<c>`` (an instructor's role,
:mod:`.cohorts`) or ``admin:groups`` (admins). Instructors hold no JupyterHub ``groups`` scope,
so the raw ``/hub/api/groups`` writes stay admins'; the handlers here check who may join
(:func:`.cohorts.check_joinable`) and then change the group with the hub's authority.

===========================================================  =========================  ======
``GET  /hub/api/cohorts``                                     the cohorts you manage     any
``POST /hub/api/cohorts`` ``{name, instructors, policy?}``    make a cohort              admin+
``GET  /hub/api/cohorts/<c>``                                 members, servers, policy   read
``GET|PUT /hub/api/cohorts/<c>/policy``                       the AI policy              manage
``POST|DELETE /hub/api/cohorts/<c>/members`` ``{users}``      join/leave, applied live   manage
``POST|DELETE /hub/api/cohorts/<c>/instructors`` ``{users}``  grant/strip the role       admin
``GET /hub/api/cohorts/<c>/signups``, ``POST|DELETE …/<u>``   approve/decline a sign-up  manage
``POST /hub/api/cohorts/<c>/invitations``                     a new invitation code      manage
``PUT /hub/api/cohorts/<c>/lti`` ``{contexts}``               LMS courses of the cohort  admin
``POST /hub/api/cohorts/join`` ``{code}``                     join by invitation         self
``GET /hub/api/users/<u>/cohorts``                            the user's courses now     self
===========================================================  =========================  ======

+ or a member of the operator's ``instructors`` group (``custom:oraculo:cohorts:create``): a
new cohort (not an existing group) with themselves as its only instructor.

Errors are ``{"status", "message", "reason", "type"}`` with the right status.
"""

from __future__ import annotations

import json
from http.client import responses
from typing import Any

from jupyterhub import orm
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.apihandlers.groups import GroupUsersAPIHandler
from jupyterhub.scopes import has_scope, needs_scope
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tornado import web

from oraculo.hub import cohorts
from oraculo.hub.cohort_live import apply_instructors, apply_membership
from oraculo.hub.cohort_page import page_handlers
from oraculo.policy import CohortPolicy, combine

#: Held by the operator's ``instructors`` role (oraculo.hub.config): make a cohort, teach it.
CREATE_SCOPE = cohorts.CREATE_SCOPE


class CohortIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=255)
    instructors: list[str] = Field(default_factory=list)
    policy: CohortPolicy | None = None


class UsersIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    users: list[str] = Field(min_length=1)


class CodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=200)


class ContextsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    contexts: list[str]


class CohortAPIHandler(APIHandler):
    """Base: JSON bodies through pydantic (400), cohort errors with status and type."""

    def parse(self, model: type[Any]) -> Any:
        try:
            return model.model_validate(json.loads(self.request.body or b"null"))
        except json.JSONDecodeError as e:
            raise cohorts.CohortError(400, f"The body is not JSON: {e}", "invalid_json") from e
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors()
            )
            raise cohorts.CohortError(400, f"Invalid request: {problems}", "invalid_request") from e

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, cohorts.CohortError):
            self.set_status(exc.status)
            status, message, type_ = exc.status, exc.message, exc.type
        elif isinstance(exc, web.HTTPError) and status_code < 500:
            status, message = status_code, exc.get_message() or responses.get(status_code, "")
            type_ = {403: "forbidden", 404: "not_found"}.get(status_code, "invalid_request")
        else:
            status, message, type_ = 500, "Unhandled error", "internal_error"
        self.set_header("Content-Type", "application/json")
        self.finish(
            json.dumps(
                {
                    "status": status,
                    "message": message,
                    "reason": responses.get(status, "Error"),
                    "type": type_,
                }
            )
        )

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, cohorts.CohortError):
            self.log.info("cohort API: %s %s", value.status, value.message)
            return
        super().log_exception(typ, value, tb)

    def require_manage(self, group_name: str) -> None:
        """403 unless the request may change ``group_name`` (the same answer whether or not
        the cohort exists, for anyone who may not)."""
        if self.current_user is None or not cohorts.may_manage(
            self.parsed_scopes, self.db, group_name
        ):
            raise cohorts.CohortError(403, f"You do not manage cohort {group_name}.", "forbidden")

    @property
    def by_admin(self) -> bool:
        return bool(has_scope("admin:groups", self.parsed_scopes, db=self.db))

    def users_named(self, names: list[str]) -> list[orm.User]:
        out = []
        for name in names:
            user = self.find_user(self.authenticator.normalize_username(name))
            if user is None:
                raise cohorts.CohortError(400, f"No such user: {name}", "user_not_found")
            out.append(user.orm_user)
        return out

    def cohort_model(self, group: orm.Group, full: bool) -> dict[str, Any]:
        rec = cohorts.record(group)
        policy = cohorts.policy_of(group)
        model: dict[str, Any] = {
            "name": group.name,
            "instructors": cohorts.instructors(self.db, group.name),
            "policy": policy.model_dump(mode="json") if policy else None,
            "now": combine({group.name: policy}).to_json() if policy else None,
        }
        if full:
            members = []
            for orm_user in sorted(group.users, key=lambda u: u.name):
                user = self.users[orm_user]
                spawner = user.spawners.get("")
                members.append(
                    {
                        "name": user.name,
                        "server": "running"
                        if spawner is not None and spawner.ready
                        else "pending"
                        if spawner is not None and spawner.pending
                        else "stopped",
                        "last_activity": user.last_activity.isoformat() + "Z"
                        if user.last_activity
                        else None,
                    }
                )
            model.update(
                members=members,
                pending=list(rec.get("pending", [])),
                invite_code=rec.get("invite_code"),
                invite_url=f"{self.hub.base_url}signup?invite={rec.get('invite_code')}",
                lti_contexts=list(rec.get("lti_contexts", [])),
            )
        return model

    def created(self, location: str, body: Any) -> None:
        self.set_status(201)
        self.set_header("Location", location)
        self.finish(json.dumps(body))


class CohortListHandler(CohortAPIHandler):
    async def get(self) -> None:
        if self.current_user is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        out = []
        for group in self.db.query(orm.Group).order_by(orm.Group.name):
            if cohorts.is_cohort(group) and has_scope(
                f"read:groups!group={group.name}", self.parsed_scopes, db=self.db
            ):
                out.append(self.cohort_model(group, full=False))
        self.finish(json.dumps({"cohorts": out}))

    async def post(self) -> None:
        """Make a cohort (:func:`.cohorts.create_by`, the hub page's form takes the same path)."""
        if self.current_user is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        if not cohorts.may_create(self.parsed_scopes, self.db):
            raise cohorts.CohortError(
                403, "Only admins and instructors may make a cohort.", "forbidden"
            )
        body = self.parse(CohortIn)
        group = cohorts.create_by(self, body.name, body.instructors, body.policy)
        await apply_instructors(self, group)
        self.created(
            f"{self.hub.base_url}api/cohorts/{group.name}", self.cohort_model(group, full=True)
        )


class CohortHandler(CohortAPIHandler):
    @needs_scope("read:groups")
    async def get(self, group_name: str) -> None:
        self.finish(json.dumps(self.cohort_model(cohorts.find(self.db, group_name), full=True)))


class CohortPolicyHandler(CohortAPIHandler):
    @needs_scope("read:groups")
    async def get(self, group_name: str) -> None:
        group = cohorts.find(self.db, group_name)
        policy = cohorts.policy_of(group) or CohortPolicy()
        self.finish(
            json.dumps(
                {
                    "policy": policy.model_dump(mode="json"),
                    "now": combine({group.name: policy}).to_json(),
                }
            )
        )

    async def put(self, group_name: str) -> None:
        self.require_manage(group_name)
        group = cohorts.find(self.db, group_name)
        policy = self.parse(CohortPolicy)
        cohorts.set_policy(self.db, group, policy)
        self.log.info("Policy of cohort %s set by %s", group.name, self.current_user.name)
        self.finish(
            json.dumps(
                {
                    "policy": policy.model_dump(mode="json"),
                    "now": combine({group.name: policy}).to_json(),
                }
            )
        )


class CohortMembersHandler(CohortAPIHandler):
    """Join and leave; a member's running server gets the change at once where it can."""

    async def post(self, group_name: str) -> None:
        await self._change(group_name, join=True)

    async def delete(self, group_name: str) -> None:
        await self._change(group_name, join=False)

    async def _change(self, group_name: str, join: bool) -> None:
        self.require_manage(group_name)
        group = cohorts.find(self.db, group_name)
        names = [self.authenticator.normalize_username(n) for n in self.parse(UsersIn).users]
        pending = set(cohorts.record(group).get("pending", []))
        # a sign-up waiting for this cohort (it may have no hub user yet): approving it joins
        waiting = [n for n in names if join and n in pending]
        users = self.users_named([n for n in names if n not in waiting])
        if join:
            cohorts.check_joinable(group, users, by_admin=self.by_admin)
        changed = []
        for name in waiting:
            cohorts.approve(self, group, name)
            changed.append(self.find_user(name).orm_user)
        for user in users:
            if (cohorts.join if join else cohorts.leave)(self.db, group, user):
                changed.append(user)
                if not join:
                    cohorts.remove_pending(self.db, group, user.name)
        live = {u.name: await apply_membership(self, u) for u in changed}
        self.finish(json.dumps({"members": sorted(u.name for u in group.users), "live": live}))


class CohortInstructorsHandler(CohortAPIHandler):
    @needs_scope("admin:groups")
    async def post(self, group_name: str) -> None:
        cohorts.find(self.db, group_name)
        cohorts.set_instructors(
            self.db, group_name, self.users_named(self.parse(UsersIn).users), []
        )
        self.finish(json.dumps({"instructors": cohorts.instructors(self.db, group_name)}))

    @needs_scope("admin:groups")
    async def delete(self, group_name: str) -> None:
        cohorts.find(self.db, group_name)
        cohorts.set_instructors(
            self.db, group_name, [], self.users_named(self.parse(UsersIn).users)
        )
        self.finish(json.dumps({"instructors": cohorts.instructors(self.db, group_name)}))


class CohortSignupsHandler(CohortAPIHandler):
    """Sign-ups that asked for the cohort, approved (or declined) by its instructors."""

    @needs_scope("read:groups")
    async def get(self, group_name: str) -> None:
        group = cohorts.find(self.db, group_name)
        self.finish(json.dumps({"pending": cohorts.record(group).get("pending", [])}))


class CohortSignupHandler(CohortAPIHandler):
    async def post(self, group_name: str, pending_name: str) -> None:
        self.require_manage(group_name)
        cohorts.approve(self, cohorts.find(self.db, group_name), pending_name)
        self.finish(json.dumps({"approved": pending_name, "cohort": group_name}))

    async def delete(self, group_name: str, pending_name: str) -> None:
        self.require_manage(group_name)
        group = cohorts.find(self.db, group_name)
        if not cohorts.remove_pending(self.db, group, pending_name):
            raise cohorts.CohortError(
                404,
                f"{pending_name} has no sign-up waiting for cohort {group_name}.",
                "not_pending",
            )
        self.set_status(204)
        self.finish()


class CohortInvitationsHandler(CohortAPIHandler):
    async def post(self, group_name: str) -> None:
        self.require_manage(group_name)
        group = cohorts.find(self.db, group_name)
        code = cohorts.rotate_code(self.db, group)
        self.created(
            f"{self.hub.base_url}signup?invite={code}",
            {"code": code, "url": f"{self.hub.base_url}signup?invite={code}"},
        )


class CohortLtiHandler(CohortAPIHandler):
    @needs_scope("admin:groups")
    async def put(self, group_name: str) -> None:
        group = cohorts.find(self.db, group_name)
        cohorts.set_lti_contexts(self.db, group, self.parse(ContextsIn).contexts)
        self.finish(json.dumps({"lti_contexts": cohorts.record(group)["lti_contexts"]}))


class CohortJoinHandler(CohortAPIHandler):
    """A signed-in user joins the cohort whose invitation code they hold."""

    async def post(self) -> None:
        current = self.current_user
        if current is None or getattr(current, "kind", "") != "user":
            raise web.HTTPError(403, "Only a signed-in user can join a cohort.")
        if not has_scope(f"read:users:groups!user={current.name}", self.parsed_scopes, db=self.db):
            raise web.HTTPError(403, "This token cannot act for its user.")
        group = cohorts.by_code(self.db, self.parse(CodeIn).code)
        if group is None:
            raise cohorts.CohortError(404, "No cohort has this invitation code.", "bad_invite")
        cohorts.join(self.db, group, current.orm_user)
        live = await apply_membership(self, current.orm_user)
        self.finish(json.dumps({"cohort": group.name, "live": live}))


class UserCohortsHandler(CohortAPIHandler):
    """The groups whose course a user's server gets, and those they teach, now
    (:func:`.cohorts.courses_of`): the user's running server asks with its own token
    (``read:users:groups!user``), so a join or a leave reaches it without a restart."""

    @needs_scope("read:users:groups")
    async def get(self, user_name: str) -> None:
        user = self.find_user(user_name)
        if user is None:
            raise cohorts.CohortError(404, f"No such user: {user_name}", "user_not_found")
        groups, instructs = cohorts.courses_of(self.db, user.orm_user)
        self.finish(json.dumps({"name": user.name, "cohorts": groups, "instructs": instructs}))


class LiveGroupUsersAPIHandler(GroupUsersAPIHandler):
    """JupyterHub's own ``/hub/api/groups/<group>/users`` (admins; the admin page uses it), plus
    the live steps the cohort API takes: a member added or removed has their running server
    brought up to date (:func:`apply_membership`), and a cohort's waiting sign-up of someone
    removed is dropped. JupyterHub's answer is unchanged; the live outcome is logged."""

    async def post(self, group_name: str) -> None:
        await self._live(group_name, super().post)

    async def delete(self, group_name: str) -> None:
        await self._live(group_name, super().delete)

    async def _live(self, group_name: str, change: Any) -> None:
        group = orm.Group.find(self.db, group_name)
        before = {u.name for u in group.users} if group is not None else set()
        result = change(group_name)
        if result is not None and hasattr(result, "__await__"):
            await result
        group = orm.Group.find(self.db, group_name)
        if group is None:
            return
        after = {u.name for u in group.users}
        for name in sorted(before ^ after):
            orm_user = orm.User.find(self.db, name)
            if orm_user is None:
                continue
            if name in before and cohorts.is_cohort(group):
                cohorts.remove_pending(self.db, group, name)
            live = await apply_membership(self, orm_user)
            self.log.info("Group %s, %s: %s", group_name, name, live["state"])


def api_handlers(app: Any = None) -> list[tuple[str, Any]]:
    """The cohort API routes, the instructors' page and JupyterHub's group-membership API with
    the live steps (JupyterHub prefixes them with the hub's base URL). With the hub ``app``
    (the authenticator's ``get_handlers``, at start, after the roles are loaded) instructor
    roles made by an older version get today's scopes."""
    db = getattr(app, "db", None)
    if db is not None:
        changed = cohorts.upgrade_roles(db)
        if changed:
            app.log.warning("Instructor roles given today's scopes: %s", ", ".join(changed))
    c = r"/api/cohorts/(?P<group_name>[^/]+)"
    return [
        *page_handlers(),
        (r"/api/groups/([^/]+)/users", LiveGroupUsersAPIHandler),
        (r"/api/cohorts", CohortListHandler),
        (r"/api/cohorts/join", CohortJoinHandler),
        (r"/api/users/(?P<user_name>[^/]+)/cohorts", UserCohortsHandler),
        (c, CohortHandler),
        (c + r"/policy", CohortPolicyHandler),
        (c + r"/members", CohortMembersHandler),
        (c + r"/instructors", CohortInstructorsHandler),
        (c + r"/signups", CohortSignupsHandler),
        (c + r"/signups/(?P<pending_name>[^/]+)", CohortSignupHandler),
        (c + r"/invitations", CohortInvitationsHandler),
        (c + r"/lti", CohortLtiHandler),
    ]
