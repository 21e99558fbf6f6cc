"""The one client of the shared model service: chat (whole and streamed), models, embeddings,
speech to text, text to speech and health.

Every feature of the user's server (chat, agents, memory's embeddings, voice, status) calls the
model service through the one :class:`ModelClient` the extension makes: one pooled HTTP client for
the life of the server (a fresh TCP connection per request would add to every reply's time to
first token), one credential (the server's hub token, whose ``access:services!service=models``
scope the hub grants, so usage is metered to the user), one SSE parser and one mapping of the
service's OpenAI error envelope to :class:`ModelServiceError`, which keeps the envelope's structured
fields (``code``, ``param``, ``context_length``, ``tokens`` …) so callers never read its English.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from traitlets import Float, Unicode, default
from traitlets.config import LoggingConfigurable

from oraculo.extensions.base.errors import Forbidden, NotFound, OraculoError, Unavailable
from oraculo.extensions.base.wire import WireError, aiter_events, read_error
from oraculo.kernels.credentials import server_token


class ModelServiceError(OraculoError):
    """The model service refused or failed a request: its status, its stable error kind
    (``type``: the OpenAI ``code`` where there is one), and the envelope's structured fields."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "model_service_error",
        *,
        param: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message, reason=_REASONS.get(status, "Model service error"))
        self.status = status if 400 <= status < 600 else 502
        self.type = type_
        self.param = param
        self.details: dict[str, Any] = dict(details or {})
        self.retry_after = retry_after

    @classmethod
    def from_wire(cls, err: WireError) -> ModelServiceError:
        return cls(
            err.status,
            err.message,
            err.type,
            param=err.param,
            details=err.details,
            retry_after=err.retry_after,
        )


class PolicyRefused(Forbidden):
    """The user's cohort policy takes this feature away now (403)."""

    def __init__(self, message: str, paused: bool) -> None:
        super().__init__(message, reason="Paused by cohort policy" if paused else "Not available")
        self.type = "ai_paused" if paused else "feature_off"


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
    token = Unicode(
        config=True,
        help="""Bearer token for the model service. Default ORACULO_MODELS_TOKEN, else the
        server's own hub token (its server role may reach the model service).""",
    )
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

    @default("token")
    def _default_token(self) -> str:
        # The server's hub token: the launcher takes it out of the environment (see
        # oraculo.singleuser) and keeps it in oraculo.kernels.credentials.
        return os.environ.get("ORACULO_MODELS_TOKEN") or server_token()

    policy_ttl = Float(
        5.0,
        config=True,
        help="Seconds the user's cohort policy (GET v1/policy) is kept before it is asked again.",
    )

    _client: httpx.AsyncClient | None = None
    _policy: dict[str, Any] | None = None
    _policy_at = 0.0
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

    async def request(
        self, method: str, path: str, *, timeout: float | None = None, **kw: Any
    ) -> httpx.Response:
        """``method path`` on the model service; an error answer raises :class:`ModelServiceError`
        (404 for a model: :class:`NotFound`), no answer raises :class:`Unavailable`."""
        self._check_configured()
        if timeout is not None:
            kw["timeout"] = httpx.Timeout(timeout, connect=self.connect_timeout)
        try:
            r = await self._http().request(method, path, **kw)
        except httpx.HTTPError as e:
            raise Unavailable(f"The model service did not answer ({type(e).__name__}).") from e
        if r.status_code >= 400:
            raise _error_from(r)
        return r

    async def models(self, refresh: bool = False) -> list[ModelInfo]:
        """The chat models the service offers (cached for :attr:`models_ttl` seconds)."""
        self._check_configured()
        fresh = time.monotonic() - self._models_at < self.models_ttl
        if self._models is not None and fresh and not refresh:
            return self._models
        r = await self.request("GET", "v1/models")
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

    async def check_policy(self, feature: str) -> None:
        """Refuse ``feature`` (chat, voice, agents) with 403 while the user's cohort policy
        takes it away (an exam window, AI off: see oraculo.policy), before any work starts.
        The model service decides; its answer is kept ``policy_ttl`` seconds. Without a model
        service there is no policy (and no AI)."""
        if not self.configured:
            return
        now = time.monotonic()
        if self._policy is None or now - self._policy_at > self.policy_ttl:
            try:
                r = await self.request("GET", "v1/policy", timeout=10)
            except Unavailable:
                return  # the model service refuses the work itself once it answers again
            self._policy, self._policy_at = r.json(), now
        message = (self._policy.get("refusals") or {}).get(feature)
        if message:
            ai = self._policy.get("ai") or {}
            raise PolicyRefused(message, paused=not ai.get("available", True))

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """A whole (non-streamed) chat completion."""
        r = await self.request("POST", "v1/chat/completions", json={**body, "stream": False})
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
            await response.aread()
            await response.aclose()
            raise _error_from(response)
        return ChatStream(response)

    async def embeddings(
        self, model: str, inputs: list[str], timeout: float | None = None
    ) -> list[list[float]]:
        """One vector per input, in order (``POST v1/embeddings``)."""
        r = await self.request(
            "POST", "v1/embeddings", json={"model": model, "input": inputs}, timeout=timeout
        )
        try:
            data = sorted(r.json()["data"], key=lambda d: d["index"])
            out = [[float(x) for x in d["embedding"]] for d in data]
        except (ValueError, KeyError, TypeError) as e:
            raise ModelServiceError(
                502, "The model service sent a malformed embeddings answer."
            ) from e
        if len(out) != len(inputs):
            raise ModelServiceError(502, "The model service sent the wrong number of embeddings.")
        return out

    async def transcribe(self, wav: bytes, model: str, **options: str) -> str:
        """The text of a WAV file (``POST v1/audio/transcriptions``)."""
        files = {"file": ("speech.wav", wav, "audio/wav")}
        r = await self.request(
            "POST",
            "v1/audio/transcriptions",
            files=files,
            data={"model": model, **options},
            timeout=120.0,
        )
        return str(r.json().get("text") or "").strip()

    async def speech(self, text: str, model: str, voice: str) -> tuple[int, bytes]:
        """``(sample rate, 16-bit mono PCM)`` of ``text`` (``POST v1/audio/speech``)."""
        body = {"model": model, "input": text, "voice": voice, "response_format": "pcm"}
        r = await self.request("POST", "v1/audio/speech", json=body, timeout=120.0)
        return int(r.headers.get("X-Sample-Rate", "22050")), r.content

    async def health(self, timeout: float = 2.0) -> Health:
        """Whether the service answers its health check, and how fast; never raises."""
        if not self.configured:
            return Health(configured=False, ok=False, detail="no model service configured")
        start = time.perf_counter()
        try:
            await self.request("GET", "health", timeout=timeout)
        except ModelServiceError as e:
            ms = round((time.perf_counter() - start) * 1000, 1)
            return Health(True, False, f"HTTP {e.status}", ms)
        except Unavailable as e:
            cause = type(e.__cause__).__name__ if e.__cause__ else "error"
            return Health(True, False, f"unreachable: {cause}")
        ms = round((time.perf_counter() - start) * 1000, 1)
        return Health(True, True, "answering", ms)


@dataclass(frozen=True)
class Health:
    """What :meth:`ModelClient.health` found."""

    configured: bool
    ok: bool
    detail: str
    latency_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"configured": self.configured, "ok": self.ok, "detail": self.detail}
        if self.latency_ms is not None:
            out["latency_ms"] = self.latency_ms
        return out


class ChatStream:
    """The chunks of one streamed completion, as dicts; an in-band error raises."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        try:
            async for event in aiter_events(self._response.aiter_lines()):
                if event.is_error:
                    raise ModelServiceError.from_wire(read_error(502, event.data))
                if isinstance(event.data, dict):
                    yield event.data
        except httpx.HTTPError as e:
            raise ModelServiceError(
                502, f"The model service stopped answering ({type(e).__name__}).", "model_error"
            ) from e
        finally:
            await self._response.aclose()

    async def aclose(self) -> None:
        await self._response.aclose()


def _error_from(r: httpx.Response) -> OraculoError:
    """The model service's OpenAI error envelope as one of our errors, same status."""
    err = read_error(r.status_code, r.content, r.headers)
    if r.status_code == 404:
        return NotFound(err.message, reason="Unknown model")
    return ModelServiceError.from_wire(err)
