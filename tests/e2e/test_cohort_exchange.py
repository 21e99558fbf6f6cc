"""system-users mode, as root: each cohort's nbgrader exchange keeps students out of each
other's work. Another student's code, in their own kernel, cannot list the submissions, read one,
reach a classmate's own copy, or replace the course folder, and what they submit in a
classmate's name is set aside at collect; an account outside the cohort cannot enter the
exchange at all; the instructor still collects and autogrades everyone."""

from __future__ import annotations

import datetime
import os
import pwd
import shutil
import stat
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cohorts import ASSIGNMENT, Cohort, complete, new_cohort, step, view, write_source
from tests.harness import HubClient, HubProcess

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
async def cohort(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cohort]:
    if os.geteuid() != 0:
        pytest.skip("system-users mode needs root")
    tag = uuid.uuid4().hex[:5]
    top = Path(f"/tmp/oraculo-cohort-{tag}")  # /tmp lets other accounts traverse
    hub = HubProcess(
        tmp_path_factory.mktemp("hub-cohort"),
        spawner="system-users",
        env={
            "ORACULO_GROUPS_DIR": str(top / "groups"),
            "ORACULO_EXCHANGE_DIR": str(top / "exchange"),
        },
    )
    await hub.start()
    signup = HubClient(hub)
    made: Cohort | None = None
    group = f"ex{tag}"
    try:
        made = await new_cohort(hub, group, tag, signup)
        yield made
    finally:
        if made is not None:
            await made.aclose()
        await signup.aclose()
        hub.stop()
        for prefix in ("i", "sa", "sb", "o"):
            name = f"{prefix[0]}{tag}{prefix[1:]}"
            subprocess.run(["userdel", "--remove", f"jupyter-{name}"], capture_output=True)
        subprocess.run(["groupdel", f"oraculo-{group}"], capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


def _os(user_name: str) -> pwd.struct_passwd:
    return pwd.getpwnam(f"jupyter-{user_name}")


async def run_code(user: object, code: str) -> dict[str, object]:
    kernel = await user.start_kernel()  # type: ignore[attr-defined]
    out: dict[str, object] = await user.execute(kernel, code)  # type: ignore[attr-defined]
    return out


async def test_students_cannot_read_each_others_submissions(cohort: Cohort) -> None:
    teacher, (ana, ben) = cohort.instructor, cohort.students
    outsider = cohort.others[0]
    group = cohort.group
    exchange = Path(cohort.hub.environment()["ORACULO_EXCHANGE_DIR"])
    course = exchange / group / "exchange" / group

    # the layout, as the hub made it: the course folders are the instructor's account's
    modes = {
        exchange: (0o711, "root"),
        exchange / group: (0o710, "root"),
        exchange / group / "exchange": (0o1777, "root"),
        course: (0o755, teacher.name),
        course / "outbound": (0o755, teacher.name),
        course / "inbound": (0o2733, teacher.name),
        course / "feedback": (0o711, teacher.name),
    }
    for path, (mode, owner) in modes.items():
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == mode, (path, oct(st.st_mode))
        want = 0 if owner == "root" else _os(owner).pw_uid
        assert st.st_uid == want, path

    await write_source(teacher, group)
    assert (await step(teacher, group, "release")).status_code == 200
    assert (await step(ana, group, "fetch")).status_code == 200
    await complete(ana, group)
    r = await step(ana, group, "submit")
    assert r.status_code == 200, r.text
    (submission,) = [p for p in os.listdir(course / "inbound")]  # as root
    assert submission.startswith(f"{ana.name}+{ASSIGNMENT}+")
    assert (course / "inbound" / submission).stat().st_uid == _os(ana.name).pw_uid
    ana_copy = Path(_os(ana.name).pw_dir) / "assignments" / group / ASSIGNMENT

    # ben's code hunts for ana's work
    inbound = course / "inbound"
    guess = inbound / f"{ana.name}+{ASSIGNMENT}+{submission.split('+')[2]}"
    attempts = {
        "list inbound": f"os.listdir({str(inbound)!r})",
        "glob inbound": f"import glob; assert glob.glob({str(inbound)!r} + '/*'), 'empty'",
        "guess the name": f"os.listdir({str(guess)!r})",
        "ana's own copy": f"open({str(ana_copy / (ASSIGNMENT + '.ipynb'))!r}).read()",
        "ana's submission cache": f"os.listdir({_os(ana.name).pw_dir + '/.local'!r})",
        "replace the course": f"os.rename({str(course)!r}, {str(course) + '.x'!r})",
        "write to outbound": f"open({str(course / 'outbound' / 'x.txt')!r}, 'w')",
    }
    for what, code in attempts.items():
        out = await run_code(ben, f"import os\n{code}")
        error = out["error"]
        assert isinstance(error, dict), (what, out)
        assert error["name"] in ("PermissionError", "FileNotFoundError", "AssertionError"), (
            what,
            error,
        )
    assert course.is_dir() and (inbound / submission).is_dir()

    # an account outside the cohort cannot even enter its exchange
    out = await run_code(outsider, f"import os\nos.listdir({str(course / 'outbound')!r})")
    assert isinstance(out["error"], dict) and out["error"]["name"] == "PermissionError", out
    r = await step(outsider, group, "fetch")
    assert r.status_code in (403, 404), r.text

    # ben's own submission goes through, and the instructor grades both
    assert (await step(ben, group, "fetch")).status_code == 200
    assert (await step(ben, group, "submit")).status_code == 200
    # ben's code also submits his unfinished copy as ana's, newer than hers: collected, it
    # would replace her work (and her score) with his; it is set aside, nothing of it collected
    later = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S.%f UTC")
    forged = inbound / f"{ana.name}+{ASSIGNMENT}+{later}+{'f' * 18}"
    mine = Path(_os(ben.name).pw_dir) / "assignments" / group / ASSIGNMENT
    out = await run_code(
        ben,
        f"import shutil\nshutil.copytree({str(mine)!r}, {str(forged)!r})\n"
        f"open({str(forged / 'timestamp.txt')!r}, 'w').write({later!r})",
    )
    assert out["error"] is None, out
    r = await step(teacher, group, "collect")
    assert r.status_code == 200, r.text
    assert any("Set aside" in line and ana.name in line for line in r.json()["log"]), r.text
    assert not forged.exists()
    r = await step(teacher, group, "autograde")
    assert r.status_code == 200, r.text
    (hw,) = (await view(teacher, group))["assignments"]
    assert {s["student"]: s["score"] for s in hw["scores"]} == {ana.name: 2.0, ben.name: 0.0}
