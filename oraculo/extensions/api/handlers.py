"""``GET /api/v1/openapi.json`` (the API's OpenAPI 3.1 document) and the explorer page."""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import JupyterHandler
from tornado import web

from oraculo import __version__
from oraculo.extensions.base.errors import ErrorBody
from oraculo.extensions.base.handlers import OraculoAPIHandler
from oraculo.openapi import BEARER, document, explorer_page, operation, routes_of

DESCRIPTION = """The REST API of one user's Oráculo server, under `/user/<name>/`.
Authenticate with a JupyterHub token (`Authorization: token <token>` or `Bearer`) that
carries the user's server scope, or with the hub's sign-in cookie (plus the `_xsrf` cookie's
value in `X-XSRFToken` on anything but GET). Errors answer `{"message", "reason", "type"}`."""


class OpenAPIHandler(OraculoAPIHandler):
    """The OpenAPI 3.1 document of every ``/api/v1`` route this server serves."""

    @web.authenticated
    @authorized
    @operation(summary="This API's OpenAPI 3.1 document", responses={200: dict})
    async def get(self) -> None:
        self.finish(workspace_document(self.application, self.base_url))


def workspace_document(app: web.Application, base_url: str) -> dict[str, Any]:
    """The OpenAPI document of the ``/api/v1`` routes ``app`` serves under ``base_url``."""
    doc = document(
        routes_of(app),
        title="Oráculo workspace API",
        version=__version__,
        description=DESCRIPTION,
        prefix=base_url,
        include=lambda path: path.startswith("/api/v1/"),
        error_schema=ErrorBody,
        security=BEARER,
    )
    doc["servers"] = [{"url": base_url.rstrip("/")}]
    return doc


class ExplorerHandler(JupyterHandler):
    """The API explorer (Swagger UI) on this server's OpenAPI document."""

    auth_resource = "oraculo"

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(
            explorer_page(
                title="Oráculo workspace API",
                spec_url=f"{self.base_url}api/v1/openapi.json",
                static_url=f"{self.base_url}oraculo/explorer/static",
            )
        )
