"""The model service as JupyterHub runs it: a managed service behind the proxy, hub-token auth."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from tests.harness import ADMIN_PASSWORD, HubClient, HubProcess, User, new_user, wait_for

from .conftest import assert_envelope


@pytest.fixture(scope="module")
async def models_hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HubProcess]:
    hub = await HubProcess(tmp_path_factory.mktemp("models-hub"), models=True).start()

    async def loaded() -> bool:
        async with httpx.AsyncClient(timeout=5) as c:
            r = await c.get(f"{hub.url}/services/models/health")
            return r.status_code == 200 and r.json()["status"] == "ok"

    try:
        await wait_for(loaded, 180, "the hub's model service to load", 0.25)
        yield hub
    finally:
        hub.stop()


@pytest.fixture(scope="module")
async def hub_users(models_hub: HubProcess) -> AsyncIterator[dict[str, User]]:
    client = HubClient(models_hub)
    users = {name: await new_user(client, name) for name in ("ana", "ben")}
    admin = HubClient(models_hub)
    await admin.login("admin", ADMIN_PASSWORD)
    users["admin"] = User(name="admin", token=await admin.token("admin"), client=admin)
    try:
        yield users
    finally:
        for u in users.values():
            await u.client.aclose()
        await client.aclose()


def base(hub: HubProcess) -> str:
    return f"{hub.url}/services/models/v1"


async def test_user_token_through_the_proxy(
    models_hub: HubProcess, hub_users: dict[str, User]
) -> None:
    ana = hub_users["ana"]
    async with openai.AsyncOpenAI(base_url=base(models_hub), api_key=ana.token, max_retries=0) as c:
        r = await c.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0,
            max_tokens=12,
        )
        assert "Paris" in (r.choices[0].message.content or "")
        stream = await c.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [ch async for ch in stream]
        assert chunks[-1].usage is not None
        e = await c.embeddings.create(model="minilm", input="hello")
        assert len(e.data[0].embedding) == 384


async def test_tokens_without_the_scope_are_refused(
    models_hub: HubProcess, hub_users: dict[str, User]
) -> None:
    ana = hub_users["ana"]
    narrow = await ana.client.token("ana", scopes=["read:users:name!user"])
    async with httpx.AsyncClient(base_url=models_hub.url, timeout=30) as http:
        r = await http.get(
            "/services/models/v1/models", headers={"Authorization": f"Bearer {narrow}"}
        )
        assert_envelope(r, 403)
        r = await http.get(
            "/services/models/v1/models", headers={"Authorization": "Bearer not-a-token"}
        )
        assert_envelope(r, 401)


async def test_usage_is_per_user_and_admins_see_all(
    models_hub: HubProcess, hub_users: dict[str, User]
) -> None:
    ana, ben, admin = hub_users["ana"], hub_users["ben"], hub_users["admin"]
    async with httpx.AsyncClient(base_url=f"{models_hub.url}/services/models", timeout=60) as http:
        for user in (ana, ben):
            r = await http.post(
                "/v1/embeddings", json={"model": "minilm", "input": "mine"}, headers=user.auth
            )
            assert r.status_code == 200, r.text

        async def users_seen() -> set[str] | None:
            r = await http.get("/v1/usage", headers=admin.auth)
            assert r.status_code == 200, r.text
            seen = {t["user"] for t in r.json()["totals"]}
            return seen if {"ana", "ben"} <= seen else None

        await wait_for(users_seen, 10, "admin to see ana's and ben's usage")
        mine = (await http.get("/v1/usage", headers=ben.auth)).json()
        assert {d["user"] for d in mine["data"]} == {"ben"}
        r = await http.get("/v1/usage", params={"user": "ana"}, headers=ben.auth)
        assert_envelope(r, 403)
