"""Through a real user server: only sandboxed kernels are offered, and a notebook that names
another kernel (the example agent notebook names `python3`) opens on the sandboxed one."""

from __future__ import annotations

import json
import resource

from oraculo.kernels.limits import SandboxLimits
from tests.harness import REPO, User

EXAMPLE = REPO / "notebooks" / "team_data_cleaner_agent.ipynb"

#: What the kernel reports of itself: limits, credentials, and how its server reaches it.
PROBE = """
import json, os, resource
from ipykernel.connect import get_connection_info
info = json.loads(get_connection_info())
print(json.dumps({
    "data": resource.getrlimit(resource.RLIMIT_DATA)[0],
    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    "env": sorted(os.environ),
    "transport": info["transport"],
}))
"""


async def test_only_sandboxed_kernelspecs_are_offered(alice: User) -> None:
    r = await alice.api("GET", f"/user/{alice.name}/api/kernelspecs")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body["kernelspecs"]) == {"oraculo"}, body  # no "Python 3 (ipykernel)"
    assert body["default"] == "oraculo"
    spec = body["kernelspecs"]["oraculo"]["spec"]
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "oraculo-sandbox"
    # Asked for by the plain kernel's name, the server answers with the sandboxed spec.
    r = await alice.api("GET", f"/user/{alice.name}/api/kernelspecs/python3")
    assert r.status_code == 200, r.text
    assert r.json()["spec"]["display_name"] == spec["display_name"]
    assert (
        r.json()["spec"]["metadata"]["kernel_provisioner"] == spec["metadata"]["kernel_provisioner"]
    )


async def test_a_notebook_saved_with_python3_opens_on_the_sandboxed_kernel(alice: User) -> None:
    notebook = json.loads(EXAMPLE.read_text())
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    r = await alice.api(
        "PUT",
        f"/user/{alice.name}/api/contents/{EXAMPLE.name}",
        json={"type": "notebook", "format": "json", "content": notebook},
    )
    assert r.status_code in (200, 201), r.text

    # What JupyterLab does on opening it: a session with the notebook's kernel name.
    r = await alice.api(
        "POST",
        f"/user/{alice.name}/api/sessions",
        json={"path": EXAMPLE.name, "type": "notebook", "kernel": {"name": "python3"}},
    )
    assert r.status_code == 201, r.text
    session, kernel = r.json()["id"], r.json()["kernel"]
    assert kernel["name"] == "oraculo"

    out = await alice.execute(kernel["id"], PROBE)
    assert out["error"] is None, out
    seen = json.loads(out["stdout"])
    limits = SandboxLimits()  # the session hub sets no group limits: the defaults hold
    assert seen["data"] == limits.memory_mb * 1024 * 1024
    assert seen["nofile"] == limits.open_files
    assert "JUPYTERHUB_API_TOKEN" not in seen["env"]
    assert "ORACULO_SERVER_URL" in seen["env"]
    assert seen["transport"] == "ipc"
    unlimited = resource.getrlimit(resource.RLIMIT_DATA)[0]
    assert seen["data"] != unlimited

    # The kernels API too, for any name it is given.
    for name in ("python3", "no-such-kernel"):
        r = await alice.api("POST", f"/user/{alice.name}/api/kernels", json={"name": name})
        assert r.status_code == 201, r.text
        assert r.json()["name"] == "oraculo"
        await alice.api("DELETE", f"/user/{alice.name}/api/kernels/{r.json()['id']}")
    await alice.api("DELETE", f"/user/{alice.name}/api/sessions/{session}")
