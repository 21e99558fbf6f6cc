"""Every hub admin holds the ``oraculo-admin`` role, however they became admin.

JupyterHub's own ``admin`` role cannot carry custom scopes, so Oráculo's operator scopes (usage
read-all, budgets, audit, the operator's dashboard) are in the ``oraculo-admin`` role. The
config gives it to ``admin_users`` and the OIDC authenticator to admins from its claim; an admin
made on the hub's admin page (``PATCH /hub/api/users/<name> {"admin": true}``) changes only the
user's ``admin`` flag. This hook, run by the hub's database session before each write, keeps the
role with the flag: granted when a user becomes admin, taken when they stop being one, and given
back to every admin when the hub resets the role's members to the config's list at start.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from jupyterhub import orm
from sqlalchemy.orm import Session

#: The role that carries Oráculo's operator scopes.
OPERATOR_ROLE = "oraculo-admin"


def _sync(session: Session, flush_context: Any, instances: Any) -> None:
    changed = [
        obj
        for obj in (*session.new, *session.dirty)
        if isinstance(obj, orm.User) and sa.inspect(obj).attrs.admin.history.has_changes()
    ]
    reset = [
        obj
        for obj in session.dirty
        if isinstance(obj, orm.Role)
        and obj.name == OPERATOR_ROLE
        and sa.inspect(obj).attrs.users.history.has_changes()
    ]
    if not changed and not reset:
        return
    with session.no_autoflush:
        role = reset[0] if reset else orm.Role.find(session, OPERATOR_ROLE)
        if role is None:  # a hub without Oráculo's roles
            return
        for user in changed:
            if user.admin and role not in user.roles:
                user.roles.append(role)
            elif not user.admin and role in user.roles:
                user.roles.remove(role)
        if reset:
            for user in session.query(orm.User).filter(orm.User.admin.is_(True)):
                if user not in role.users:
                    role.users.append(user)


def install() -> None:
    """Keep the role with the admin flag in this process's hub database sessions (once)."""
    if not sa.event.contains(Session, "before_flush", _sync):
        sa.event.listen(Session, "before_flush", _sync)
