"""The oraculo Jupyter server extension: ``/api/v1/...`` in every user's server."""

from __future__ import annotations

import os

from jupyter_server.extension.application import ExtensionApp
from traitlets import Instance, Type, Unicode, default

from oraculo.extensions.handlers.status import StatusHandler
from oraculo.extensions.services.status import StatusService


class OraculoExtension(ExtensionApp):
    """Adds Oráculo's REST and WebSocket APIs to a Jupyter server.

    Services hang off this object (``parent=self``) and are ``Type`` traits, so a deployment
    can swap an implementation in configuration.
    """

    name = "oraculo"
    load_other_extensions = True

    owner = Unicode(help="The user this server belongs to (from JUPYTERHUB_USER).").tag(config=True)
    models_url = Unicode(
        help="""Base URL of the model service, ending in /. Defaults to ORACULO_MODELS_URL,
        which the hub sets for every user server.""",
    ).tag(config=True)

    default_kernel = Unicode(
        "oraculo",
        help="""Kernel new notebooks, the execute API and agents start by default: the
        sandboxed `oraculo` kernelspec. Empty keeps the server's own default.""",
    ).tag(config=True)

    status_service_class = Type(
        StatusService,
        klass=StatusService,
        config=True,
        help="The service that reports the workspace's state.",
    )
    status_service = Instance(StatusService, allow_none=True)

    @default("owner")
    def _default_owner(self) -> str:
        return os.environ.get("JUPYTERHUB_USER") or os.environ.get("USER", "")

    @default("models_url")
    def _default_models_url(self) -> str:
        return os.environ.get("ORACULO_MODELS_URL", "")

    def initialize_settings(self) -> None:
        assert self.serverapp is not None
        if self.default_kernel:
            self.serverapp.kernel_manager.default_kernel_name = self.default_kernel
        self.status_service = self.status_service_class(
            parent=self,
            models_url=self.models_url,
            models_token=os.environ.get("JUPYTERHUB_API_TOKEN", ""),
        )
        self.settings["oraculo"] = self

    def initialize_handlers(self) -> None:
        self.handlers.extend(
            [
                (r"/api/v1/status", StatusHandler),
            ]
        )
