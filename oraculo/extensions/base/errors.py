"""The errors services raise; handlers turn them into ``{"message", "reason", "type"}``."""

from __future__ import annotations

from pydantic import BaseModel


class OraculoError(Exception):
    """Base of every error a service raises on purpose.

    ``status`` is the HTTP status a handler answers with, ``type`` a stable machine-readable
    name clients may switch on, ``reason`` a short human phrase.
    """

    status = 500
    type = "internal_error"
    reason = "Internal error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason

    def to_json(self) -> dict[str, str]:
        return {"message": self.message, "reason": self.reason, "type": self.type}


class BadRequest(OraculoError):
    status = 400
    type = "invalid_request"
    reason = "Bad request"


class Forbidden(OraculoError):
    status = 403
    type = "forbidden"
    reason = "Forbidden"


class NotFound(OraculoError):
    status = 404
    type = "not_found"
    reason = "Not found"


class Conflict(OraculoError):
    status = 409
    type = "conflict"
    reason = "Conflict"


class PayloadTooLarge(OraculoError):
    status = 413
    type = "payload_too_large"
    reason = "Payload too large"


class Unavailable(OraculoError):
    status = 503
    type = "unavailable"
    reason = "Service unavailable"


class ErrorBody(BaseModel):
    """Every error answer of the extension's API (the OpenAPI documents' ``default`` response)."""

    message: str
    reason: str
    type: str
