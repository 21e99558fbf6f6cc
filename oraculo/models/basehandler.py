"""The model service's base request handler: security headers, authentication, OpenAI's error
envelope and per-request metering. Every route (``handlers``, ``audio``) derives from it."""

from __future__ import annotations

import time
from typing import Any

from tornado import web

from .auth import Identity
from .errors import InternalError, InvalidRequest, ModelServiceError, PayloadTooLarge
from .service import ModelService


class BaseHandler(web.RequestHandler):
    """Common headers, auth, error envelope and per-request metering."""

    auth_required = True
    endpoint = ""
    #: Seconds of audio heard or spoken (the audio endpoints meter these besides tokens).
    audio_seconds: float | None = None

    def initialize(self, service: ModelService) -> None:
        self.service = service
        self.identity: Identity | None = None
        self.model_name = ""
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.ttft_ms: float | None = None
        self.error_type: str | None = None
        self.started = time.monotonic()

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Referrer-Policy", "no-referrer")

    async def prepare(self) -> None:
        if self.auth_required:
            header = self.request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            bearer = token.strip() if scheme.lower() in ("bearer", "token") else None
            self.identity = await self.service.auth.authenticate(bearer)
            # a spent budget refuses before any work (see oraculo.models.budgets)
            await self.service.budgets.check_endpoint(self.identity, self.endpoint)
            # and so does a cohort's policy (an exam window, AI off, a daily token budget)
            await self.service.cohorts.check(self.identity, self.endpoint, self.service.budgets)

    def write_json(self, body: Any) -> None:
        self.finish(body if isinstance(body, dict) else {"data": body})

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ModelServiceError):
            err = exc
        elif isinstance(exc, web.HTTPError) and exc.status_code == 413:
            err = PayloadTooLarge("Request body too large.")
        elif isinstance(exc, web.HTTPError) and exc.status_code < 500:
            err = InvalidRequest(exc.log_message or self._reason)
            err.status = exc.status_code
        elif status_code < 500:
            err = InvalidRequest(self._reason)
            err.status = status_code
        else:
            err = InternalError("Unhandled error")
        self.error_type = err.code or err.type
        self.set_status(err.status)
        if err.retry_after is not None:
            self.set_header("Retry-After", str(max(1, round(err.retry_after))))
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(err.to_json())

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ModelServiceError):
            return  # deliberate, logged with the access line
        super().log_exception(typ, value, tb)

    def on_finish(self) -> None:
        self.service.observe(
            identity=self.identity,
            endpoint=self.endpoint,
            model=self.model_name,
            status=self.get_status(),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_ms=(time.monotonic() - self.started) * 1000,
            ttft_ms=self.ttft_ms,
            error_type=self.error_type,
            audio_seconds=self.audio_seconds,
        )
