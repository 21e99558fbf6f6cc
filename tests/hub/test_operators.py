"""Every hub admin holds oraculo-admin, however they became admin: on JupyterHub's own database
(its ORM and role functions, as the admin page's API and the hub's start use them)."""

from __future__ import annotations

from jupyterhub import orm, roles

from oraculo.hub import operators


def test_the_operator_role_follows_the_admin_flag() -> None:
    operators.install()
    operators.install()  # once, however often the config is read
    db = orm.new_session_factory("sqlite://")()
    for spec in roles.get_default_roles():  # user, admin, server, token
        roles.create_role(db, spec)
    roles.create_role(db, {"name": operators.OPERATOR_ROLE, "scopes": ["read:users"]})
    ada, bob, cy = (orm.User(name=n) for n in ("ada", "bob", "cy"))
    ada.admin = True  # an admin from the start (admin_users)
    db.add_all([ada, bob, cy])
    db.commit()

    def holders() -> set[str]:
        db.expire_all()
        role = orm.Role.find(db, operators.OPERATOR_ROLE)
        return {u.name for u in role.users}

    assert holders() == {"ada"}
    # the admin page: PATCH /hub/api/users/bob {"admin": true} sets the flag, then the hub's
    # default roles
    bob.admin = True
    roles.assign_default_roles(db, entity=bob)
    db.commit()
    assert holders() == {"ada", "bob"}
    assert "admin" in {r.name for r in bob.roles}
    # and back
    bob.admin = False
    roles.assign_default_roles(db, entity=bob)
    db.commit()
    assert holders() == {"ada"}
    # the hub's start sets the role's members to the config's list: every admin is put back
    cy.admin = True
    db.commit()
    role = orm.Role.find(db, operators.OPERATOR_ROLE)
    role.users = [ada]
    db.commit()
    assert holders() == {"ada", "cy"}
    db.close()
