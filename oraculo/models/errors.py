"""The errors the model service raises on purpose; handlers render them as OpenAI's error envelope.

``{"error": {"message", "type", "param", "code"}}`` — the shape OpenAI SDKs parse, so a client sees
``openai.BadRequestError``, ``openai.RateLimitError`` and so on.
"""

from __future__ import annotations

from typing import Any


class ModelServiceError(Exception):
    """Base of every deliberate error: HTTP ``status``, a stable ``type``, optional ``code``."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def to_json(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(ModelServiceError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    """A prompt or input longer than the model reads. The envelope carries the numbers as fields
    (``context_length``, ``tokens``; for chat ``prompt_tokens``, for embeddings ``index``) so
    clients never parse the message's English (an upstream server words it differently)."""

    code = "context_length_exceeded"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        context_length: int,
        tokens: int,
        prompt_tokens: int | None = None,
        index: int | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.context_length = context_length
        self.tokens = tokens
        self.prompt_tokens = prompt_tokens
        self.index = index

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        data["error"].update(context_length=self.context_length, tokens=self.tokens)
        if self.prompt_tokens is not None:
            data["error"]["prompt_tokens"] = self.prompt_tokens
        if self.index is not None:
            data["error"]["index"] = self.index
        return data


class Unauthenticated(ModelServiceError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(ModelServiceError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class ModelNotFound(ModelServiceError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(ModelServiceError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(ModelServiceError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(ModelServiceError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class RateLimited(ModelServiceError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class QuotaExceeded(RateLimited):
    type = "insufficient_quota"
    code = "insufficient_quota"


class Overloaded(ModelServiceError):
    status = 503
    type = "server_error"
    code = "overloaded"


class UpstreamError(ModelServiceError):
    status = 502
    type = "server_error"
    code = "upstream_error"


class InternalError(ModelServiceError):
    """An unhandled error: the message stays generic, the traceback stays in the server log."""

    status = 500
    type = "server_error"
    code = "internal_error"
