"""The base every oraculo API handler derives from: one error envelope, validated JSON bodies."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from jupyter_server.base.handlers import APIHandler
from pydantic import BaseModel, ValidationError
from tornado import web

from oraculo.extensions.base.errors import BadRequest, OraculoError, PayloadTooLarge

M = TypeVar("M", bound=BaseModel)

#: Largest JSON body any oraculo endpoint accepts.
MAX_BODY_BYTES = 4 * 1024 * 1024


class OraculoAPIHandler(APIHandler):
    """Answers every error as ``{"message", "reason", "type"}`` with the right status.

    Services raise :class:`OraculoError`; anything else becomes a 500 that says
    "Unhandled error" and leaves its traceback in the server log only.
    """

    auth_resource = "oraculo"

    @property
    def oraculo(self) -> Any:
        """The running :class:`~oraculo.extensions.app.OraculoExtension`."""
        return self.settings["oraculo"]

    def feature(self, name: str) -> Any:
        """The loaded feature called ``name``: its services do the work."""
        return self.oraculo.feature(name)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json")
        exc_info = kwargs.get("exc_info")
        exc = exc_info[1] if exc_info else None
        if isinstance(exc, OraculoError):
            body = exc.to_json()
        elif isinstance(exc, web.HTTPError):
            reason = exc.reason or self._reason
            body = {
                "message": exc.log_message % exc.args if exc.log_message else reason,
                "reason": reason,
                "type": _type_for_status(status_code),
            }
        else:
            body = {
                "message": "Unhandled error",
                "reason": self._reason,
                "type": "internal_error",
            }
        self.finish(json.dumps(body))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, OraculoError):
            self.log.info(
                "%s %s: %s %s", self.request.method, self.request.path, value.status, value.type
            )
            return
        super().log_exception(typ, value, tb)

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        if exc_info and isinstance(exc_info[1], OraculoError):
            status_code = exc_info[1].status
        super().send_error(status_code, **kwargs)

    def parse_body(self, model: type[M]) -> M:
        """Parse the request body as JSON into ``model``; any problem is a 400 that says what."""
        body = self.request.body or b""
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"Request body is larger than {MAX_BODY_BYTES} bytes")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRequest("Request body is not valid UTF-8") from e
        try:
            data = json.loads(text) if text.strip() else None
        except json.JSONDecodeError as e:
            raise BadRequest(f"Request body is not valid JSON: {e.msg} at {e.pos}") from e
        if not isinstance(data, dict):
            raise BadRequest("Request body must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as e:
            raise BadRequest(_describe(e)) from e


def _describe(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "Invalid request: " + "; ".join(parts)


def _type_for_status(status: int) -> str:
    return {
        400: "invalid_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        409: "conflict",
        413: "payload_too_large",
        429: "rate_limited",
        503: "unavailable",
    }.get(status, "internal_error" if status >= 500 else "error")
