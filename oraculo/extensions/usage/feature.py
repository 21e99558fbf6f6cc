"""The usage feature: reports the kernels' compute to the model service, refuses new executions
(through the API, chat's code runs and agents' tools) while a compute budget is spent, and
answers ``GET /api/v1/usage`` and ``GET /api/v1/usage/executions`` (the most expensive
executions, from their audit records) for the Usage panel. A notebook's own cells never pass through
here, so a running cell is never cut."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tornado.ioloop import IOLoop
from traitlets import Instance, Type

from oraculo.extensions.base.feature import Feature
from oraculo.extensions.usage.handlers import ExecutionsHandler, UsageHandler
from oraculo.extensions.usage.sampler import KernelSampler


class UsageFeature(Feature):
    name = "usage"

    sampler_class = Type(
        KernelSampler,
        klass=KernelSampler,
        config=True,
        help="Samples the kernels' CPU/GPU time and checks compute budgets.",
    )
    sampler = Instance(KernelSampler)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        ext = self.extension
        self.sampler = self.sampler_class(
            parent=self, kernel_manager=ext.serverapp.kernel_manager, models=self.models
        )
        IOLoop.current().add_callback(self.sampler.start)

    def handlers(self) -> list[tuple[str, Any]]:
        return [(r"/api/v1/usage", UsageHandler), (r"/api/v1/usage/executions", ExecutionsHandler)]

    def connect(self, features: Mapping[str, Feature]) -> None:
        execute = features.get("execute")
        if execute is not None:
            execute.service.admission = self.sampler.admit  # type: ignore[attr-defined]

    async def stop(self) -> None:
        await self.sampler.stop()
