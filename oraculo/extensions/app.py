"""The oraculo Jupyter server extension: ``/api/v1/...`` in every user's server."""

from __future__ import annotations

import importlib
import os
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Dict, Instance, List, Unicode, default

from oraculo import plugins
from oraculo.extensions.base.feature import Feature
from oraculo.extensions.base.modelclient import ModelClient

#: Features loaded by default, as ``module:Class``.
DEFAULT_FEATURES = [
    "oraculo.extensions.status.feature:StatusFeature",
    "oraculo.extensions.execute.feature:ExecuteFeature",
    "oraculo.extensions.chat.feature:ChatFeature",
    "oraculo.extensions.memory.feature:MemoryFeature",
    "oraculo.extensions.voice.feature:VoiceFeature",
    "oraculo.extensions.agents.feature:AgentsFeature",
    "oraculo.extensions.usage.feature:UsageFeature",
    "oraculo.extensions.mcp.feature:MCPFeature",
    "oraculo.extensions.git.feature:GitFeature",
    "oraculo.extensions.api.feature:ApiFeature",
    "oraculo.extensions.courses.feature:CoursesFeature",
]


class OraculoExtension(ExtensionApp):
    """Adds Oráculo's REST and WebSocket APIs to a Jupyter server.

    Each API belongs to a :class:`~oraculo.extensions.base.feature.Feature`; features and their
    services hang off this object (``parent=...``) and take their classes from ``Type`` traits,
    so a deployment can swap an implementation in configuration.
    """

    name = "oraculo"
    load_other_extensions = True

    owner = Unicode(help="The user this server belongs to (from JUPYTERHUB_USER).").tag(config=True)
    models_url = Unicode(
        help="""Base URL of the model service, ending in /. Defaults to ORACULO_MODELS_URL,
        which the hub sets for every user server when it runs the model service.""",
    ).tag(config=True)
    default_kernel = Unicode(
        "oraculo",
        help="""Kernel new notebooks, the execute API and agents start by default: the
        sandboxed `oraculo` kernelspec. Empty keeps the server's own default.""",
    ).tag(config=True)
    features = List(
        Unicode(),
        help="""Features to load, as `module:Class` of a Feature subclass. One that fails to
        load is logged once and left out; the server keeps running.""",
    ).tag(config=True)
    feature_plugins = Bool(
        True,
        help="""Also load the features that installed packages declare in the
        `oraculo.features` entry point group (see the plugins guide). One that fails to load
        is logged and left out.""",
    ).tag(config=True)
    loaded = Dict(
        value_trait=Instance(Feature), help="The features that loaded, by name (read-only)."
    )
    models = Instance(
        ModelClient,
        allow_none=True,
        help="The one client of the model service that every feature uses (read-only).",
    )

    @default("owner")
    def _default_owner(self) -> str:
        return os.environ.get("JUPYTERHUB_USER") or os.environ.get("USER", "")

    @default("models_url")
    def _default_models_url(self) -> str:
        return os.environ.get("ORACULO_MODELS_URL", "")

    @default("features")
    def _default_features(self) -> list[str]:
        return list(DEFAULT_FEATURES)

    def feature(self, name: str) -> Any:
        """The loaded feature called ``name`` (KeyError when it did not load)."""
        return self.loaded[name]

    def initialize_settings(self) -> None:
        assert self.serverapp is not None
        if self.default_kernel:
            self.serverapp.kernel_manager.default_kernel_name = self.default_kernel
        self.models = ModelClient(parent=self, models_url=self.models_url)
        loaded = {}
        classes: list[tuple[str, Any]] = []
        for spec in self.features:
            try:
                module, _, cls = spec.partition(":")
                classes.append((spec, getattr(importlib.import_module(module), cls)))
            except Exception:
                self.log.exception("oraculo feature %s failed to load; going on without it", spec)
        if self.feature_plugins:
            classes += plugins.load(plugins.FEATURES, self.log)
        for spec, cls in classes:
            try:
                feature = cls(parent=self, models=self.models)
                if not isinstance(feature, Feature) or not feature.name or feature.name in loaded:
                    raise TypeError(f"{cls!r} is not a Feature with a name of its own")
            except Exception:
                self.log.exception("oraculo feature %s failed to load; going on without it", spec)
                continue
            loaded[feature.name] = feature
        for feature in list(loaded.values()):
            try:
                feature.connect(loaded)
            except Exception:
                self.log.exception(
                    "oraculo feature %s failed to connect; leaving it out", feature.name
                )
                loaded.pop(feature.name, None)
        self.loaded = loaded
        self.settings["oraculo"] = self

    def initialize_handlers(self) -> None:
        for feature in self.loaded.values():
            self.handlers.extend(feature.handlers())

    async def stop_extension(self) -> None:
        for feature in self.loaded.values():
            try:
                await feature.stop()
            except Exception:
                self.log.exception("oraculo feature %s failed to stop cleanly", feature.name)
        if self.models is not None:
            await self.models.aclose()
