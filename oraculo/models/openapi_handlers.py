"""``GET /openapi.json`` (the model service's OpenAPI 3.1 document) and its explorer page.

Both are public, like ``/health``: they describe the API and hold nothing of anyone's. The
document is generated from the routes the service really serves and the pydantic models of
:mod:`oraculo.models.protocol` that its handlers validate with (see :mod:`oraculo.openapi`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from tornado import web

from oraculo import __version__
from oraculo.openapi import BEARER, EXPLORER_DIR, document, explorer_page, routes_of

from .basehandler import BaseHandler

DESCRIPTION = """The shared model service: OpenAI's API (so OpenAI SDKs work against it) plus
usage, budgets and the execution audit. Authenticate with a JupyterHub token
(`Authorization: Bearer <token>`). Errors answer OpenAI's envelope
`{"error": {"message", "type", "param", "code"}}`."""


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(BaseModel):
    """OpenAI's error envelope, every error answer of the model service."""

    error: ErrorDetail


class OpenAPIHandler(BaseHandler):
    """The OpenAPI 3.1 document of every route of the model service."""

    auth_required = False

    def get(self) -> None:
        self.write_json(models_document(self.application))


def models_document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI document of every route of the model service's application ``app``."""
    prefix = app.settings["oraculo_base_url"]
    doc = document(
        routes_of(app),
        title="Oráculo model service",
        version=__version__,
        description=DESCRIPTION,
        prefix=prefix,
        include=lambda path: not path.startswith("/explorer"),  # HTML and its assets
        error_schema=ErrorEnvelope,
        security=BEARER,
    )
    doc["servers"] = [{"url": prefix.rstrip("/")}]
    return doc


class ExplorerHandler(BaseHandler):
    """The API explorer (Swagger UI) on the model service's document."""

    auth_required = False

    def get(self) -> None:
        prefix = self.application.settings["oraculo_base_url"]
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(
            explorer_page(
                title="Oráculo model service API",
                spec_url=f"{prefix}openapi.json",
                static_url=f"{prefix}explorer/static",
            )
        )


def openapi_routes(prefix: str, kw: dict[str, Any]) -> list[Any]:
    return [
        (rf"{prefix}openapi.json", OpenAPIHandler, kw),
        (rf"{prefix}explorer", ExplorerHandler, kw),
        (rf"{prefix}explorer/static/(.*)", web.StaticFileHandler, {"path": str(EXPLORER_DIR)}),
    ]
