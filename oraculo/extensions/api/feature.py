"""The api feature: ``GET /api/v1/openapi.json`` and the API explorer at ``/oraculo/explorer``.

The document is generated on request from the routes this server really serves (every loaded
feature's, a plugin's included) and the pydantic models their handlers validate with; see
:mod:`oraculo.openapi`.
"""

from __future__ import annotations

from typing import Any

from tornado import web

from oraculo.extensions.api.handlers import ExplorerHandler, OpenAPIHandler
from oraculo.extensions.base.feature import Feature
from oraculo.openapi import EXPLORER_DIR


class ApiFeature(Feature):
    name = "api"

    def handlers(self) -> list[Any]:
        return [
            (r"/api/v1/openapi.json", OpenAPIHandler),
            (r"/oraculo/explorer", ExplorerHandler),
            # Swagger UI, bundled from npm at set-up (dev.sh); a public library, so no login.
            (r"/oraculo/explorer/static/(.*)", web.StaticFileHandler, {"path": str(EXPLORER_DIR)}),
        ]
