"""The model service object the handlers call: registry, auth, limits, usage store and metrics
together.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .auth import Authenticator, Identity
from .backends import Backend
from .budgets import Budgets
from .cohorts import CohortPolicies
from .errors import Overloaded
from .metering import RateLimiter, UsageEvent, UsageStore, groups_column
from .registry import ModelRegistry
from .stripe_billing import StripeBilling


class Metrics:
    """Prometheus metrics on a private registry (no user names as labels: they are unbounded)."""

    def __init__(self, service: ModelService) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "oraculo_models_requests",
            "Requests by endpoint, model and status",
            ["endpoint", "model", "status"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "oraculo_models_tokens", "Tokens processed", ["model", "kind"], registry=self.registry
        )
        self.ttft = Histogram(
            "oraculo_models_time_to_first_token_seconds",
            "Time to first token",
            ["model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=self.registry,
        )
        self.audio_seconds = Counter(
            "oraculo_models_audio_seconds",
            "Seconds of audio transcribed or spoken",
            ["model"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "oraculo_models_request_duration_seconds",
            "Request duration",
            ["endpoint"],
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(service))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _EngineCollector:
    def __init__(self, service: ModelService) -> None:
        self.service = service

    def collect(self) -> Any:
        depth = GaugeMetricFamily(
            "oraculo_models_queue_depth", "Requests waiting", labels=["model"]
        )
        running = GaugeMetricFamily(
            "oraculo_models_running", "Sequences in the batch", labels=["model"]
        )
        for b in self.service.registry:
            info = b.info()
            depth.add_metric([b.spec.name], info.get("waiting", 0))
            running.add_metric([b.spec.name], info.get("running", 0))
        yield depth
        yield running


class ModelService:
    """State shared by all handlers; built by ``ModelServiceApp``."""

    #: Endpoints that leave no usage row (a refusal, 429, still does: the dashboard counts them).
    UNMETERED = frozenset(
        {
            "",
            "models",
            "usage",
            "usage.summary",
            "usage.events",
            "usage.export",
            "usage.daily",
            "usage.kernels",
            "budget",
            "budgets",
            "stripe.webhook",
            "policy",
        }
    )

    def __init__(
        self,
        auth: Authenticator,
        store: UsageStore,
        limiter: RateLimiter,
        log: Any,
        budgets: Budgets | None = None,
        cohorts: CohortPolicies | None = None,
    ) -> None:
        self.auth = auth
        self.store = store
        self.limiter = limiter
        self.budgets = budgets or Budgets(store)
        #: Cohort AI policies read from the hub (none standalone): oraculo.models.cohorts
        self.cohorts = cohorts or CohortPolicies("", "", log)
        self.log = log
        self.registry = ModelRegistry()
        self.ready = False
        self.load_errors: dict[str, str] = {}
        self.started_at = time.time()
        self.metrics = Metrics(self)
        #: Stripe billing, when configured (:mod:`.stripe_billing`).
        self.stripe: StripeBilling | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Each user's servers' running kernels as the servers last reported them (user, then
        #: server name: ``{"at", "kernels": [{"kernel_id", "kernel_name"}]}``); this process's
        #: memory only, filled again by the servers' next reports after a restart.
        self.running_kernels: dict[str, dict[str, dict[str, Any]]] = {}

    def add(self, backend: Backend) -> None:
        self.registry.add(backend)

    def backend(self, name: str, kind: str) -> Backend:
        if not self.ready:
            raise Overloaded(
                "The model service is still loading models.", retry_after=5, code="loading"
            )
        return self.registry.get(name, kind)

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ready else "loading",
            "uptime_s": round(time.time() - self.started_at, 1),
            "auth": type(self.auth).__name__,
            "models": [b.info() for b in self.registry],
            "load_errors": self.load_errors,
        }

    def observe(
        self,
        *,
        identity: Identity | None,
        endpoint: str,
        model: str,
        status: int,
        prompt_tokens: int,
        completion_tokens: int,
        latency_ms: float,
        ttft_ms: float | None,
        error_type: str | None,
        audio_seconds: float | None = None,
        ref: str | None = None,
    ) -> None:
        """Meter one finished request (from ``on_finish``; the store write runs in a thread)."""
        if endpoint:
            self.metrics.requests.labels(endpoint, model or "-", str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(latency_ms / 1000)
        if model:
            self.metrics.tokens.labels(model, "prompt").inc(prompt_tokens)
            self.metrics.tokens.labels(model, "completion").inc(completion_tokens)
            if ttft_ms is not None:
                self.metrics.ttft.labels(model).observe(ttft_ms / 1000)
            if audio_seconds:
                self.metrics.audio_seconds.labels(model).inc(audio_seconds)
        if identity is None or (endpoint in self.UNMETERED and status != 429):
            return
        self.log.info(
            "%s %s model=%s status=%d tokens=%d+%d %.0fms",
            identity.name,
            endpoint,
            model or "-",
            status,
            prompt_tokens,
            completion_tokens,
            latency_ms,
        )
        self.limiter.charge(identity, prompt_tokens + completion_tokens)
        event = UsageEvent(
            user=identity.name,
            model=model or "-",
            endpoint=endpoint,
            status=status,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=round(latency_ms, 1),
            ttft_ms=None if ttft_ms is None else round(ttft_ms, 1),
            error_type=error_type,
            audio_seconds=None if audio_seconds is None else round(audio_seconds, 3),
            groups=groups_column(identity.groups),
            ref=ref,
        )
        self.budgets.charge(event)
        task = asyncio.get_running_loop().create_task(self._record(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, event: UsageEvent) -> None:
        try:
            await self.store.arecord(event)
        except Exception:
            self.log.exception("could not record usage for %s", event.user)

    async def record_events(self, events: list[UsageEvent]) -> None:
        """Record reported usage (kernel compute) and charge it to its budgets."""
        for event in events:
            self.budgets.charge(event)
        await asyncio.to_thread(self.store.record_many, events)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
