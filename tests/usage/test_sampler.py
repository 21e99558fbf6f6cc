"""Kernel compute: a real kernel burns CPU, the sampler reports it to a real model service while
the cell still runs, and a compute budget then refuses new executions with its message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from jupyter_client.multikernelmanager import AsyncMultiKernelManager

from oraculo.extensions.base.modelclient import ModelClient
from oraculo.extensions.usage.sampler import BudgetExceeded, KernelSampler
from tests.harness import wait_for
from tests.models.conftest import ModelServer, bearer

from .conftest import OPERATOR, STUDENT1, STUDENT2

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


@pytest.fixture
async def kernels() -> AsyncIterator[AsyncMultiKernelManager]:
    km = AsyncMultiKernelManager()
    try:
        yield km
    finally:
        await km.shutdown_all(now=True)


async def cpu_of(http: httpx.AsyncClient, key: str) -> float:
    r = await http.get("/v1/usage/summary", params={"period": "day"}, headers=bearer(key))
    assert r.status_code == 200, r.text
    return float(r.json()["totals"]["cpu_seconds"])


async def test_a_running_cell_is_counted_while_it_runs(
    usage_server: ModelServer, http: httpx.AsyncClient, kernels: AsyncMultiKernelManager
) -> None:
    kernel_id = await kernels.start_kernel(kernel_name="python3")
    models = ModelClient(models_url=usage_server.url + "/", token=STUDENT1)
    sampler = KernelSampler(kernel_manager=kernels, models=models, interval=0)
    client = kernels.get_kernel(kernel_id).client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        before = await cpu_of(http, STUDENT1)
        await sampler.report()  # the kernel's start-up
        started = await cpu_of(http, STUDENT1)
        msg_id = client.execute(BURN.format(s=6))

        async def counted_mid_cell() -> bool:
            await sampler.report()
            return await cpu_of(http, STUDENT1) - started >= 1.0

        await wait_for(counted_mid_cell, 30, "CPU seconds of the running cell", 0.5)
        while (await client.get_shell_msg(timeout=60))["parent_header"]["msg_id"] != msg_id:
            pass  # the kernel_info reply of wait_for_ready
        await sampler.report()
        burnt = await cpu_of(http, STUDENT1) - before
        assert 6.0 <= burnt < 12.0, burnt
        # a sample with nothing new reports nothing
        assert await sampler.report() == 0
    finally:
        client.stop_channels()
        await sampler.stop()
        await models.aclose()


async def test_a_spent_compute_budget_refuses_new_executions(
    usage_server: ModelServer, http: httpx.AsyncClient
) -> None:
    models = ModelClient(models_url=usage_server.url + "/", token=STUDENT2)
    sampler = KernelSampler(models=models, interval=0)
    await sampler.admit()  # nothing bounds it yet
    budget: dict[str, Any] = {
        "scope": "group",
        "name": "cohort",
        "period": "month",
        "unit": "cpu_seconds",
        "limit": 1,
    }
    r = await http.put("/v1/budgets", json=budget, headers=bearer(OPERATOR))
    assert r.status_code == 200, r.text
    try:
        with pytest.raises(BudgetExceeded) as e:
            await sampler.admit()
        assert e.value.status == 429 and e.value.type == "budget_exceeded"
        assert "monthly CPU-seconds budget of group cohort" in e.value.message
        assert "resets at" in e.value.message
    finally:
        r = await http.delete(
            "/v1/budgets",
            params={k: str(v) for k, v in budget.items() if k != "limit"},
            headers=bearer(OPERATOR),
        )
        assert r.status_code == 204
    await sampler.admit()
    await sampler.stop()
    await models.aclose()
