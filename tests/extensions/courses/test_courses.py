"""The courses API on a real hub (process spawner): an instructor releases an nbgrader
assignment to the cohort, a student fetches, completes and submits it, the instructor collects,
autogrades (the score lands in nbgrader's gradebook) and returns feedback, which the student
fetches. Bad input, students' attempts at instructor steps and other users' tokens are refused
in the project's error shape."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cohorts import ASSIGNMENT, Cohort, complete, new_cohort, step, view, write_source
from tests.harness import HubClient, HubProcess


@pytest.fixture(scope="module")
async def cohort(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cohort]:
    hub = await HubProcess(tmp_path_factory.mktemp("hub-courses")).start()
    signup = HubClient(hub)
    tag = uuid.uuid4().hex[:5]
    made: Cohort | None = None
    try:
        made = await new_cohort(hub, f"cs{tag}", tag, signup)
        yield made
    finally:
        if made is not None:
            await made.aclose()
        await signup.aclose()
        hub.stop()


def error_shape(body: dict[str, str], type_: str) -> None:
    assert set(body) == {"message", "reason", "type"}, body
    assert body["type"] == type_, body


async def test_release_fetch_submit_collect_autograde_feedback(cohort: Cohort) -> None:
    teacher, (ana, ben) = cohort.instructor, cohort.students
    group = cohort.group
    await write_source(teacher, group)

    r = await step(teacher, group, "release")
    assert r.status_code == 200, r.text
    assert any("Released as" in line for line in r.json()["log"])
    seen = await view(ana, group)
    assert seen["instructor"] is False
    assert [(a["name"], a["released"]) for a in seen["assignments"]] == [(ASSIGNMENT, True)]

    r = await step(ana, group, "fetch")
    assert r.status_code == 200, r.text
    assert r.json()["path"].endswith(f"assignments/{group}/{ASSIGNMENT}")
    await complete(ana, group)
    r = await step(ana, group, "submit")
    assert r.status_code == 200, r.text
    (mine,) = (await view(ana, group))["assignments"]
    assert mine["fetched"] and len(mine["submitted"]) == 1

    # ben fetches and submits the notebook as released: no points
    assert (await step(ben, group, "fetch")).status_code == 200
    assert (await step(ben, group, "submit")).status_code == 200

    r = await step(teacher, group, "collect")
    assert r.status_code == 200, r.text
    assert any(f"Collecting submission: {ana.name}" in line for line in r.json()["log"])
    r = await step(teacher, group, "autograde")
    assert r.status_code == 200, r.text
    course = await view(teacher, group)
    assert course["instructor"] is True
    (hw,) = course["assignments"]
    assert hw["max_score"] == 2.0
    scores = {s["student"]: s["score"] for s in hw["scores"]}
    assert scores == {ana.name: 2.0, ben.name: 0.0}
    # nbgrader's own gradebook holds them (the view above reads it; so does nbgrader's API)
    db = Path(course["course_dir"]) / "gradebook.db"
    assert db.is_file()

    r = await step(teacher, group, "feedback")
    assert r.status_code == 200, r.text
    r = await step(ana, group, "fetch_feedback")
    assert r.status_code == 200, r.text
    (mine,) = (await view(ana, group))["assignments"]
    assert len(mine["feedback"]) == 1
    html = Path(r.json()["path"]) / "feedback" / mine["feedback"][0] / f"{ASSIGNMENT}.html"
    assert "2.0" in html.read_text() and "test_double" in html.read_text()


async def test_students_cannot_take_instructor_steps(cohort: Cohort) -> None:
    ana = cohort.students[0]
    for action in ("release", "collect", "autograde", "feedback"):
        r = await step(ana, cohort.group, action)
        assert r.status_code == 403, (action, r.text)
        error_shape(r.json(), "forbidden")
        assert cohort.group in r.json()["message"]


async def test_the_cohort_list_and_usage(cohort: Cohort) -> None:
    teacher, ana = cohort.instructor, cohort.students[0]
    r = await teacher.api("GET", f"/user/{teacher.name}/api/v1/courses")
    nothing_to_restart = {"restart_needed": [], "notice": None}
    assert r.json() == {
        "cohorts": [cohort.group],
        "instructs": [cohort.group],
        **nothing_to_restart,
    }
    r = await ana.api("GET", f"/user/{ana.name}/api/v1/courses")
    assert r.json() == {"cohorts": [cohort.group], "instructs": [], **nothing_to_restart}
    # usage is the instructor's to read; this hub runs no model service: a clear 503
    r = await ana.api("GET", f"/user/{ana.name}/api/v1/courses/{cohort.group}/roster")
    assert r.status_code == 403
    error_shape(r.json(), "forbidden")
    r = await ana.api("GET", f"/user/{ana.name}/api/v1/courses/{cohort.group}/usage")
    assert r.status_code == 403
    error_shape(r.json(), "forbidden")
    r = await teacher.api("GET", f"/user/{teacher.name}/api/v1/courses/{cohort.group}/usage")
    assert r.status_code == 503
    error_shape(r.json(), "unavailable")


async def test_bad_input_is_a_clear_error(cohort: Cohort) -> None:
    teacher = cohort.instructor
    base = f"/user/{teacher.name}/api/v1/courses"
    r = await teacher.api("POST", f"{base}/{cohort.group}/assignments/{ASSIGNMENT}/grade-all")
    assert r.status_code == 404
    error_shape(r.json(), "not_found")
    r = await teacher.api("POST", f"{base}/{cohort.group}/assignments/..%20x/release")
    assert r.status_code == 400
    error_shape(r.json(), "invalid_request")
    r = await teacher.api("POST", f"{base}/{cohort.group}/assignments/missing/release")
    assert r.status_code == 404
    assert "source" in r.json()["message"]
    # a cohort this server has no exchange for
    r = await teacher.api("GET", f"{base}/nosuchcohort")
    assert r.status_code == 404
    error_shape(r.json(), "not_found")
    # nothing was lost: the released assignment is still there
    assert [a["name"] for a in (await view(teacher, cohort.group))["assignments"]] == [ASSIGNMENT]


async def test_another_users_token_is_refused_on_every_endpoint(cohort: Cohort) -> None:
    teacher, ana = cohort.instructor, cohort.students[0]
    outsider = cohort.others[0]
    base = f"/user/{teacher.name}/api/v1/courses/{cohort.group}"
    for method, path in (
        ("GET", f"/user/{teacher.name}/api/v1/courses"),
        ("GET", base),
        ("GET", f"{base}/usage"),
        ("GET", f"{base}/roster"),
        ("PUT", f"{base}/policy"),
        ("POST", f"{base}/assignments/{ASSIGNMENT}/collect"),
        ("POST", f"{base}/assignments/{ASSIGNMENT}/release"),
    ):
        for intruder in (ana, outsider):
            r = await intruder.api(method, path)
            assert r.status_code in (403, 404), (intruder.name, path, r.status_code)
            assert r.status_code != 200


async def test_the_policy_editor_endpoint_refuses_what_it_must(cohort: Cohort) -> None:
    """``PUT api/v1/courses/<c>/policy`` (the Cohort panel's policy editor): bad bodies are 400,
    a student 403, and a group that is not a hub cohort (here: no cohort API role, so the hub
    refuses the server's token) a clear 403 with nothing written. The journey sets a real
    cohort's policy through it."""
    teacher, ana = cohort.instructor, cohort.students[0]
    url = f"/user/{teacher.name}/api/v1/courses/{cohort.group}/policy"
    r = await teacher.api("PUT", url, content=b"{not json")
    assert r.status_code == 400
    error_shape(r.json(), "invalid_request")
    r = await teacher.api("PUT", url, json=["ai", False])
    assert r.status_code == 400
    error_shape(r.json(), "invalid_request")
    r = await ana.api(
        "PUT", f"/user/{ana.name}/api/v1/courses/{cohort.group}/policy", json={"ai": False}
    )
    assert r.status_code == 403
    error_shape(r.json(), "forbidden")
    r = await teacher.api("PUT", url, json={"ai": False})
    assert r.status_code == 403, r.text
    error_shape(r.json(), "forbidden")
    assert cohort.group in r.json()["message"]
    r = await cohort.admin.api("GET", f"/hub/api/groups/{cohort.group}")
    assert "oraculo_policy" not in r.json()["properties"], r.text
