"""The git feature: ``/api/v1/git`` (the user's git logins; commit and push a notebook).

Pulling course material and team repositories into the home is nbgitpuller's
(``/git-pull?repo=...``); this feature sends work back, with the user's own login, from the API,
the ``%git`` magic of the oraculo kernel or an MCP client.
"""

from __future__ import annotations

from typing import Any

from traitlets import Instance, Type

from oraculo.extensions.base.feature import Feature
from oraculo.extensions.git.handlers import CommitsHandler, CredentialHandler, CredentialsHandler
from oraculo.extensions.git.service import GitService


class GitFeature(Feature):
    """Commit and push with the user's own git logins."""

    name = "git"

    service_class = Type(
        GitService, klass=GitService, config=True, help="The service that commits and pushes."
    )
    service = Instance(GitService)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        ext = self.extension
        self.service = self.service_class(
            parent=self, root_dir=ext.serverapp.root_dir, user=ext.owner
        )

    def handlers(self) -> list[tuple[str, Any]]:
        return [
            (r"/api/v1/git/credentials", CredentialsHandler),
            (r"/api/v1/git/credentials/([A-Za-z0-9.:%-]{1,300})", CredentialHandler),
            (r"/api/v1/git/commits", CommitsHandler),
        ]
