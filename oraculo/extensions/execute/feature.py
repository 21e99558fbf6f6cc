"""The execute feature: ``/api/v1/execute`` and the in-process execute service.

Other features reach the service as ``extension.feature("execute").service``; see
:mod:`oraculo.extensions.execute.service` for its ``execute`` / ``get`` / ``wait`` API.
"""

from __future__ import annotations

from typing import Any

from traitlets import Instance, Type

from oraculo.extensions.base.feature import Feature
from oraculo.extensions.execute.audit import AuditLog
from oraculo.extensions.execute.handlers import AuditHandler, ExecuteHandler, ExecutionHandler
from oraculo.extensions.execute.service import ExecuteService


class ExecuteFeature(Feature):
    name = "execute"

    service_class = Type(
        ExecuteService,
        klass=ExecuteService,
        config=True,
        help="The service that runs code in the user's sandbox kernels.",
    )
    service = Instance(ExecuteService)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        app = self.extension.serverapp
        self.service = self.service_class(
            parent=self,
            # Kept by the model service, out of the audited code's reach (see audit.py).
            audit=AuditLog(parent=self, models=self.models),
            kernel_manager=app.kernel_manager,
            session_manager=app.session_manager,
            root_dir=app.root_dir,
            base_url=app.base_url,
        )

    def handlers(self) -> list[tuple[str, Any]]:
        return [
            (r"/api/v1/execute", ExecuteHandler),
            (r"/api/v1/execute/audit", AuditHandler),
            (r"/api/v1/execute/([0-9a-f]{32})", ExecutionHandler),
        ]

    async def stop(self) -> None:
        await self.service.stop()
        await self.service.audit.stop()
