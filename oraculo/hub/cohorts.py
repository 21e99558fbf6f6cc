"""Cohorts: a hub group with instructors, an invitation code, sign-ups waiting for approval and
an AI policy (:mod:`oraculo.policy`), all kept in the hub's own database.

- The **group** holds the students (its members). Its properties hold the policy
  (``oraculo_policy``) and the cohort's own record (``oraculo_cohort``: invitation code, sign-ups
  waiting, LMS course ids).
- Each cohort has a **role** ``instructor-<slug>`` whose scopes are all filtered to the group
  (``!group=<cohort>``): list and read its members, start and stop their servers, read the
  group, and ``custom:oraculo:cohorts:manage`` - the right to use the cohort API's writes
  (membership, policy, sign-ups, invitations). Not JupyterHub's ``groups`` scope: with it an
  instructor could add any hub user to the group (an admin, another cohort's student) or put
  raw properties past the policy's validation. Every membership and policy write goes through
  the cohort API, which checks who may join (:func:`check_joinable`) and then acts with the
  hub's authority. Nothing else: no other cohort, no admin page (``admin-ui``), no other user.
  The role is granted to each instructor.
  It is marked ``managed_by_auth`` so a hub restart keeps it (JupyterHub deletes roles made at
  run time that are neither in ``load_roles`` nor managed) - JupyterHub never resets these
  unless ``Authenticator.reset_managed_roles_on_startup`` is set.

Functions here work on the hub's ORM session; the REST handlers (:mod:`.cohort_handlers`) call
them.
"""

from __future__ import annotations

import hmac
import re
import secrets
from typing import Any

from jupyterhub import orm, roles
from jupyterhub.scopes import has_scope

from oraculo.hub.exchange import instructors_of
from oraculo.hub.groups import group_slug
from oraculo.policy import POLICY_PROPERTY, CohortPolicy, combine

#: The group property holding a cohort's own record.
COHORT_PROPERTY = "oraculo_cohort"
ROLE_PREFIX = "instructor-"
#: The custom scope (filtered ``!group=<cohort>``) that lets a token use the cohort API's writes.
MANAGE_SCOPE = "custom:oraculo:cohorts:manage"
#: Held by the operator's ``instructors`` role (oraculo.hub.config): make a cohort, teach it.
CREATE_SCOPE = "custom:oraculo:cohorts:create"
#: A new cohort's name: it names a folder, an OS group and an nbgrader course too.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class CohortError(Exception):
    """A request about a cohort that cannot be done: HTTP ``status`` and a stable ``type``."""

    def __init__(self, status: int, message: str, type_: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_


def role_name(cohort: str) -> str:
    return ROLE_PREFIX + group_slug(cohort)


def instructor_scopes(cohort: str) -> list[str]:
    """What an instructor of ``cohort`` may do: everything filtered to the cohort's group."""
    f = f"!group={cohort}"
    return [
        f"list:users{f}",
        f"read:users{f}",
        f"servers{f}",
        f"read:groups{f}",
        f"read:roles:users{f}",
        f"{MANAGE_SCOPE}{f}",
    ]


def may_manage(parsed_scopes: Any, db: Any, cohort: str) -> bool:
    """Whether a request's scopes may change ``cohort`` through the cohort API: an admin's
    (``admin:groups``) or an instructor's of that cohort."""
    return bool(
        has_scope("admin:groups", parsed_scopes, db=db)
        or has_scope(f"{MANAGE_SCOPE}!group={cohort}", parsed_scopes, db=db)
    )


def may_create(parsed_scopes: Any, db: Any) -> bool:
    """Whether a request's scopes may make a cohort: an admin's (``admin:groups``) or a member's
    of the operator's ``instructors`` group (:data:`CREATE_SCOPE`)."""
    return bool(
        has_scope("admin:groups", parsed_scopes, db=db)
        or has_scope(CREATE_SCOPE, parsed_scopes, db=db)
    )


def create_by(
    handler: Any, name: str, instructor_names: list[str], policy: CohortPolicy | None
) -> orm.Group:
    """Make cohort ``name`` for the signed-in user of a hub ``handler`` (the cohort API's
    ``POST`` and the hub page's form both come here). Admins make any cohort with any
    instructors; a holder of :data:`CREATE_SCOPE` makes a new one (never an existing group)
    whose only instructor is themselves. Refuses with a :class:`CohortError` before anything
    changes."""
    db, scopes, current = handler.db, handler.parsed_scopes, handler.current_user
    if current is None or not may_create(scopes, db):
        raise CohortError(403, "Only admins and instructors may make a cohort.", "forbidden")
    by_admin = bool(has_scope("admin:groups", scopes, db=db))
    normalize = handler.authenticator.normalize_username
    names = [normalize(n) for n in instructor_names]
    if not by_admin:
        if getattr(current, "kind", "") != "user":
            raise CohortError(403, "Only a user can make a cohort.", "forbidden")
        if any(n != current.name for n in names):
            raise CohortError(
                403, "You may make a cohort with yourself as instructor only.", "forbidden"
            )
        names = [current.name]
    if not NAME.match(name):
        raise CohortError(
            400,
            f"{name!r} cannot name a cohort: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (for instance bio-101).",
            "invalid_name",
        )
    if not by_admin and orm.Group.find(db, name=name) is not None:
        raise CohortError(409, f"A group named {name} exists already.", "cohort_exists")
    users = []
    for n in names:
        user = orm.User.find(db, n)
        if user is None:
            raise CohortError(400, f"No such user: {n}", "user_not_found")
        users.append(user)
    group = create(db, name, users, policy)
    handler.log.info("Cohort %s created by %s, instructors %s", name, current.name, names)
    return group


def upgrade_roles(db: Any) -> list[str]:
    """Give every cohort's instructor role today's scopes (roles made by an older version held
    JupyterHub's ``groups!group=`` scope). Run at hub start; returns the roles changed."""
    changed = []
    cohort_of = {role_name(g.name): g.name for g in db.query(orm.Group) if is_cohort(g)}
    for role in db.query(orm.Role):
        cohort = cohort_of.get(role.name)
        if cohort is not None and sorted(role.scopes or []) != sorted(instructor_scopes(cohort)):
            role.scopes = instructor_scopes(cohort)
            changed.append(role.name)
    if changed:
        db.commit()
    return changed


def check_joinable(group: orm.Group, users: list[orm.User], by_admin: bool) -> None:
    """Who an instructor may put in their cohort: members already, and people who asked to
    join it (a sign-up waiting for this cohort). Never a hub admin. Everyone else joins with the
    invitation code themselves (or an LMS launch), or an admin adds them. Admins add anyone.
    Refuses the whole request (403 ``not_allowed``) before anything changes."""
    if by_admin:
        return
    pending = set(record(group).get("pending", []))
    refused = []
    for user in users:
        if user in group.users:
            continue
        if user.admin:
            refused.append(f"{user.name} (a hub admin)")
        elif user.name not in pending:
            refused.append(f"{user.name} (has not asked to join)")
    if refused:
        raise CohortError(
            403,
            f"An instructor cannot add {', '.join(refused)} to cohort {group.name}: people "
            "join with the invitation link, or by signing up for the cohort and being approved; "
            "an admin can add anyone.",
            "not_allowed",
        )


def is_cohort(group: orm.Group) -> bool:
    properties = getattr(group, "properties", None)
    return isinstance(properties, dict) and COHORT_PROPERTY in properties


def record(group: orm.Group) -> dict[str, Any]:
    props = group.properties if isinstance(group.properties, dict) else {}
    rec = props.get(COHORT_PROPERTY)
    return dict(rec) if isinstance(rec, dict) else {}


def _save(db: Any, group: orm.Group, rec: dict[str, Any] | None = None, **extra: Any) -> None:
    props = dict(group.properties or {})
    if rec is not None:
        props[COHORT_PROPERTY] = rec
    props.update(extra)
    group.properties = props  # a new dict: the JSON column sees the change
    db.commit()


def find(db: Any, name: str) -> orm.Group:
    group = orm.Group.find(db, name=name)
    if group is None or not is_cohort(group):
        raise CohortError(404, f"No such cohort: {name}", "cohort_not_found")
    return group


def create(
    db: Any, name: str, instructors: list[orm.User], policy: CohortPolicy | None
) -> orm.Group:
    """Make cohort ``name`` (its group, record, role; an existing plain group becomes a cohort)
    and grant its role to ``instructors``."""
    if not name or len(name) > 255 or "/" in name:
        raise CohortError(400, "A cohort name is 1-255 characters without '/'.", "invalid_name")
    group = orm.Group.find(db, name=name)
    if group is not None and is_cohort(group):
        raise CohortError(409, f"Cohort {name} exists already.", "cohort_exists")
    if group is None:
        group = orm.Group(name=name)
        db.add(group)
        db.commit()
    rec = {"invite_code": new_code(), "pending": [], "lti_contexts": []}
    extra = {POLICY_PROPERTY: policy.model_dump(mode="json")} if policy is not None else {}
    _save(db, group, rec, **extra)
    role = roles.create_role(
        db,
        {
            "name": role_name(name),
            "description": f"Instructor of cohort {name}: its members, servers and policy only.",
            "scopes": instructor_scopes(name),
            "managed_by_auth": True,
        },
    )
    for user in instructors:
        roles.grant_role(db, user, role)
    _record_instructors(db, group)
    return group


def _record_instructors(db: Any, group: orm.Group) -> None:
    """Keep the instructors' names in the cohort's record too: the model service reads groups,
    not roles, and lets instructors read their cohort's usage."""
    rec = record(group)
    rec["instructors"] = instructors(db, group.name)
    _save(db, group, rec)


def instructors(db: Any, cohort: str) -> list[str]:
    role = orm.Role.find(db, role_name(cohort))
    return sorted(u.name for u in role.users) if role is not None else []


def set_instructors(db: Any, cohort: str, add: list[orm.User], remove: list[orm.User]) -> None:
    role = orm.Role.find(db, role_name(cohort))
    if role is None:
        raise CohortError(404, f"No such cohort: {cohort}", "cohort_not_found")
    for user in add:
        roles.grant_role(db, user, role)
    for user in remove:
        roles.strip_role(db, user, role)
    group = orm.Group.find(db, name=cohort)
    if group is not None:
        _record_instructors(db, group)


def cohorts_of_instructor(db: Any, user: orm.User) -> list[str]:
    names = []
    for role in user.roles:
        if role.name.startswith(ROLE_PREFIX):
            for group in db.query(orm.Group):
                if role_name(group.name) == role.name and is_cohort(group):
                    names.append(group.name)
    return sorted(names)


def courses_of(db: Any, user: orm.User) -> tuple[list[str], list[str]]:
    """``(groups, instructs)`` of ``user`` now, as the spawner hands them to a server at start
    (``ORACULO_COHORTS``, ``ORACULO_INSTRUCTS``): the hub groups whose course the server
    gets (the user's groups and those they teach) and those they teach (cohorts whose
    instructor role they hold, groups whose ``instructors`` property names them). A running
    server asks for them again (``GET /hub/api/users/<name>/cohorts``) so a join or a leave
    applies without a restart."""
    teaching = cohorts_of_instructor(db, user)
    instructs = sorted(
        set(teaching) | {g.name for g in user.groups if user.name in instructors_of(g)}
    )
    return sorted({g.name for g in user.groups} | set(instructs)), instructs


def policy_of(group: orm.Group) -> CohortPolicy | None:
    return CohortPolicy.from_properties(group.properties)


def set_policy(db: Any, group: orm.Group, policy: CohortPolicy) -> None:
    _save(db, group, None, **{POLICY_PROPERTY: policy.model_dump(mode="json")})


# --- invitations and sign-ups -------------------------------------------------------------------


def new_code() -> str:
    return secrets.token_urlsafe(12)


def rotate_code(db: Any, group: orm.Group) -> str:
    rec = record(group)
    rec["invite_code"] = new_code()
    _save(db, group, rec)
    return str(rec["invite_code"])


def by_code(db: Any, code: str) -> orm.Group | None:
    """The cohort whose invitation code is ``code`` (compared in constant time)."""
    if not code:
        return None
    for group in db.query(orm.Group):
        stored = record(group).get("invite_code") if is_cohort(group) else None
        if stored and hmac.compare_digest(str(stored).encode(), code.encode()):
            return group
    return None


def by_lti_context(db: Any, context_id: str) -> orm.Group | None:
    """The cohort an LMS course (its LTI context id) is mapped to."""
    for group in db.query(orm.Group):
        if is_cohort(group) and context_id in (record(group).get("lti_contexts") or []):
            return group
    return None


def add_pending(db: Any, group: orm.Group, name: str) -> None:
    rec = record(group)
    pending = [p for p in rec.get("pending", []) if p != name]
    rec["pending"] = [*pending, name]
    _save(db, group, rec)


def remove_pending(db: Any, group: orm.Group, name: str) -> bool:
    rec = record(group)
    pending = list(rec.get("pending", []))
    if name not in pending:
        return False
    rec["pending"] = [p for p in pending if p != name]
    _save(db, group, rec)
    return True


def approve(handler: Any, group: orm.Group, name: str) -> None:
    """Approve ``name``'s sign-up into cohort ``group`` (from a hub handler): their account
    may sign in (NativeAuthenticator's approval) and is a member."""
    if name not in record(group).get("pending", []):
        raise CohortError(
            404, f"{name} has no sign-up waiting for cohort {group.name}.", "not_pending"
        )
    get_user = getattr(handler.authenticator, "get_user", None)
    info = get_user(name) if get_user is not None else None
    if info is not None:
        info.is_authorized = True
        handler.db.commit()
    user = handler.user_from_username(name)
    join(handler.db, group, user.orm_user)
    remove_pending(handler.db, group, name)
    handler.log.info("%s approved %s into cohort %s", handler.current_user.name, name, group.name)


def combine_one(name: str, policy: CohortPolicy | None) -> str:
    """One line on the cohort's AI now."""
    if policy is None:
        return "available (no policy)"
    pause = combine({name: policy}).paused
    return "available" if pause is None else pause.message("AI")


def join(db: Any, group: orm.Group, user: orm.User) -> bool:
    """Add ``user`` to the cohort; False when they were a member already."""
    if user in group.users:
        return False
    group.users.append(user)
    db.commit()
    return True


def leave(db: Any, group: orm.Group, user: orm.User) -> bool:
    if user not in group.users:
        return False
    group.users.remove(user)
    db.commit()
    return True


def keep_cohort_groups(groups: list[str], user: orm.User | None) -> list[str]:
    """The groups a sign-in that manages groups (OpenID Connect's ``groups`` claim) should
    leave ``user`` in: the claim's, plus the cohorts they are in now. Cohort membership is the
    hub's (invitations, approvals, instructors, LMS launches), so a sign-in never drops it; plain
    groups still follow the directory, added and removed."""
    if user is None:
        return list(groups)
    return sorted({*groups, *(g.name for g in user.groups if is_cohort(g))})


def set_lti_contexts(db: Any, group: orm.Group, contexts: list[str]) -> None:
    rec = record(group)
    rec["lti_contexts"] = sorted({str(c) for c in contexts if str(c)})
    _save(db, group, rec)
