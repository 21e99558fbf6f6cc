"""The status feature: ``GET /api/v1/status``, what the Workspace panel shows."""

from __future__ import annotations

from typing import Any

from traitlets import Instance, Type

from oraculo.extensions.base.feature import Feature
from oraculo.extensions.status.handlers import StatusHandler
from oraculo.extensions.status.service import StatusService


class StatusFeature(Feature):
    name = "status"

    service_class = Type(
        StatusService,
        klass=StatusService,
        config=True,
        help="The service that reports the workspace's state.",
    )
    service = Instance(StatusService)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        assert self.models is not None
        self.service = self.service_class(parent=self, models=self.models)

    def handlers(self) -> list[tuple[str, Any]]:
        return [(r"/api/v1/status", StatusHandler)]
