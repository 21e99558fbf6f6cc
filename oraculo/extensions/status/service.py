"""What the Workspace panel shows: who, which kernels, which GPU, and whether models answer."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from traitlets import Float, Unicode
from traitlets.config import LoggingConfigurable

from oraculo import __version__
from oraculo.kernels import gpu
from oraculo.kernels.provisioner import provisioner_for


class StatusService(LoggingConfigurable):
    """Collects the state of one user's workspace."""

    models_url = Unicode(
        "",
        config=True,
        help="""Base URL of the model service (ending in /), e.g.
        http://127.0.0.1:8000/services/models/. Empty: no model service is configured.""",
    )
    models_token = Unicode(
        "",
        help="Token used to reach the model service (the server's own hub token).",
    )
    probe_timeout = Float(
        2.0, config=True, help="Seconds to wait for the model service to answer a health probe."
    )

    async def model_service(self) -> dict[str, Any]:
        """Ask the model service's health endpoint; never raises."""
        if not self.models_url:
            return {"configured": False, "ok": False, "detail": "no model service configured"}
        url = self.models_url.rstrip("/") + "/health"
        headers = {"Authorization": f"Bearer {self.models_token}"} if self.models_token else {}
        start = time.perf_counter()
        try:
            async with httpx.AsyncClient(timeout=self.probe_timeout) as client:
                r = await client.get(url, headers=headers)
        except httpx.HTTPError as e:
            return {"configured": True, "ok": False, "detail": f"unreachable: {type(e).__name__}"}
        ms = round((time.perf_counter() - start) * 1000, 1)
        if r.status_code != 200:
            return {
                "configured": True,
                "ok": False,
                "detail": f"HTTP {r.status_code}",
                "latency_ms": ms,
            }
        return {"configured": True, "ok": True, "detail": "answering", "latency_ms": ms}

    def kernel_resources(self, kernels: list[dict[str, Any]]) -> None:
        """Add each sandbox kernel's memory, CPU, process and GPU use against its limits."""
        by_pid: dict[int, int] | None = None
        for kernel in kernels:
            prov = provisioner_for(str(kernel.get("id", "")))
            if prov is None:
                kernel["resources"] = None  # not a sandbox kernel: nothing measured
                continue
            usage = prov.usage()
            if by_pid is None:
                by_pid = gpu.process_gpu_memory()
            usage["gpu_memory_mib"] = sum(by_pid.get(pid, 0) for pid in usage.pop("pids"))
            kernel["resources"] = usage

    async def status(self, user: str, kernels: list[dict[str, Any]]) -> dict[str, Any]:
        await asyncio.to_thread(self.kernel_resources, kernels)
        return {
            "user": user,
            "version": __version__,
            "kernels": kernels,
            "gpu": gpu.gpu_info(),
            "model_service": await self.model_service(),
        }
