"""Sign-in through an institution's OpenID Connect provider (``OraculoHub.authenticator = "oidc"``).

:class:`OraculoOIDCAuthenticator` is oauthenticator's GenericOAuthenticator set up the OpenID
Connect way: the endpoints come from the issuer's discovery document, the user name from
``preferred_username``, hub groups from the ``groups`` claim (so a cohort or a team comes from
the directory, and with it the cohort's group folder, limits and shared agents), and admins from
a boolean claim. Keycloak, Authentik, Azure AD / Entra ID, Okta, Google and Dex are all this
path; GitHub, which is OAuth 2 without OpenID Connect, is oauthenticator's ``github`` (see the
README's scale-out section).

Discovery runs once, when the hub builds its authenticator at start-up, before it serves.
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

from jupyterhub import orm, roles
from oauthenticator.generic import GenericOAuthenticator
from traitlets import Unicode, default

from oraculo.hub import cohorts
from oraculo.hub.cohort_handlers import api_handlers

#: The role that carries Oráculo's operator scopes (usage read-all, budgets, audit); the hub's
#: own ``admin`` role cannot be extended, so admins from the claim are given this one as well.
OPERATOR_ROLE = "oraculo-admin"

#: GenericOAuthenticator's endpoint settings, and the discovery document's names for them.
_ENDPOINTS = {
    "authorize_url": "authorization_endpoint",
    "token_url": "token_endpoint",
    "userdata_url": "userinfo_endpoint",
}


def discover(issuer: str, timeout: float = 10) -> dict[str, Any]:
    """The provider's ``/.well-known/openid-configuration`` document."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    with urllib.request.urlopen(url, timeout=timeout) as r:
        document: dict[str, Any] = json.load(r)
    if document.get("issuer", "").rstrip("/") != issuer.rstrip("/"):
        raise ValueError(f"{url} names another issuer: {document.get('issuer')!r}")
    return document


class OraculoOIDCAuthenticator(GenericOAuthenticator):
    """GenericOAuthenticator configured from an OpenID Connect issuer, with groups and admins
    taken from claims."""

    oidc_issuer = Unicode(
        config=True,
        help="""The OpenID Connect issuer URL (e.g. https://login.example.edu/realms/main). Its
        discovery document sets authorize_url, token_url and userdata_url where they are not
        set. Default ORACULO_OIDC_ISSUER.""",
    )
    groups_claim = Unicode(
        config=True,
        help="""Userinfo claim listing the user's groups; they become the user's hub groups at
        each sign-in (manage_groups), added and removed - except cohorts (/hub/api/cohorts):
        a cohort the claim names is joined, but a cohort membership made in the hub (an
        invitation, an approval, an admin) is never dropped by a sign-in. Empty: hub groups
        are managed in the hub. Default ORACULO_OIDC_GROUPS_CLAIM or `groups`.""",
    )
    admin_claim = Unicode(
        config=True,
        help="""Userinfo claim that makes a user a hub admin when it is `true` (and takes admin
        away at the next sign-in when it is not). admin_users and admin_groups still grant
        admin too. Empty: no claim. Default ORACULO_OIDC_ADMIN_CLAIM.""",
    )

    @default("oidc_issuer")
    def _default_oidc_issuer(self) -> str:
        return os.environ.get("ORACULO_OIDC_ISSUER", "")

    @default("groups_claim")
    def _default_groups_claim(self) -> str:
        return os.environ.get("ORACULO_OIDC_GROUPS_CLAIM", "groups")

    @default("admin_claim")
    def _default_admin_claim(self) -> str:
        return os.environ.get("ORACULO_OIDC_ADMIN_CLAIM", "")

    @default("login_service")
    def _default_login_service(self) -> str:
        return os.environ.get("ORACULO_OIDC_LOGIN_SERVICE", "your institution")

    @default("username_claim")
    def _default_username_claim(self) -> str:
        return "preferred_username"

    @default("scope")
    def _default_scope(self) -> list[str]:
        return ["openid", "profile", "email"]

    @default("manage_groups")
    def _default_manage_groups(self) -> bool:
        return bool(self.groups_claim)

    @default("auth_state_groups_key")
    def _default_auth_state_groups_key(self) -> str:
        return f"oauth_user.{self.groups_claim}" if self.groups_claim else ""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        missing = [trait for trait in _ENDPOINTS if not getattr(self, trait)]
        if self.oidc_issuer and missing:
            document = discover(self.oidc_issuer)
            for trait in missing:
                setattr(self, trait, document[_ENDPOINTS[trait]])
            self.log.info("OpenID Connect endpoints from %s", self.oidc_issuer)

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        return api_handlers(app) + list(super().get_handlers(app))  # the cohort API

    async def refresh_user(self, user: Any, handler: Any = None, **kwargs: Any) -> Any:
        model = await super().refresh_user(user, handler, **kwargs)
        if isinstance(model, dict) and model.get("groups") is not None:
            model["groups"] = cohorts.keep_cohort_groups(model["groups"], user.orm_user)
        return model

    async def update_auth_model(self, auth_model: dict[str, Any]) -> dict[str, Any]:
        auth_model = await super().update_auth_model(auth_model)
        if self.admin_claim and not auth_model.get("admin"):
            claims = (auth_model.get("auth_state") or {}).get("oauth_user") or {}
            # Only a real boolean true counts: a string "false" must not make an admin.
            auth_model["admin"] = claims.get(self.admin_claim) is True
        return auth_model

    async def run_post_auth_hook(self, handler: Any, auth_model: dict[str, Any]) -> Any:
        """Admins from the claim get the operator role too (usage dashboard, budgets, audit),
        and lose it with the claim, like admin itself; admin_users keep theirs from the config.
        Cohort memberships made in the hub survive the groups claim (see cohorts)."""
        # after check_allowed, so the cohorts kept below never count towards allowed_groups
        auth_model = await super().run_post_auth_hook(handler, auth_model)
        if isinstance(auth_model, dict) and auth_model.get("groups") is not None:
            found = orm.User.find(handler.db, auth_model["name"])
            auth_model["groups"] = cohorts.keep_cohort_groups(auth_model["groups"], found)
        if self.admin_claim and auth_model and auth_model.get("name"):
            user = handler.user_from_username(auth_model["name"])
            if auth_model.get("admin"):
                roles.grant_role(handler.db, user.orm_user, OPERATOR_ROLE)
            elif user.name not in self.admin_users:
                roles.strip_role(handler.db, user.orm_user, OPERATOR_ROLE)
        return auth_model
