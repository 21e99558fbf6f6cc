"""Who may reach a user's server: its owner, nobody else, and nobody unauthenticated."""

from __future__ import annotations

import httpx
import pytest
import websockets

from tests.harness import User

# Everything alice's server offers: the Jupyter APIs, our API, the UI and the panels.
ALICE_PATHS = [
    "api/status",
    "api/kernels",
    "api/contents",
    "api/v1/status",
    "lab",
    "oraculo-panels/workspace",
]


def refused(r: httpx.Response) -> bool:
    """A refusal is a 401/403, or a redirect to the hub's sign-in or OAuth flow."""
    if r.status_code in (401, 403):
        return True
    if r.status_code in (302, 303):
        location = r.headers.get("location", "")
        return "/hub/" in location
    return False


@pytest.mark.parametrize("path", ALICE_PATHS)
async def test_unauthenticated_requests_are_refused(alice: User, path: str) -> None:
    async with httpx.AsyncClient(base_url=alice.client.hub.url) as anon:
        r = await anon.get(f"/user/{alice.name}/{path}")
        assert refused(r), (r.status_code, r.text[:200])


@pytest.mark.parametrize("path", ALICE_PATHS)
async def test_another_users_token_is_refused(alice: User, mallory: User, path: str) -> None:
    async with httpx.AsyncClient(base_url=alice.client.hub.url) as token_only:
        r = await token_only.get(f"/user/{alice.name}/{path}", headers=mallory.auth)
    assert r.status_code == 403, (r.status_code, r.text[:200])
    # ...while alice herself gets through on the API paths.
    if path.startswith("api/"):
        r = await alice.api("GET", f"/user/{alice.name}/{path}")
        assert r.status_code == 200


async def test_another_users_token_cannot_start_or_stop_alices_kernels(
    alice: User, mallory: User
) -> None:
    kernel = await alice.start_kernel()
    base = f"/user/{alice.name}/api/kernels"
    for method, path in [
        ("POST", base),
        ("DELETE", f"{base}/{kernel}"),
        ("POST", f"{base}/{kernel}/interrupt"),
    ]:
        r = await mallory.client.http.request(method, path, headers=mallory.auth, json={})
        assert r.status_code == 403, (method, path, r.status_code)
    out = await alice.execute(kernel, "x = 41; print(x + 1)")
    assert out["stdout"] == "42\n"


async def test_another_users_cookie_is_refused(alice: User, mallory: User) -> None:
    """Mallory's browser session (hub cookie + her own server's cookie) gets nothing of alice's."""
    browser = mallory.client.http
    r = await browser.get(f"/user/{mallory.name}/lab", follow_redirects=True)
    assert r.status_code == 200  # her own server: the OAuth dance succeeded
    r = await browser.get(f"/user/{mallory.name}/api/status")
    assert r.status_code == 200
    assert any(c.startswith(f"jupyterhub-user-{mallory.name}") for c in browser.cookies)

    for path in ALICE_PATHS:
        r = await browser.get(f"/user/{alice.name}/{path}", follow_redirects=True)
        assert r.status_code == 403, (path, r.status_code, str(r.url))

    # Her server cookie, replayed on alice's server, is no key either.
    forged = httpx.Cookies()
    for cookie in browser.cookies.jar:
        if cookie.name.startswith("jupyterhub-user-"):
            forged.set(cookie.name.replace(mallory.name, alice.name), cookie.value or "")
    async with httpx.AsyncClient(base_url=alice.client.hub.url, cookies=forged) as c:
        for path in ALICE_PATHS:
            r = await c.get(f"/user/{alice.name}/{path}")
            assert refused(r), (path, r.status_code)


async def test_kernel_websocket_refuses_others(alice: User, mallory: User) -> None:
    kernel = await alice.start_kernel()
    url = alice.kernel_ws_url(kernel)
    for headers in ({}, mallory.auth):
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(url, additional_headers=headers):
                pass
        assert info.value.response.status_code in (302, 401, 403)
    out = await alice.execute(kernel, "print('still mine')")
    assert out["stdout"] == "still mine\n"


async def test_panel_websocket_refuses_others(alice: User, mallory: User) -> None:
    base = alice.client.hub.url.replace("http://", "ws://")
    url = f"{base}/user/{alice.name}/oraculo-panels/workspace/ws"
    for headers in ({}, mallory.auth):
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(url, additional_headers=headers):
                pass
        assert info.value.response.status_code in (302, 401, 403)
