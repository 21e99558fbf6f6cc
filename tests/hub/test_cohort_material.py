"""Cohort material in system-users mode, tested as the OS accounts themselves (root, as CI
runs): instructors write ``~/shared/<cohort>/material``, students only read it, others cannot
reach it; a student added while their server runs is told plainly to restart it, and can read
the material after that.
"""

from __future__ import annotations

import asyncio
import grp
import shutil
import stat
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from oraculo.hub.groups import group_slug
from tests.harness import ADMIN_PASSWORD, HubClient, HubProcess, User, new_user

pytestmark = [pytest.mark.root, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
async def course(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Any]]:
    tag = uuid.uuid4().hex[:6]
    groups_dir = Path(f"/tmp/oraculo-groups-{tag}")  # /tmp lets other accounts traverse
    hub = HubProcess(
        tmp_path_factory.mktemp("hub-material"),
        spawner="system-users",
        env={"ORACULO_GROUPS_DIR": str(groups_dir)},
    )
    await hub.start()
    cohort = f"mat-{tag}"
    names = [f"m{tag}{n}" for n in ("i", "s", "e")]
    admin_client, signup = HubClient(hub), HubClient(hub)
    people: list[User] = []
    try:
        await admin_client.login("admin", ADMIN_PASSWORD)
        admin = User("admin", await admin_client.token("admin"), admin_client)
        for name in names:
            people.append(await new_user(signup, name))
        ivy, sam, eve = people
        r = await admin.api(
            "POST", "/hub/api/cohorts", json={"name": cohort, "instructors": [ivy.name]}
        )
        assert r.status_code == 201, r.text
        r = await admin.api(
            "POST", f"/hub/api/cohorts/{cohort}/members", json={"users": [sam.name]}
        )
        assert r.status_code == 200, r.text
        await asyncio.gather(*(p.spawn() for p in people))
        yield {
            "cohort": cohort,
            "ivy": ivy,
            "sam": sam,
            "eve": eve,
            "admin": admin,
            "dir": groups_dir / cohort,
        }
    finally:
        for person in people:
            await person.client.aclose()
        await signup.aclose()
        await admin_client.aclose()
        hub.stop()
        for name in names:
            subprocess.run(["userdel", "--remove", f"jupyter-{name}"], capture_output=True)
        for g in (cohort, f"{cohort}/instructors"):
            subprocess.run(["groupdel", f"oraculo-{group_slug(g)}"], capture_output=True)
        shutil.rmtree(groups_dir, ignore_errors=True)


async def run(user: User, code: str) -> dict[str, Any]:
    kernel = await user.start_kernel()
    return await user.execute(kernel, code)


async def test_students_read_the_material_instructors_write_it(course: dict[str, Any]) -> None:
    cohort, ivy, sam, eve = course["cohort"], course["ivy"], course["sam"], course["eve"]
    material = course["dir"] / "material"
    st = material.stat()
    staff = grp.getgrnam(f"oraculo-{group_slug(cohort + '/instructors')}")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, staff.gr_gid, 0o2775)

    # the instructor writes through the link in her home
    out = await run(
        ivy,
        "import pathlib\n"
        f"p = pathlib.Path.home() / 'shared' / {cohort!r} / 'material' / 'week1.md'\n"
        "p.write_text('Week 1: lists')\nprint('ok')",
    )
    assert out["error"] is None and out["stdout"] == "ok\n", out

    # the student reads it, and cannot change or add material
    week1 = f"(pathlib.Path.home() / 'shared' / {cohort!r} / 'material' / 'week1.md')"
    out = await run(sam, f"import pathlib\nprint({week1}.read_text())")
    assert out["stdout"] == "Week 1: lists\n", out
    for code in (
        f"import pathlib\n{week1}.write_text('mine now')",
        f"import pathlib\n{week1}.with_name('answers.md').write_text('x')",
        f"import pathlib\n{week1}.unlink()",
    ):
        out = await run(sam, code)
        assert out["error"] is not None and out["error"]["name"] == "PermissionError", out
    assert (material / "week1.md").read_text() == "Week 1: lists"

    # someone outside the cohort cannot reach it at all
    out = await run(eve, f"print(open({str(material / 'week1.md')!r}).read())")
    assert out["error"] is not None and out["error"]["name"] == "PermissionError", out


async def test_joining_while_running_says_to_restart_then_works(course: dict[str, Any]) -> None:
    cohort, admin, eve = course["cohort"], course["admin"], course["eve"]
    # an admin adds her (an instructor adds only people who asked to join)
    r = await admin.api("POST", f"/hub/api/cohorts/{cohort}/members", json={"users": [eve.name]})
    assert r.status_code == 200, r.text
    live = r.json()["live"][eve.name]
    assert live["state"] == "restart_needed" and "restart" in live["message"], live
    # the OS group is already given for new logins and the next start
    assert f"jupyter-{eve.name}" in grp.getgrnam(f"oraculo-{group_slug(cohort)}").gr_mem
    await eve.stop_server()
    await eve.spawn()
    out = await run(
        eve,
        "import pathlib\n"
        f"print((pathlib.Path.home() / 'shared' / {cohort!r} / 'material' / 'week1.md')"
        ".read_text())",
    )
    assert out["stdout"] == "Week 1: lists\n", out
