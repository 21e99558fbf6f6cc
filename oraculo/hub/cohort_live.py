"""A change of cohort membership brought to running servers: the member's group folders linked
or unlinked in their home and their OS groups set (:func:`apply_membership`), for the cohort API
(:mod:`.cohort_handlers`) and the hub's cohorts page (:mod:`.cohort_page`)."""

from __future__ import annotations

from jupyterhub import orm
from jupyterhub.handlers.base import BaseHandler

from oraculo.hub import cohorts


async def apply_membership(handler: BaseHandler, orm_user: orm.User) -> dict[str, str]:
    """Bring a member's running server up to date with their groups: link or unlink the group
    folders in their home and set their OS groups. What a running process cannot pick up (its
    OS groups, a container's mounts) is said plainly."""
    user = handler.users[orm_user]
    spawner = user.spawners.get("")
    if spawner is None or not spawner.ready:
        return {"state": "next_start", "message": "Applied when the server starts."}
    make = getattr(spawner, "make_group_folders", None)
    if make is None:
        return {"state": "restart_needed", "message": "Restart the server to apply."}
    try:
        await make()
    except Exception as e:  # a folder or OS group that cannot be made must not fail the join
        handler.log.exception("Could not apply the groups of %s live", user.name)
        return {"state": "restart_needed", "message": f"Restart the server to apply ({e})."}
    kind = type(spawner).__name__
    if "Process" in kind:
        return {"state": "applied", "message": "Folder linked or unlinked in ~/shared now."}
    return {
        "state": "restart_needed",
        "message": (
            f"{user.name}'s server runs with the OS groups (or mounts) it started with: the "
            "cohort folder opens after they restart it (File > Hub Control Panel > Stop My "
            "Server, then Start). AI policy applies now."
        ),
    }


async def apply_instructors(handler: BaseHandler, group: orm.Group) -> None:
    """A new cohort's instructors' running servers get its folder and exchange now."""
    for name in cohorts.instructors(handler.db, group.name):
        orm_user = orm.User.find(handler.db, name)
        if orm_user is not None:
            live = await apply_membership(handler, orm_user)
            handler.log.info("Cohort %s, instructor %s: %s", group.name, name, live["state"])
