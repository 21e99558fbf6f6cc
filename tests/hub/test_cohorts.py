"""Cohorts on the real hub: instructors scoped to their cohort (tested from both sides with real
tokens), invitations, instructor-approved sign-ups, and membership applied to a running server.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import (
    ADMIN_PASSWORD,
    PASSWORD,
    HubClient,
    HubProcess,
    User,
    new_user,
    wait_for,
)

pytestmark = pytest.mark.timeout(600)


def assert_error(r: httpx.Response, status: int, type_: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert {"status", "message", "reason", "type"} <= set(body), body
    assert body["status"] == status and body["message"]
    if type_:
        assert body["type"] == type_, body
    return body


@pytest.fixture(scope="module")
async def admin(hub: HubProcess) -> AsyncIterator[User]:
    client = HubClient(hub)
    await client.login("admin", ADMIN_PASSWORD)
    yield User(name="admin", token=await client.token("admin"), client=client)
    await client.aclose()


@pytest.fixture(scope="module")
async def people(hub: HubProcess) -> AsyncIterator[dict[str, User]]:
    client = HubClient(hub)
    tag = uuid.uuid4().hex[:5]
    out = {k: await new_user(client, f"{k}{tag}") for k in ("ivy", "ian", "sam", "sue", "tom")}
    yield out
    await client.aclose()


async def make_cohort(
    admin: User, name: str, instructors: list[str], **extra: Any
) -> dict[str, Any]:
    r = await admin.api(
        "POST", "/hub/api/cohorts", json={"name": name, "instructors": instructors, **extra}
    )
    assert r.status_code == 201, r.text
    assert r.headers["Location"].endswith(f"/hub/api/cohorts/{name}")
    body: dict[str, Any] = r.json()
    return body


async def test_instructors_manage_only_their_cohort(admin: User, people: dict[str, User]) -> None:
    ivy, ian, sam, sue, tom = (people[k] for k in ("ivy", "ian", "sam", "sue", "tom"))
    a, b = f"cs-a-{uuid.uuid4().hex[:4]}", f"cs-b-{uuid.uuid4().hex[:4]}"
    made = await make_cohort(admin, a, [ivy.name])
    assert made["instructors"] == [ivy.name] and made["members"] == []
    await make_cohort(admin, b, [ian.name])

    # an instructor cannot put just anyone in her cohort (only people who asked to join it);
    # an admin can: sam into a, sue into b
    body = assert_error(
        await ivy.api("POST", f"/hub/api/cohorts/{a}/members", json={"users": [sam.name]}),
        403,
        "not_allowed",
    )
    assert sam.name in body["message"] and "invitation link" in body["message"]
    r = await admin.api("POST", f"/hub/api/cohorts/{a}/members", json={"users": [sam.name]})
    assert r.status_code == 200, r.text
    assert r.json()["members"] == [sam.name]
    assert r.json()["live"][sam.name]["state"] == "next_start"
    r = await admin.api("POST", f"/hub/api/cohorts/{b}/members", json={"users": [sue.name]})
    assert r.status_code == 200, r.text

    # what ivy sees: her cohort, its members and their servers; nothing of b
    r = await ivy.api("GET", "/hub/api/cohorts")
    assert [c["name"] for c in r.json()["cohorts"]] == [a]
    r = await ivy.api("GET", f"/hub/api/cohorts/{a}")
    assert r.status_code == 200, r.text
    assert [m["name"] for m in r.json()["members"]] == [sam.name]
    assert r.json()["invite_code"]
    r = await ivy.api("GET", "/hub/api/users")
    assert r.status_code == 200, r.text
    assert {u["name"] for u in r.json()} == {sam.name}
    r = await ivy.api("GET", f"/hub/api/users/{sam.name}")
    assert r.status_code == 200 and a in r.json()["groups"]

    # she starts and stops her student's server
    r = await ivy.api("POST", f"/hub/api/users/{sam.name}/server")
    assert r.status_code in (201, 202), r.text
    await sam.wait_ready()
    r = await ivy.api("DELETE", f"/hub/api/users/{sam.name}/server")
    assert r.status_code in (202, 204), r.text

    async def stopped() -> bool:
        r = await sam.api("GET", f"/hub/api/users/{sam.name}")
        return "" not in r.json().get("servers", {})

    await wait_for(stopped, 60, f"{sam.name}'s server to stop")

    # ... and is refused everything of cohort b, other users, and the hub's administration
    for method, path, body in [
        ("GET", f"/hub/api/cohorts/{b}", None),
        ("GET", f"/hub/api/cohorts/{b}/policy", None),
        ("PUT", f"/hub/api/cohorts/{b}/policy", {"ai": False}),
        ("POST", f"/hub/api/cohorts/{b}/members", {"users": [tom.name]}),
        ("DELETE", f"/hub/api/cohorts/{b}/members", {"users": [sue.name]}),
        ("GET", f"/hub/api/cohorts/{b}/signups", None),
        ("POST", f"/hub/api/cohorts/{b}/invitations", None),
        ("POST", f"/hub/api/cohorts/{a}/instructors", {"users": [tom.name]}),
        ("PUT", f"/hub/api/cohorts/{a}/lti", {"contexts": ["x"]}),
        ("POST", "/hub/api/cohorts", {"name": "mine", "instructors": [ivy.name]}),
    ]:
        r = await ivy.api(method, path, json=body)
        # 404 where she holds the scope for another group (JupyterHub hides what exists)
        assert_error(r, 404 if r.status_code == 404 else 403)
    for method, path in [
        ("GET", f"/hub/api/users/{sue.name}"),
        ("POST", f"/hub/api/users/{sue.name}/server"),
        ("GET", f"/hub/api/groups/{b}"),
        ("POST", f"/hub/api/groups/{b}/users"),
        ("PUT", f"/hub/api/groups/{b}/properties"),
        ("POST", f"/hub/api/users/{tom.name}/tokens"),
    ]:
        r = await ivy.api(method, path, json={"users": [tom.name]})
        assert r.status_code in (403, 404), (path, r.status_code, r.text)
    r = await ivy.api("GET", "/hub/admin")
    assert r.status_code == 403, r.status_code

    # her own cohort's group, attacked with her real token: JupyterHub's raw group API refuses
    # to add an admin or another cohort's student, or to put raw properties (past the policy's
    # validation, or an LMS course only admins map); the cohort API refuses the student too
    r = await admin.api("GET", f"/hub/api/groups/{a}")
    before = r.json()
    assert before["users"] == [sam.name]
    for method, path, body in [
        ("POST", f"/hub/api/groups/{a}/users", {"users": ["admin"]}),
        ("POST", f"/hub/api/groups/{a}/users", {"users": [sue.name]}),
        ("DELETE", f"/hub/api/groups/{a}/users", {"users": [sam.name]}),
        (
            "PUT",
            f"/hub/api/groups/{a}/properties",
            {
                "oraculo_policy": {"ai": "whatever", "exam_windows": "always"},
                "oraculo_cohort": {"lti_contexts": ["course-42"], "invite_code": "mine"},
            },
        ),
        ("POST", f"/hub/api/groups/{a}", {"users": ["admin"]}),
        ("DELETE", f"/hub/api/groups/{a}", None),
    ]:
        r = await ivy.api(method, path, json=body)
        assert r.status_code in (403, 404), (method, path, r.status_code, r.text)
    for users in (["admin"], [sue.name], [sam.name, tom.name]):
        body = assert_error(
            await ivy.api("POST", f"/hub/api/cohorts/{a}/members", json={"users": users}),
            403,
            "not_allowed",
        )
        assert users[-1] in body["message"]
    r = await ivy.api("GET", f"/hub/api/groups/{a}")  # she still reads her group
    assert r.status_code == 200, r.text
    assert r.json()["users"] == [sam.name] and r.json()["properties"] == before["properties"]
    r = await admin.api("GET", f"/hub/api/groups/{b}")
    assert r.json()["users"] == [sue.name]
    r = await admin.api("GET", "/hub/api/users/admin")
    assert r.json()["groups"] == []
    r = await ivy.api("GET", "/hub/api/users/admin")
    assert r.status_code in (403, 404)

    # a student sees nothing of the cohort's management
    for method, path, body in [
        ("GET", f"/hub/api/cohorts/{a}", None),
        ("PUT", f"/hub/api/cohorts/{a}/policy", {"ai": False}),
        ("POST", f"/hub/api/cohorts/{a}/members", {"users": [tom.name]}),
        ("POST", f"/hub/api/cohorts/{a}/signups/{tom.name}", None),
    ]:
        assert_error(await sam.api(method, path, json=body), 403)
    r = await sam.api("GET", "/hub/api/cohorts")
    assert r.json() == {"cohorts": []}

    # bad input: clear 400s, nothing changed
    body = assert_error(
        await ivy.api("PUT", f"/hub/api/cohorts/{a}/policy", json={"ai": "maybe", "x": 1}),
        400,
        "invalid_request",
    )
    assert "ai" in body["message"]
    assert_error(
        await ivy.api(
            "PUT",
            f"/hub/api/cohorts/{a}/policy",
            json={"exam_windows": [{"start": "2026-01-01T10:00", "end": "2026-01-01T09:00"}]},
        ),
        400,
    )
    assert_error(
        await ivy.api(
            "PUT",
            f"/hub/api/cohorts/{a}/policy",
            json={
                "exam_windows": [
                    {"start": "2026-01-01T10:00", "end": "2026-01-01T11:00", "timezone": "Mars/X"}
                ]
            },
        ),
        400,
    )
    assert_error(
        await ivy.api("POST", f"/hub/api/cohorts/{a}/members", json={"users": ["nobody-x"]}),
        400,
        "user_not_found",
    )
    assert_error(await admin.api("GET", "/hub/api/cohorts/no-such-cohort"), 404, "cohort_not_found")
    assert_error(await admin.api("POST", "/hub/api/cohorts", json={"name": a}), 409)
    r = await ivy.api("GET", f"/hub/api/cohorts/{a}/policy")
    assert r.json()["policy"]["ai"] is True

    # membership: leaving
    r = await ivy.api("DELETE", f"/hub/api/cohorts/{a}/members", json={"users": [sam.name]})
    assert r.status_code == 200 and r.json()["members"] == []


async def test_invitation_code_joins_at_once(
    hub: HubProcess, admin: User, people: dict[str, User]
) -> None:
    ivy = people["ivy"]
    name = f"inv-{uuid.uuid4().hex[:4]}"
    await make_cohort(admin, name, [ivy.name])
    r = await ivy.api("POST", f"/hub/api/cohorts/{name}/invitations")
    assert r.status_code == 201, r.text
    code, url = r.json()["code"], r.json()["url"]
    assert url == f"/hub/signup?invite={code}"

    # a new account signs up with the link's code: approved and in the cohort at once
    client = HubClient(hub)
    try:
        page = await client.http.get(url)
        assert f'value="{code}"' in page.text
        student = f"inv{uuid.uuid4().hex[:6]}"
        r = await client._form(
            "/hub/signup",
            {
                "username": student,
                "signup_password": PASSWORD,
                "signup_password_confirmation": PASSWORD,
                "invite": code,
            },
        )
        assert r.status_code == 200 and f"You are in cohort {name}" in r.text, r.text[-800:]
        await client.login(student, PASSWORD)
        r = await ivy.api("GET", f"/hub/api/cohorts/{name}")
        assert [m["name"] for m in r.json()["members"]] == [student]

        # a wrong code creates nothing
        r = await client._form(
            "/hub/signup",
            {
                "username": f"bad{uuid.uuid4().hex[:6]}",
                "signup_password": PASSWORD,
                "signup_password_confirmation": PASSWORD,
                "invite": "not-a-code",
            },
        )
        assert r.status_code == 400 and "invitation code is not valid" in r.text

        # an existing user joins with the code through the API; the old code stops working
        tom = people["tom"]
        r = await tom.api("POST", "/hub/api/cohorts/join", json={"code": code})
        assert r.status_code == 200 and r.json()["cohort"] == name, r.text
        r = await ivy.api("POST", f"/hub/api/cohorts/{name}/invitations")
        assert_error(
            await people["sue"].api("POST", "/hub/api/cohorts/join", json={"code": code}),
            404,
            "bad_invite",
        )
        assert_error(await tom.api("POST", "/hub/api/cohorts/join", json={}), 400)
    finally:
        await client.aclose()


async def test_membership_applies_to_a_running_server(
    admin: User, people: dict[str, User], hub: HubProcess
) -> None:
    """process spawner: the cohort folder is linked into a running server's home at once, and
    unlinked when the student leaves, and the server's courses follow, without a restart."""
    ivy, tom = people["ivy"], people["tom"]
    name = f"live-{uuid.uuid4().hex[:4]}"
    made = await make_cohort(admin, name, [ivy.name])
    await tom.spawn()
    try:
        # tom joins with the invitation code while his server runs
        r = await tom.api("POST", "/hub/api/cohorts/join", json={"code": made["invite_code"]})
        assert r.status_code == 200, r.text
        assert r.json()["live"]["state"] == "applied"
        link = Path(hub.data_dir) / "users" / tom.name / "shared" / name
        assert link.is_symlink() and link.resolve().is_dir()
        # his running server learns the cohort from the hub (its own token): the courses
        # feature and the Cohort panel have it, nothing to restart
        courses = f"/user/{tom.name}/api/v1/courses"

        async def listed() -> bool:
            r = await tom.api("GET", courses)
            return name in r.json()["cohorts"]

        await wait_for(listed, 30, f"{tom.name}'s server to learn cohort {name}", 0.5)
        r = await tom.api("GET", courses)
        assert r.json()["restart_needed"] == [] and r.json()["notice"] is None, r.text
        r = await tom.api("GET", f"{courses}/{name}")
        assert r.status_code == 200 and r.json()["instructor"] is False, r.text
        # what the server asks the hub: the user's own token only
        r = await tom.api("GET", f"/hub/api/users/{tom.name}/cohorts")
        assert r.status_code == 200 and name in r.json()["cohorts"], r.text
        r = await people["sue"].api("GET", f"/hub/api/users/{tom.name}/cohorts")
        assert_error(r, 404 if r.status_code == 404 else 403)

        # an admin's plain group API takes the same live steps: out, then back in
        r = await admin.api("DELETE", f"/hub/api/groups/{name}/users", json={"users": [tom.name]})
        assert r.status_code == 200 and r.json()["users"] == [], r.text
        assert not link.exists() and not link.is_symlink()
        r = await admin.api("POST", f"/hub/api/groups/{name}/users", json={"users": [tom.name]})
        assert r.status_code == 200 and r.json()["users"] == [tom.name], r.text
        assert link.is_symlink() and link.resolve().is_dir()
        code = f"import os; print(os.path.isdir(os.path.expanduser('~/shared/{name}')))"
        r = await tom.api(
            "POST", f"/user/{tom.name}/api/v1/execute", json={"code": code}, timeout=120
        )
        assert r.status_code == 200 and r.json()["stdout"].strip() == "True", r.text
        r = await ivy.api("DELETE", f"/hub/api/cohorts/{name}/members", json={"users": [tom.name]})
        assert r.json()["live"][tom.name]["state"] == "applied"
        assert not link.exists() and not link.is_symlink()

        async def dropped() -> bool:
            r = await tom.api("GET", f"{courses}/{name}")
            return r.status_code == 404

        await wait_for(dropped, 30, f"{tom.name}'s server to drop cohort {name}", 0.5)
        assert name not in (await tom.api("GET", courses)).json()["cohorts"]
    finally:
        await tom.stop_server()


async def test_sign_up_approved_by_the_cohort_instructor(tmp_path: Path) -> None:
    """Without open sign-up: refused before approval, approved by the instructor (not an
    admin), then signed in and in the cohort."""
    hub = await HubProcess(tmp_path / "hub", env={"ORACULO_OPEN_SIGNUP": "0"}).start()
    client, student_client = HubClient(hub), HubClient(hub)
    try:
        await client.login("admin", ADMIN_PASSWORD)
        admin = User("admin", await client.token("admin"), client)
        # the instructor signs up and the admin approves her (the hub's own approval)
        teacher_client = HubClient(hub)
        client.sessions.append(teacher_client)
        r = await teacher_client._form(
            "/hub/signup",
            {
                "username": "ivy",
                "signup_password": PASSWORD,
                "signup_password_confirmation": PASSWORD,
            },
        )
        assert "sent to the admin" in r.text
        r = await client.http.get("/hub/authorize/ivy")
        assert r.status_code == 302
        await teacher_client.login("ivy", PASSWORD)
        ivy = User("ivy", await teacher_client.token("ivy"), teacher_client)
        await make_cohort(admin, "bio-1", ["ivy"])

        r = await student_client._form(
            "/hub/signup",
            {
                "username": "stu",
                "signup_password": PASSWORD,
                "signup_password_confirmation": PASSWORD,
                "cohort": "bio-1",
            },
        )
        assert "waits for approval by an instructor of cohort bio-1" in r.text
        r = await student_client._form("/hub/login", {"username": "stu", "password": PASSWORD})
        assert r.status_code == 200 and "has not been authorized" in r.text
        r = await ivy.api("GET", "/hub/api/cohorts/bio-1/signups")
        assert r.json()["pending"] == ["stu"]
        r = await ivy.api("POST", "/hub/api/cohorts/bio-1/signups/stu")
        assert r.status_code == 200, r.text
        await student_client.login("stu", PASSWORD)
        r = await ivy.api("GET", "/hub/api/cohorts/bio-1")
        assert [m["name"] for m in r.json()["members"]] == ["stu"] and r.json()["pending"] == []
        assert_error(
            await ivy.api("POST", "/hub/api/cohorts/bio-1/signups/stu"), 404, "not_pending"
        )
        # an unknown cohort at sign-up creates nothing
        r = await student_client._form(
            "/hub/signup",
            {
                "username": "stu2",
                "signup_password": PASSWORD,
                "signup_password_confirmation": PASSWORD,
                "cohort": "no-such",
            },
        )
        assert r.status_code == 400 and "no cohort named" in r.text

        # on the hub's cohorts page, a student cannot approve anyone
        other = HubClient(hub)
        client.sessions.append(other)
        await other._form(
            "/hub/signup",
            {
                "username": "stu3",
                "signup_password": PASSWORD,
                "signup_password_confirmation": PASSWORD,
                "cohort": "bio-1",
            },
        )
        page = await student_client.http.get("/hub/cohorts")
        assert page.status_code == 200 and "You teach no cohort" in page.text
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
        xsrf_value = xsrf.group(1) if xsrf else student_client.http.cookies.get("_xsrf", "")
        r = await student_client.http.post(
            "/hub/cohorts/bio-1/signups/stu3", data={"_xsrf": xsrf_value, "action": "approve"}
        )
        assert r.status_code == 403 and "You do not teach this cohort" in r.text, r.text[-500:]
        r = await ivy.api("GET", "/hub/api/cohorts/bio-1/signups")
        assert r.json()["pending"] == ["stu3"]

        # a restarted hub keeps the cohort, its instructor's role and its members; a role
        # left by an older version with JupyterHub's `groups` scope gets today's scopes
        hub.stop()
        db = sqlite3.connect(Path(hub.data_dir) / "jupyterhub.sqlite")
        old = '["groups!group=bio-1", "read:users!group=bio-1"]'
        db.execute("UPDATE roles SET scopes = ? WHERE name = 'instructor-bio-1'", (old,))
        db.commit()
        db.close()
        await hub.start()
        r = await ivy.api("POST", "/hub/api/groups/bio-1/users", json={"users": ["admin"]})
        assert r.status_code in (403, 404), r.text
        r = await ivy.api("GET", "/hub/api/cohorts/bio-1")
        assert r.status_code == 200, r.text
        assert r.json()["instructors"] == ["ivy"]
        assert [m["name"] for m in r.json()["members"]] == ["stu"]
        # adding a waiting sign-up as a member approves it too
        r = await ivy.api("POST", "/hub/api/cohorts/bio-1/members", json={"users": ["stu3"]})
        assert r.status_code == 200 and r.json()["members"] == ["stu", "stu3"], r.text
        r = await ivy.api("GET", "/hub/api/cohorts/bio-1/signups")
        assert r.json()["pending"] == []
        await other.login("stu3", PASSWORD)
    finally:
        await student_client.aclose()
        await client.aclose()
        hub.stop()


async def test_members_of_the_instructors_group_make_their_own_cohorts(
    hub: HubProcess, admin: User
) -> None:
    """The operator's ``instructors`` group (role oraculo-instructors,
    ``custom:oraculo:cohorts:create``): its members make new cohorts and teach them; a plain
    user is refused, and a creator can neither name other instructors nor take over a group."""
    client = HubClient(hub)
    tag = uuid.uuid4().hex[:5]
    try:
        ina, pat, sid = [await new_user(client, f"{k}{tag}") for k in ("ina", "pat", "sid")]
        mine, theirs = f"mk-{tag}", f"mk-other-{tag}"

        # a plain user may not make a cohort
        assert_error(await pat.api("POST", "/hub/api/cohorts", json={"name": mine}), 403)
        # the admin puts ina in the instructors group; she makes one and is its instructor
        r = await admin.api("POST", "/hub/api/groups/instructors/users", json={"users": [ina.name]})
        assert r.status_code == 200, r.text
        assert_error(
            await ina.api(
                "POST", "/hub/api/cohorts", json={"name": mine, "instructors": [sid.name]}
            ),
            403,
            "forbidden",
        )
        r = await ina.api("POST", "/hub/api/cohorts", json={"name": mine})
        assert r.status_code == 201, r.text
        assert r.json()["instructors"] == [ina.name], r.text
        # an existing group (here a cohort the admin made) is not hers to take
        await make_cohort(admin, theirs, [sid.name])
        assert_error(
            await ina.api("POST", "/hub/api/cohorts", json={"name": theirs}), 409, "cohort_exists"
        )
        assert_error(await ina.api("POST", "/hub/api/cohorts", json={"name": "instructors"}), 409)
        # she manages hers, not the other; a plain user's token touches neither
        r = await ina.api("PUT", f"/hub/api/cohorts/{mine}/policy", json={"ai": False})
        assert r.status_code == 200, r.text
        assert_error(
            await ina.api("PUT", f"/hub/api/cohorts/{theirs}/policy", json={"ai": False}), 403
        )
        assert_error(
            await pat.api("PUT", f"/hub/api/cohorts/{mine}/policy", json={"ai": True}), 403
        )
        assert_error(await pat.api("GET", f"/hub/api/cohorts/{mine}"), 403)
        r = await admin.api("GET", f"/hub/api/cohorts/{mine}")
        assert r.json()["instructors"] == [ina.name] and r.json()["policy"]["ai"] is False

        # the hub's cohorts page: a plain user sees no form, and a post forged with his own
        # session and XSRF token is refused, nothing made
        page = await pat.client.http.get("/hub/cohorts")
        assert page.status_code == 200 and 'id="new-cohort"' not in page.text
        forged = f"forged-{tag}"
        xsrf = pat.client.http.cookies.get("_xsrf", path="/hub/") or ""
        r = await pat.client.http.post("/hub/cohorts", data={"_xsrf": xsrf, "name": forged})
        assert r.status_code == 403, r.status_code
        assert 'data-type="forbidden"' in r.text and "Only admins and instructors" in r.text
        r = await pat.client.http.post("/hub/cohorts", data={"name": forged})  # no XSRF
        assert r.status_code == 403, r.status_code
        assert_error(await admin.api("GET", f"/hub/api/cohorts/{forged}"), 404)
        r = await admin.api("GET", f"/hub/api/groups/{forged}")
        assert r.status_code == 404, r.text

        # an instructor makes one with the form (the API's path): a bad name and a taken one
        # are said in the page with their status; then the new cohort's invitation link
        page = await ina.client.http.get("/hub/cohorts")
        assert 'id="new-cohort"' in page.text and "cohort_instructors_input" not in page.text
        for name, status, type_ in [
            ("bio 101!", 400, "invalid_name"),
            (theirs, 409, "cohort_exists"),
        ]:
            r = await ina.client._form("/hub/cohorts", {"name": name})
            assert r.status_code == status, r.status_code
            assert f'data-type="{type_}"' in r.text and 'id="new-cohort"' in r.text
        made = f"form-{tag}"
        r = await ina.client._form("/hub/cohorts", {"name": made})
        assert r.status_code == 302, r.status_code
        page = await ina.client.http.get(r.headers["Location"])
        r = await admin.api("GET", f"/hub/api/cohorts/{made}")
        assert r.status_code == 200 and r.json()["instructors"] == [ina.name], r.text
        link = f"{ina.client.hub.url}/hub/signup?invite={r.json()['invite_code']}"
        section = page.text[page.text.index(f'id="cohort-{made}"') :]
        assert "Created." in section and f'value="{link}"' in section
    finally:
        await client.aclose()
