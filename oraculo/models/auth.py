"""Who is calling: JupyterHub tokens under the hub, static API keys standalone.

Both turn the ``Authorization: Bearer <token>`` header into an ``Identity`` or raise 401/403. The
identity's name always comes from the credential, never from the request body.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from traitlets import Dict, Unicode, default
from traitlets.config import LoggingConfigurable

from .errors import Forbidden, Unauthenticated

USAGE_READ_ALL = "custom:oraculo:usage:read-all"
BUDGETS_WRITE = "custom:oraculo:budgets:write"
AUDIT_READ_ALL = "custom:oraculo:audit:read-all"


@dataclasses.dataclass(frozen=True)
class Identity:
    """The caller, as its credential says."""

    name: str
    groups: tuple[str, ...] = ()
    can_read_all_usage: bool = False
    kind: str = "user"
    #: May set and remove budgets (operators).
    can_manage_budgets: bool = False
    #: May append execution audit records: the user's server (its token has users:activity), or
    #: the user's own full token; never a kernel's or the panel server's narrow token.
    can_write_audit: bool = False
    #: May read and export everyone's audit records (operators).
    can_read_all_audit: bool = False


class Authenticator(LoggingConfigurable):
    """Base: ``authenticate(token)`` returns an Identity or raises."""

    async def authenticate(self, token: str | None) -> Identity:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


class HubAuthenticator(Authenticator):
    """Ask JupyterHub who owns a token (``HubAuth``, cached) and require the service's access scope.

    User tokens and single-user servers' tokens (acting for their user) both resolve to the user.
    ``access_scopes`` defaults to HubAuth's: ``access:services!service=$JUPYTERHUB_SERVICE_NAME``.
    """

    api_url = Unicode(help="Hub API URL. Default: $JUPYTERHUB_API_URL.").tag(config=True)
    api_token = Unicode(help="This service's hub API token. Default: $JUPYTERHUB_API_TOKEN.").tag(
        config=True
    )

    @default("api_url")
    def _default_api_url(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")

    @default("api_token")
    def _default_api_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from jupyterhub.services.auth import HubAuth

        self.hub_auth = HubAuth(
            parent=self, api_url=self.api_url, api_token=self.api_token, cache_max_age=60
        )

    def describe(self) -> str:
        return f"hub at {self.api_url}"

    async def authenticate(self, token: str | None) -> Identity:
        if not token:
            raise Unauthenticated("Missing bearer token: send 'Authorization: Bearer <hub token>'.")
        model = await self.hub_auth.user_for_token(token, sync=False)
        if not model:
            raise Unauthenticated("Invalid or expired token.")
        if not self.hub_auth.check_scopes(self.hub_auth.access_scopes, model):
            raise Forbidden(
                "This token does not grant access to the model service "
                f"(needs {' or '.join(sorted(self.hub_auth.access_scopes))})."
            )
        scopes = set(model.get("scopes") or [])
        return Identity(
            name=model["name"],
            groups=tuple(model.get("groups") or ()),
            can_read_all_usage=USAGE_READ_ALL in scopes,
            kind=model.get("kind", "user"),
            can_manage_budgets=BUDGETS_WRITE in scopes,
            can_write_audit=model.get("kind", "user") == "user"
            and any(s.split("!", 1)[0] == "users:activity" for s in scopes),
            can_read_all_audit=AUDIT_READ_ALL in scopes,
        )


class StaticKeyAuthenticator(Authenticator):
    """API keys from config or a JSON file, for standalone runs (development, a separate GPU host).

    The file (``api_keys_file``, default ``$ORACULO_MODELS_API_KEYS_FILE``) maps keys to callers::

        {"sk-alice-…": {"name": "alice", "groups": ["cohort-a"]},
         "sk-ops-…": {"name": "ops", "admin": true}}

    ``admin`` lets a caller read everyone's usage and manage budgets. Keys are compared by their
    SHA-256 digest.
    """

    api_keys = Dict(help="Key → {name, groups?, admin?}; merged with api_keys_file.").tag(
        config=True
    )
    api_keys_file = Unicode(
        help="JSON file of API keys. Default: $ORACULO_MODELS_API_KEYS_FILE."
    ).tag(config=True)

    @default("api_keys_file")
    def _default_api_keys_file(self) -> str:
        return os.environ.get("ORACULO_MODELS_API_KEYS_FILE", "")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        keys: dict[str, Any] = {}
        if self.api_keys_file:
            keys.update(json.loads(Path(self.api_keys_file).read_text()))
        keys.update(self.api_keys)
        self._by_digest = {_digest(k): _identity(v) for k, v in keys.items()}
        if not self._by_digest:
            self.log.warning("no API keys configured: every request will be refused")

    def describe(self) -> str:
        return f"{len(self._by_digest)} static API keys"

    async def authenticate(self, token: str | None) -> Identity:
        if not token:
            raise Unauthenticated("Missing bearer token: send 'Authorization: Bearer <api key>'.")
        identity = self._by_digest.get(_digest(token))
        if identity is None:
            raise Unauthenticated("Incorrect API key provided.")
        return identity


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


def _identity(entry: Any) -> Identity:
    if isinstance(entry, str):
        return Identity(name=entry)
    return Identity(
        name=str(entry["name"]),
        groups=tuple(entry.get("groups", ())),
        can_read_all_usage=bool(entry.get("admin", False)),
        can_manage_budgets=bool(entry.get("admin", False)),
        can_write_audit=True,
        can_read_all_audit=bool(entry.get("admin", False)),
    )
