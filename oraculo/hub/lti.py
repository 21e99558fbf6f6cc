"""Sign-in from an institution's LMS with LTI 1.3, straight into the course's cohort.

:class:`OraculoLTI13Authenticator` is ``jupyterhub-ltiauthenticator``'s LTI 1.3 tool (the
platform's third-party-initiated login at ``/hub/lti13/oauth_login``, its signed ``id_token``
posted to ``/hub/lti13/oauth_callback`` and checked against the platform's JWKS, issuer,
client id and nonce), plus the cohorts:

- the launch's course (the ``context`` claim's ``id``) is looked up among the cohorts' LMS
  courses (``PUT /hub/api/cohorts/<cohort>/lti {"contexts": [...]}``, admins); the user joins
  that cohort;
- a launch whose LTI roles include the course's Instructor (or Administrator) role makes the
  user an instructor of the cohort instead (its role, :mod:`.cohorts`), not a member.

A course mapped to no cohort signs the user in with no cohort. Select it with
``c.OraculoHub.authenticator = "lti13"`` and set the platform's ``issuer``, ``client_id``,
``authorize_url`` and ``jwks_endpoint`` on ``c.LTI13Authenticator``.
"""

from __future__ import annotations

from typing import Any

from ltiauthenticator.lti13.auth import LTI13Authenticator
from traitlets import default

from oraculo.hub import cohorts
from oraculo.hub.cohort_handlers import api_handlers

CONTEXT_CLAIM = "https://purl.imsglobal.org/spec/lti/claim/context"
ROLES_CLAIM = "https://purl.imsglobal.org/spec/lti/claim/roles"
#: LTI roles that make someone an instructor of the course's cohort.
TEACHING_ROLES = (
    "http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor",
    "http://purl.imsglobal.org/vocab/lis/v2/membership#Administrator",
)


class OraculoLTI13Authenticator(LTI13Authenticator):
    """LTI 1.3 launches into cohorts (see the module docstring)."""

    @default("username_key")
    def _default_username_key(self) -> str:
        # the platform's stable user id: an e-mail address is no OS account name
        return "sub"

    @default("allow_all")
    def _default_allow_all(self) -> bool:
        # Who may launch is decided by the platform: its signature is checked.
        return True

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        return api_handlers(app) + list(super().get_handlers(app))

    async def authenticate(self, handler: Any, data: dict[str, Any] | None = None) -> Any:
        model = await super().authenticate(handler, data)
        claims = data or {}
        context = (claims.get(CONTEXT_CLAIM) or {}).get("id")
        if not context:
            return model
        group = cohorts.by_lti_context(handler.db, str(context))
        if group is None:
            self.log.info("LTI launch from course %s, which no cohort is mapped to", context)
            return model
        user = handler.user_from_username(self.normalize_username(model["name"])).orm_user
        roles = claims.get(ROLES_CLAIM) or []
        if any(r in TEACHING_ROLES for r in roles):
            cohorts.set_instructors(handler.db, group.name, [user], [])
            self.log.info("LTI launch: %s teaches cohort %s", user.name, group.name)
        elif cohorts.join(handler.db, group, user):
            self.log.info("LTI launch: %s joined cohort %s", user.name, group.name)
        return model
