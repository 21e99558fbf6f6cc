"""A client of the shared model service (``/v1/models``, ``/v1/chat/completions`` with SSE).

The user's server calls the model service with its own hub token (``JUPYTERHUB_API_TOKEN``, whose
``access:services!service=models`` scope the hub grants), so usage is metered to the user. One
pooled HTTP client is kept for the life of the server: a fresh TCP connection per chat would add
to every reply's time to first token.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from traitlets import Float, Unicode
from traitlets.config import LoggingConfigurable

from oraculo.extensions.base.errors import NotFound, OraculoError, Unavailable


class ModelServiceError(OraculoError):
    """The model service refused or failed a request; carries its status and error type."""

    def __init__(self, status: int, message: str, type_: str = "model_service_error") -> None:
        super().__init__(message, reason=_REASONS.get(status, "Model service error"))
        self.status = status if 400 <= status < 600 else 502
        self.type = type_


_REASONS = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    413: "Payload too large",
    429: "Too many requests",
    503: "Service unavailable",
}


@dataclass(frozen=True)
class ModelInfo:
    """One chat model the service offers."""

    id: str
    aliases: tuple[str, ...] = ()
    context_length: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "aliases": list(self.aliases), "context_length": self.context_length}


class ModelClient(LoggingConfigurable):
    """Talks to the model service on behalf of this server's user."""

    models_url = Unicode(
        "",
        help="Base URL of the model service, ending in / (from the extension's models_url).",
    )
    token = Unicode("", help="Bearer token for the model service (the server's hub token).")
    default_model = Unicode(
        "",
        config=True,
        help="""Chat model used when a request names none. Empty: the model service's model
        with the alias `default`, else its first chat model.""",
    )
    models_ttl = Float(
        30.0, config=True, help="Seconds the list of models is cached before it is read again."
    )
    connect_timeout = Float(5.0, config=True, help="Seconds to wait to connect.")
    read_timeout = Float(
        300.0,
        config=True,
        help="Seconds to wait between two pieces of a reply before giving up on the model service.",
    )

    _client: httpx.AsyncClient | None = None
    _models: list[ModelInfo] | None = None
    _models_at = 0.0

    @property
    def configured(self) -> bool:
        return bool(self.models_url)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.models_url.rstrip("/") + "/",
                headers={"Authorization": f"Bearer {self.token}"} if self.token else {},
                timeout=httpx.Timeout(self.read_timeout, connect=self.connect_timeout),
                limits=httpx.Limits(max_keepalive_connections=32, keepalive_expiry=60),
                trust_env=False,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _check_configured(self) -> None:
        if not self.configured:
            raise Unavailable(
                "No model service is configured for this server (ORACULO_MODELS_URL)."
            )

    async def models(self, refresh: bool = False) -> list[ModelInfo]:
        """The chat models the service offers (cached for :attr:`models_ttl` seconds)."""
        self._check_configured()
        fresh = time.monotonic() - self._models_at < self.models_ttl
        if self._models is not None and fresh and not refresh:
            return self._models
        try:
            r = await self._http().get("v1/models")
        except httpx.HTTPError as e:
            raise Unavailable(f"The model service did not answer ({type(e).__name__}).") from e
        if r.status_code != 200:
            raise _error_from(r.status_code, r.content)
        cards = r.json().get("data", [])
        self._models = [
            ModelInfo(
                id=c["id"],
                aliases=tuple(c.get("aliases") or ()),
                context_length=c.get("context_length"),
            )
            for c in cards
            if c.get("kind", "chat") == "chat"
        ]
        self._models_at = time.monotonic()
        return self._models

    async def resolve(self, name: str | None) -> ModelInfo:
        """The model a request names (by id or alias), or the default; unknown → 404."""
        wanted = name or self.default_model
        for refresh in (False, True):
            models = await self.models(refresh=refresh)
            if not wanted:
                chosen = next((m for m in models if "default" in m.aliases), None)
                chosen = chosen or (models[0] if models else None)
                if chosen is not None:
                    return chosen
            else:
                for m in models:
                    if wanted == m.id or wanted in m.aliases:
                        return m
        if not wanted:
            raise Unavailable("The model service offers no chat model.")
        raise NotFound(f"The model '{wanted}' does not exist.", reason="Unknown model")

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """A whole (non-streamed) chat completion."""
        self._check_configured()
        try:
            r = await self._http().post("v1/chat/completions", json={**body, "stream": False})
        except httpx.HTTPError as e:
            raise Unavailable(f"The model service did not answer ({type(e).__name__}).") from e
        if r.status_code != 200:
            raise _error_from(r.status_code, r.content)
        data: dict[str, Any] = r.json()
        return data

    async def open_stream(self, body: dict[str, Any]) -> ChatStream:
        """Start a streamed completion; returns once the service has answered 200 (or raises)."""
        self._check_configured()
        client = self._http()
        request = client.build_request("POST", "v1/chat/completions", json={**body, "stream": True})
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as e:
            raise Unavailable(f"The model service did not answer ({type(e).__name__}).") from e
        if response.status_code != 200:
            content = await response.aread()
            await response.aclose()
            raise _error_from(response.status_code, content)
        return ChatStream(response)


class ChatStream:
    """The chunks of one streamed completion, as dicts; an in-band error raises."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        try:
            async for line in self._response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    err = chunk["error"] or {}
                    raise ModelServiceError(
                        502, str(err.get("message") or "model error"), "model_service_error"
                    )
                yield chunk
        except httpx.HTTPError as e:
            raise ModelServiceError(
                502, f"The model service stopped answering ({type(e).__name__}).", "model_error"
            ) from e
        finally:
            await self._response.aclose()

    async def aclose(self) -> None:
        await self._response.aclose()


def _error_from(status: int, content: bytes) -> OraculoError:
    """The model service's OpenAI error envelope as one of our errors, same status."""
    try:
        err = json.loads(content).get("error") or {}
    except (ValueError, AttributeError):
        err = {}
    message = str(err.get("message") or f"The model service answered HTTP {status}.")
    if status == 404:
        return NotFound(message, reason="Unknown model")
    kind = str(err.get("code") or err.get("type") or "model_service_error")
    return ModelServiceError(status, message, kind)
