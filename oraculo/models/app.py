"""``python -m oraculo.models``: the traitlets application that serves the model service over
tornado.

Under JupyterHub (a managed service) it needs no arguments: it binds to ``$JUPYTERHUB_SERVICE_URL``,
serves under ``$JUPYTERHUB_SERVICE_PREFIX`` (the proxy does not strip it) and authenticates callers
with hub tokens (``HubAuthenticator``, chosen when ``$JUPYTERHUB_API_TOKEN`` is set).

Standalone (development, a separate GPU host)::

    ORACULO_MODELS_API_KEYS_FILE=keys.json python -m oraculo.models --ip 127.0.0.1 --port 8100

serves under ``/`` with static API keys (``StaticKeyAuthenticator``; see its docstring for the file
format). ``--config-file`` loads a traitlets ``.py`` or ``.json`` config (models, limits, store
URL)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tornado import httpserver, web
from traitlets import Dict, Float, Instance, Integer, List, Type, Unicode, default, validate
from traitlets.config import Application

from oraculo.hub.database import redacted, sqlalchemy_url

from .audit import audit_routes
from .auth import Authenticator, HubAuthenticator, StaticKeyAuthenticator
from .budgets import Budgets
from .cohorts import CohortPolicies
from .handlers import routes
from .metering import RateLimiter, UsageStore
from .openapi_handlers import openapi_routes
from .registry import DEFAULT_MODELS, ModelSpec, backend_class
from .root import root_routes
from .secrets import secrets_routes
from .service import ModelService
from .stripe_billing import StripeBilling
from .usage import Prices, next_warm, warm_dashboard
from .usage_handlers import usage_routes


def default_torch_threads() -> int:
    return max(1, min(8, (os.cpu_count() or 1) - 1))


class ModelServiceApp(Application):
    """The shared model service."""

    name = "oraculo-models"
    description = "Oráculo's shared, OpenAI-compatible model service."

    aliases = {
        "ip": "ModelServiceApp.ip",
        "port": "ModelServiceApp.port",
        "base-url": "ModelServiceApp.base_url",
        "config-file": "ModelServiceApp.config_file",
        "data-dir": "ModelServiceApp.data_dir",
        "log-level": "Application.log_level",
    }

    config_file = Unicode("", help="A traitlets config file (.py or .json) to load.").tag(
        config=True
    )
    ip = Unicode(
        help="Address to bind. Default: host of $JUPYTERHUB_SERVICE_URL, else 127.0.0.1."
    ).tag(config=True)
    port = Integer(help="Port to bind. Default: port of $JUPYTERHUB_SERVICE_URL, else 8100.").tag(
        config=True
    )
    base_url = Unicode(
        help="URL prefix of every route, ending in '/'. "
        "Default: $JUPYTERHUB_SERVICE_PREFIX, else '/'."
    ).tag(config=True)
    data_dir = Unicode(
        help="Where the usage database lives. "
        "Default: $ORACULO_DATA_DIR/models, else ./.data/models."
    ).tag(config=True)
    usage_db_url = Unicode(
        help="SQLAlchemy URL of the usage store, shared by every model-service process "
        "(postgresql://... to scale out; psycopg 3). "
        "Default: $ORACULO_USAGE_DB_URL, else sqlite:///<data_dir>/usage.sqlite."
    ).tag(config=True)
    models = List(
        Dict(),
        help="""Model declarations: dicts with name, kind (chat|embedding), source
        (package:NAME[/sub], a folder, or an upstream http(s) URL ending in /v1), backend
        (transformers, sentence-transformers, upstream; inferred), gguf_file, device
        (auto|cpu|cuda[:N]), dtype, context_length, max_batch_size (concurrency), max_waiting
        (queue bound), max_output_tokens, default_max_tokens, default_temperature, aliases,
        default, upstream_model, api_key_env (env var with the upstream key).
        Default: the bundled SmolLM2-135M-Instruct and all-MiniLM-L6-v2.""",
    ).tag(config=True)
    user_limits = Dict(
        help="""Per-user limits: {user name or "*": {requests_per_minute, tokens_per_minute,
        tokens_per_day}}. "*" applies to users without their own entry. Empty: unlimited.""",
    ).tag(config=True)
    group_limits = Dict(
        help="""Per-group limits, shared by all members of the (hub) group together:
        {group: {requests_per_minute, tokens_per_minute, tokens_per_day}}.""",
    ).tag(config=True)
    budgets = List(
        Dict(),
        help="""Budgets to start with: {scope: user|group, name (a user, a group, or "*" for
        every user without a budget of their own), period: day|month, unit: tokens|cpu_seconds|
        gpu_seconds|voice_seconds|cost, limit}. Added to the usage store where it has no budget
        with the same scope, name, period and unit; after that the store (changed through
        PUT/DELETE /v1/budgets, no restart) is what counts.""",
    ).tag(config=True)
    prices = Dict(
        help="""Prices of the weighted unit `cost`: {per_1k_tokens, models: {model: price per 1k
        tokens}, per_cpu_hour, per_gpu_hour, per_voice_minute}. Empty: everything costs 0.""",
    ).tag(config=True)
    policy_ttl = Float(
        10.0,
        help="""Seconds the cohort AI policies read from the hub (group property
        oraculo_policy, see oraculo.policy) are kept before they are read again: a change
        applies within this time.""",
    ).tag(config=True)
    authenticator_class = Type(
        klass=Authenticator,
        help="How callers are authenticated. Default: HubAuthenticator when "
        "$JUPYTERHUB_API_TOKEN is set, else StaticKeyAuthenticator.",
    ).tag(config=True)
    torch_threads = Integer(
        0,
        help="""torch intra-op threads for CPU inference; 0 = CPU count - 1 (at least 1, at most
        8). One core is left to the HTTP loop: OpenMP teams that must share their cores with other
        busy processes stall at every barrier (measured here: 2 threads on a loaded 2-core machine
        decoded 6x slower than 1).""",
    ).tag(config=True)
    max_body_size = Integer(8 * 1024 * 1024, help="Largest request body in bytes.").tag(config=True)

    service = Instance(ModelService, allow_none=True)

    @default("log_level")
    def _default_log_level(self) -> int:
        return logging.INFO

    @default("ip")
    def _default_ip(self) -> str:
        url = os.environ.get("JUPYTERHUB_SERVICE_URL")
        return (urlparse(url).hostname or "127.0.0.1") if url else "127.0.0.1"

    @default("port")
    def _default_port(self) -> int:
        url = os.environ.get("JUPYTERHUB_SERVICE_URL")
        return (urlparse(url).port or 80) if url else 8100

    @default("base_url")
    def _default_base_url(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")

    @default("data_dir")
    def _default_data_dir(self) -> str:
        root = os.environ.get("ORACULO_DATA_DIR")
        return str(Path(root) / "models") if root else str(Path(".data") / "models")

    @default("usage_db_url")
    def _default_usage_db_url(self) -> str:
        shared = os.environ.get("ORACULO_USAGE_DB_URL")
        if shared:
            return shared
        return f"sqlite:///{Path(self.data_dir).resolve() / 'usage.sqlite'}"

    @validate("usage_db_url")
    def _validate_usage_db_url(self, proposal: Any) -> str:
        return sqlalchemy_url(str(proposal.value))

    @default("models")
    def _default_models(self) -> list[dict[str, Any]]:
        return [dict(m) for m in DEFAULT_MODELS]

    @default("authenticator_class")
    def _default_authenticator_class(self) -> type[Authenticator]:
        return (
            HubAuthenticator if os.environ.get("JUPYTERHUB_API_TOKEN") else StaticKeyAuthenticator
        )

    def initialize(self, argv: list[str] | None = None) -> None:
        self.parse_command_line(argv)
        if self.config_file:
            path = Path(self.config_file)
            self.load_config_file(path.name, path=str(path.parent.resolve()))
            self.parse_command_line(argv)  # the command line wins over the file
        if not self.base_url.endswith("/"):
            self.base_url += "/"
        if not self.base_url.startswith("/"):
            self.base_url = "/" + self.base_url

    def _build_service(self) -> ModelService:
        if self.usage_db_url.startswith("sqlite:///"):
            Path(self.usage_db_url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        store = UsageStore(self.usage_db_url)
        limiter = RateLimiter(self.user_limits, self.group_limits, store)
        auth = self.authenticator_class(parent=self, log=self.log)
        budgets = Budgets(store, Prices.model_validate(self.prices))
        budgets.seed(self.budgets)
        cohorts = CohortPolicies(
            getattr(auth, "api_url", ""),
            getattr(auth, "api_token", ""),
            self.log,
            ttl=self.policy_ttl,
        )
        service = ModelService(auth, store, limiter, self.log, budgets, cohorts)
        billing = StripeBilling(parent=self, log=self.log)
        if billing.enabled or billing.webhook_secret:
            service.stripe = billing
        return service

    def _load_models(self, service: ModelService) -> None:
        import torch

        torch.set_num_threads(self.torch_threads or default_torch_threads())
        specs = [ModelSpec.model_validate(m) for m in self.models]
        for spec in specs:
            try:
                # a backend from a plugin (entry point) that fails to import lands here too
                backend = backend_class(spec.backend)(parent=self, log=self.log, spec=spec)
                backend.load()
            except Exception as e:
                # one broken model is reported, not fatal: the others still serve
                self.log.exception("could not load model %s", spec.name)
                service.load_errors[spec.name] = f"{type(e).__name__}: {e}"
                continue
            service.add(backend)

    async def serve(self) -> None:
        """Listen at once (health says 'loading'), load models in a thread, serve until SIGTERM."""
        self.service = service = self._build_service()
        app = application(
            self.base_url,
            service,
            log_function=self._log_request,
            # the root page's hub OAuth cookie; a restart signs people in again
            cookie_secret=secrets.token_bytes(32),
        )
        server = httpserver.HTTPServer(app, max_body_size=self.max_body_size, xheaders=True)
        server.listen(self.port, self.ip)
        self.log.info(
            "model service at http://%s:%d%s (auth: %s; usage: %s)",
            self.ip,
            self.port,
            self.base_url,
            service.auth.describe(),
            redacted(self.usage_db_url),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        reporter = None
        if service.stripe is not None and service.stripe.enabled and service.stripe.report_interval:
            prices = service.budgets.prices
            reporter = asyncio.create_task(service.stripe.run(service.store, prices))
        # the operator's dashboard's kept sums are made in the background, now and after each
        # UTC midnight, so no operator's view pays for summing a month
        warmer = asyncio.create_task(keep_dashboard_warm(service, self.log))
        try:
            await asyncio.to_thread(self._load_models, service)
            service.ready = True
            self.log.info("models ready: %s", ", ".join(b.spec.name for b in service.registry))
            await stop.wait()
        finally:
            warmer.cancel()
            if reporter is not None:
                reporter.cancel()
            server.stop()
            await service.drain()
            for backend in service.registry:
                await backend.aclose()
            service.store.close()

    def _log_request(self, handler: web.RequestHandler) -> None:
        # method, route and status only: never headers (tokens) or bodies
        status = handler.get_status()
        level = self.log.warning if status >= 500 else self.log.debug
        level(
            "%d %s %s %.1fms",
            status,
            handler.request.method,
            handler.request.path,
            1000 * handler.request.request_time(),
        )

    def start(self) -> None:
        # a hub started in the background ignores SIGINT; its children inherit that: restore it
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            asyncio.run(self.serve())
        except KeyboardInterrupt:
            self.log.info("interrupted")


async def keep_dashboard_warm(service: ModelService, log: logging.Logger) -> None:
    """:func:`.usage.warm_dashboard` at start, then at :func:`.usage.next_warm`, until cancelled."""
    while True:
        try:
            await asyncio.to_thread(
                warm_dashboard, service.store, service.budgets.prices, time.time()
            )
        except Exception:  # a store that is down now may answer next time
            log.exception("could not sum the operator's dashboard's days ahead")
        await asyncio.sleep(next_warm(time.time()))


def application(base_url: str, service: ModelService, **settings: Any) -> web.Application:
    """The model service's tornado application: every route under ``base_url``."""
    return web.Application(
        openapi_routes(base_url, {"service": service})
        + root_routes(base_url, service)
        + usage_routes(base_url, {"service": service})
        + audit_routes(base_url, service)
        + secrets_routes(base_url, service)
        + routes(base_url, service),
        oraculo_base_url=base_url,
        **settings,
    )


def main(argv: list[str] | None = None) -> None:
    app = ModelServiceApp()
    app.initialize(argv)
    app.start()
