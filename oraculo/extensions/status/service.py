"""What the Workspace panel shows: who, which kernels, which GPU, and whether models answer."""

from __future__ import annotations

import asyncio
from typing import Any

from traitlets import Float, Instance
from traitlets.config import LoggingConfigurable

from oraculo import __version__
from oraculo.extensions.base.modelclient import ModelClient
from oraculo.kernels import gpu
from oraculo.kernels.provisioner import provisioner_for


class StatusService(LoggingConfigurable):
    """Collects the state of one user's workspace."""

    models = Instance(ModelClient, help="The extension's one client of the model service.")
    probe_timeout = Float(
        2.0, config=True, help="Seconds to wait for the model service to answer a health probe."
    )

    async def model_service(self) -> dict[str, Any]:
        """Ask the model service's health endpoint; never raises."""
        health = await self.models.health(timeout=self.probe_timeout)
        return health.to_json()

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
