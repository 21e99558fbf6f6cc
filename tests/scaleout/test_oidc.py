"""Sign-in through a real OpenID Connect provider, walked in Chromium.

The provider is panva's ``oidc-provider`` from npm (``oidc_provider.mjs``), with a confidential
client for the hub and a directory of accounts carrying a ``groups`` claim and an
``oraculo_admin`` claim. The hub runs ``authenticator = "oidc"`` (``oraculo.hub.oauth``) with
``allowed_groups``: people sign in at the provider and land in JupyterLab, their groups become
hub groups (and follow the directory at the next sign-in), the admin claim makes an admin, and
someone outside the allowed groups, or with a wrong password, gets nowhere.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import CHROMIUM_ARGS, REPO, HubProcess, free_port, wait_for

pytestmark = pytest.mark.browser

PROBE_TOKEN = secrets.token_hex(16)
ACCOUNTS: dict[str, dict[str, Any]] = {
    "ada": {"password": "ada-analytical-engine", "groups": ["cohort-a"], "admin": False},
    "grace": {"password": "grace-compiler-1952", "groups": ["staff"], "admin": True},
    "eve": {"password": "eve-listens-in-2024", "groups": ["visitors"], "admin": False},
}


@dataclass
class Provider:
    issuer: str
    accounts_file: Path
    proc: subprocess.Popen[bytes]

    def set_groups(self, name: str, groups: list[str]) -> None:
        accounts = json.loads(self.accounts_file.read_text())
        accounts[name]["groups"] = groups
        self.accounts_file.write_text(json.dumps(accounts))


@pytest.fixture(scope="module")
def hub_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
async def provider(
    tmp_path_factory: pytest.TempPathFactory, hub_port: int
) -> AsyncIterator[Provider]:
    folder = tmp_path_factory.mktemp("oidc")
    accounts = folder / "accounts.json"
    accounts.write_text(
        json.dumps(
            {n: {**a, "name": n.title(), "email": f"{n}@example.edu"} for n, a in ACCOUNTS.items()}
        )
    )
    port = free_port()
    settings = {
        "port": port,
        "client_id": "oraculo-hub",
        "client_secret": "hub-secret-0123456789",
        "redirect_uri": f"http://127.0.0.1:{hub_port}/hub/oauth_callback",
        "accounts_file": str(accounts),
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    log = open(folder / "provider.log", "wb")
    proc = subprocess.Popen(
        ["node", str(Path(__file__).with_name("oidc_provider.mjs")), str(folder / "settings.json")],
        cwd=REPO,  # node_modules/oidc-provider
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    issuer = f"http://127.0.0.1:{port}"

    async def discovery() -> bool:
        if proc.poll() is not None:
            raise RuntimeError((folder / "provider.log").read_text())
        async with httpx.AsyncClient(timeout=2) as c:
            r = await c.get(f"{issuer}/.well-known/openid-configuration")
            return r.status_code == 200

    try:
        await wait_for(discovery, 30, "the OpenID Connect provider")
        yield Provider(issuer, accounts, proc)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
async def oidc_hub(
    tmp_path_factory: pytest.TempPathFactory, provider: Provider, hub_port: int
) -> AsyncIterator[HubProcess]:
    folder = tmp_path_factory.mktemp("oidc-hub")
    config = folder / "jupyterhub_config.py"
    config.write_text(
        f"""from oraculo.hub.config import OraculoHub
c = get_config()  # noqa: F821
c.OraculoHub.authenticator = "oidc"
c.OraculoOIDCAuthenticator.oidc_issuer = {provider.issuer!r}
c.OraculoOIDCAuthenticator.client_id = "oraculo-hub"
c.OraculoOIDCAuthenticator.client_secret = "hub-secret-0123456789"
c.OraculoOIDCAuthenticator.oauth_callback_url = "http://127.0.0.1:{hub_port}/hub/oauth_callback"
c.OraculoOIDCAuthenticator.scope = ["openid", "profile", "email", "groups", "oraculo"]
c.OraculoOIDCAuthenticator.admin_claim = "oraculo_admin"
c.OraculoOIDCAuthenticator.allowed_groups = {{"cohort-a", "cohort-b", "staff"}}
OraculoHub(config=c).apply(c)
# a probe for the test to read users and groups with
c.JupyterHub.services.append({{"name": "probe", "api_token": {PROBE_TOKEN!r}}})
c.JupyterHub.load_roles.append(
    {{
        "name": "probe",
        "scopes": ["read:users", "read:groups", "read:servers", "read:roles:users", "admin:groups"],
        "services": ["probe"],
    }}
)
"""
    )
    hub = await HubProcess(folder, config_file=config, port=hub_port).start()
    try:
        yield hub
    finally:
        hub.stop()


async def hub_user(hub: HubProcess, name: str) -> dict[str, Any] | None:
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.get(
            f"{hub.url}/hub/api/users/{name}", headers={"Authorization": f"token {PROBE_TOKEN}"}
        )
        return dict(r.json()) if r.status_code == 200 else None


async def sign_in_at_provider(page: Any, name: str, password: str, shots: Path, step: str) -> None:
    await page.wait_for_selector("#login")
    await page.screenshot(path=str(shots / f"scaleout-oidc-{step}-provider.png"))
    await page.fill("#login", name)
    await page.fill("#password", password)
    await page.click("#submit")


async def test_sign_in_through_the_provider_lands_in_jupyterlab(
    oidc_hub: HubProcess, provider: Provider, artifacts: Path
) -> None:
    from playwright.async_api import async_playwright

    seen: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("request", lambda r: seen.append(r.url))
            await page.goto(f"{oidc_hub.url}/hub/login")
            button = page.get_by_role("button", name=re.compile("Sign in with your institution"))
            await button.wait_for()
            await page.screenshot(path=str(artifacts / "scaleout-oidc-1-hub-login.png"))
            await button.click()

            # a wrong password stays at the provider
            await page.wait_for_url(re.compile(rf"^{provider.issuer}/interaction/"))
            await sign_in_at_provider(page, "ada", "not-her-password", artifacts, "2")
            await page.wait_for_selector("#error")
            await page.screenshot(path=str(artifacts / "scaleout-oidc-3-wrong-password.png"))
            assert await hub_user(oidc_hub, "ada") is None

            await page.fill("#login", "ada")
            await page.fill("#password", ACCOUNTS["ada"]["password"])
            await page.click("#submit")
            await page.wait_for_url(re.compile(r"/user/ada/lab"), timeout=120_000)
            await page.locator(".jp-LauncherCard").first.wait_for(timeout=60_000)
            await page.screenshot(path=str(artifacts / "scaleout-oidc-4-jupyterlab.png"))
        finally:
            await browser.close()
    ada = await hub_user(oidc_hub, "ada")
    assert ada is not None
    assert ada["groups"] == ["cohort-a"] and ada["admin"] is False
    assert "oraculo-admin" not in ada["roles"]
    assert ada["servers"][""]["ready"]
    # the directory's group brought its shared folder with it
    assert (oidc_hub.data_dir / "users" / "ada" / "shared" / "cohort-a").is_dir()
    assert all(u.startswith(("http://127.0.0.1:", "data:", "blob:")) for u in seen)


async def provider_round(
    hub: HubProcess, provider: Provider, name: str, shots: Path, step: str
) -> Any:
    """Sign ``name`` in through the provider, to the hub's home page (no server started)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 700})
            await page.goto(f"{hub.url}/hub/oauth_login?next=%2Fhub%2Fhome")
            await sign_in_at_provider(page, name, ACCOUNTS[name]["password"], shots, step)
            await page.wait_for_url(re.compile(rf"^{hub.url}/hub/"), timeout=60_000)
            await page.wait_for_load_state()
            await page.screenshot(path=str(shots / f"scaleout-oidc-{step}-{name}.png"))
            return await page.content()
        finally:
            await browser.close()


async def test_admin_claim_and_group_claim_follow_the_directory(
    oidc_hub: HubProcess, provider: Provider, artifacts: Path
) -> None:
    await provider_round(oidc_hub, provider, "grace", artifacts, "5")
    grace = await hub_user(oidc_hub, "grace")
    assert grace is not None and grace["admin"] is True and grace["groups"] == ["staff"]
    # an admin from the claim is an operator like other admins (usage read-all, budgets, audit)
    assert "oraculo-admin" in grace["roles"], grace["roles"]
    assert grace["servers"] == {}

    # the directory moves ada to another cohort: her hub groups follow at the next sign-in
    provider.set_groups("ada", ["cohort-b"])
    await provider_round(oidc_hub, provider, "ada", artifacts, "6")
    ada = await hub_user(oidc_hub, "ada")
    assert ada is not None and ada["groups"] == ["cohort-b"]
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.get(
            f"{oidc_hub.url}/hub/api/groups/cohort-a",
            headers={"Authorization": f"token {PROBE_TOKEN}"},
        )
        # (404 when this test runs alone: ada never signed in while in cohort-a)
        assert r.status_code == 404 or r.json()["users"] == []


async def test_a_sign_in_keeps_cohorts_made_in_the_hub(
    oidc_hub: HubProcess, provider: Provider, artifacts: Path
) -> None:
    """The directory manages plain groups; a cohort joined in the hub (here an admin adds her;
    an invitation or an approval is the same) survives her next sign-in."""
    provider.set_groups("ada", ["cohort-b"])
    await provider_round(oidc_hub, provider, "ada", artifacts, "8")
    probe = {"Authorization": f"token {PROBE_TOKEN}"}
    async with httpx.AsyncClient(base_url=oidc_hub.url, headers=probe, timeout=30) as c:
        r = await c.post("/hub/api/cohorts", json={"name": "seminar-9", "instructors": []})
        assert r.status_code == 201, r.text
        r = await c.post("/hub/api/cohorts/seminar-9/members", json={"users": ["ada"]})
        assert r.status_code == 200 and r.json()["members"] == ["ada"], r.text
    ada = await hub_user(oidc_hub, "ada")
    assert ada is not None and ada["groups"] == ["cohort-b", "seminar-9"]

    # the directory moves her back to cohort-a: the plain group follows, the cohort stays
    provider.set_groups("ada", ["cohort-a"])
    await provider_round(oidc_hub, provider, "ada", artifacts, "9")
    ada = await hub_user(oidc_hub, "ada")
    assert ada is not None and ada["groups"] == ["cohort-a", "seminar-9"], ada["groups"]


async def test_someone_outside_the_allowed_groups_is_refused(
    oidc_hub: HubProcess, provider: Provider, artifacts: Path
) -> None:
    page = await provider_round(oidc_hub, provider, "eve", artifacts, "7")
    assert "403" in page
    assert await hub_user(oidc_hub, "eve") is None
    # nor can a forged callback sign anyone in: the state does not match
    async with httpx.AsyncClient(base_url=oidc_hub.url, timeout=10) as c:
        r = await c.get("/hub/oauth_callback", params={"code": "forged", "state": "forged"})
        assert r.status_code in (400, 401, 403)
        assert not any(k.startswith("jupyterhub-hub-login") for k in c.cookies)
