"""A cohort on a real hub for the educator tests: an instructor, students, an nbgrader assignment.

The hub admin makes the hub group with the instructor in its ``instructors`` property (the
hub's group properties API); servers start after that, so the spawner hands each server its
cohorts' exchange. The assignment is a real nbgrader source notebook (a solution cell and a
2-point test cell), written into the instructor's course folder through the contents API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import nbformat

from tests.harness import ADMIN_PASSWORD, HubClient, HubProcess, User, new_user

ASSIGNMENT = "hw1"
SOLUTION = "def double(x):\n    return 2 * x"


def source_notebook(kernel: str = "oraculo") -> dict[str, Any]:
    """An nbgrader source notebook: a solution cell and a locked 2-point test cell."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": "Oráculo", "language": "python"}
    meta = {"schema_version": 3, "task": False}
    nb.cells = [
        nbformat.v4.new_markdown_cell("Write `double(x)`, which returns twice `x`."),
        nbformat.v4.new_code_cell(
            "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION",
            metadata={
                "nbgrader": {
                    **meta,
                    "grade": False,
                    "solution": True,
                    "locked": False,
                    "grade_id": "double",
                }
            },
        ),
        nbformat.v4.new_code_cell(
            "assert double(2) == 4\nassert double(5) == 10",
            metadata={
                "nbgrader": {
                    **meta,
                    "grade": True,
                    "solution": False,
                    "locked": True,
                    "grade_id": "test_double",
                    "points": 2,
                }
            },
        ),
    ]
    return json.loads(nbformat.writes(nb))


async def admin_of(hub: HubProcess) -> User:
    client = HubClient(hub)
    await client.login("admin", ADMIN_PASSWORD)
    return User("admin", await client.token("admin"), client)


async def make_cohort(admin: User, group: str, instructor: str, students: list[str]) -> None:
    r = await admin.api("POST", f"/hub/api/groups/{group}", json={"users": [instructor, *students]})
    assert r.status_code == 201, r.text
    r = await admin.api(
        "PUT", f"/hub/api/groups/{group}/properties", json={"instructors": [instructor]}
    )
    assert r.status_code == 200, r.text


async def contents_put(user: User, path: str, body: dict[str, Any]) -> None:
    r = await user.api("PUT", f"/user/{user.name}/api/contents/{path}", json=body)
    assert r.status_code in (200, 201), r.text


async def write_source(instructor: User, course_id: str) -> None:
    """The assignment's source notebook in the instructor's course folder."""
    parts = ["courses", f"courses/{course_id}", f"courses/{course_id}/source"]
    parts.append(f"courses/{course_id}/source/{ASSIGNMENT}")
    for folder in parts:
        await contents_put(instructor, folder, {"type": "directory"})
    await contents_put(
        instructor,
        f"courses/{course_id}/source/{ASSIGNMENT}/{ASSIGNMENT}.ipynb",
        {"type": "notebook", "format": "json", "content": source_notebook()},
    )


async def step(user: User, group: str, action: str, **kw: Any) -> httpx.Response:
    return await user.api(
        "POST",
        f"/user/{user.name}/api/v1/courses/{group}/assignments/{ASSIGNMENT}/{action}",
        timeout=300,
        **kw,
    )


async def view(user: User, group: str) -> dict[str, Any]:
    r = await user.api("GET", f"/user/{user.name}/api/v1/courses/{group}")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


async def complete(student: User, course_id: str) -> None:
    """Fill in the fetched notebook's solution cell, as the student would in JupyterLab."""
    path = f"assignments/{course_id}/{ASSIGNMENT}/{ASSIGNMENT}.ipynb"
    r = await student.api("GET", f"/user/{student.name}/api/contents/{path}")
    assert r.status_code == 200, r.text
    nb = r.json()["content"]
    cell = next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("solution"))
    assert "raise NotImplementedError" in "".join(cell["source"])
    cell["source"] = SOLUTION
    await contents_put(student, path, {"type": "notebook", "format": "json", "content": nb})


@dataclass
class Cohort:
    hub: HubProcess
    group: str
    admin: User
    instructor: User
    students: list[User]
    others: list[User]

    async def aclose(self) -> None:
        # The members' sessions are closed with the sign-up client that made them.
        await self.admin.client.aclose()


async def new_cohort(hub: HubProcess, group: str, tag: str, signup: HubClient) -> Cohort:
    """An instructor and two students in ``group``, and one user outside it; all servers up."""
    admin = await admin_of(hub)
    instructor = await new_user(signup, f"i{tag}")
    students = [await new_user(signup, f"s{tag}{n}") for n in "ab"]
    outsider = await new_user(signup, f"o{tag}")
    await make_cohort(admin, group, instructor.name, [s.name for s in students])
    for u in [instructor, *students, outsider]:
        await u.spawn()
    return Cohort(hub, group, admin, instructor, students, [outsider])
