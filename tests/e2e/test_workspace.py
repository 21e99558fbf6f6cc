"""End to end: sign in, spawn, run code in the oraculo kernel through the proxy, stop."""

from __future__ import annotations

from tests.harness import HubClient, new_user


async def test_sign_in_spawn_execute_stop(hub_client: HubClient) -> None:
    user = await new_user(hub_client)
    try:
        await user.spawn()
        r = await user.api("GET", f"/user/{user.name}/api/kernelspecs")
        assert r.status_code == 200
        assert r.json()["default"] == "oraculo"
        kernel = await user.start_kernel()
        r = await user.api("GET", f"/user/{user.name}/api/kernels/{kernel}")
        assert r.json()["name"] == "oraculo"
        out = await user.execute(kernel, "print(1+1)")
        assert out["stdout"] == "2\n"
        assert out["error"] is None
        out = await user.execute(kernel, "%gpu")
        assert out["stdout"] == "No GPU: running on CPU.\n"

        r = await user.api("GET", f"/user/{user.name}/api/v1/status")
        assert r.status_code == 200, r.text
        status = r.json()
        assert status["user"] == user.name
        assert [k["id"] for k in status["kernels"]] == [kernel]
        assert status["gpu"] == {"assigned": "", "devices": []}
        assert status["model_service"]["ok"] is True, status["model_service"]
        await user.stop_server()
    finally:
        await user.client.aclose()
