"""The sign-up page with cohorts: an invitation code, or a request to join a cohort.

- ``/hub/signup?invite=<code>`` (or the code typed in): the account is approved at once and
  joins the cohort whose invitation code it is. A wrong code creates nothing.
- ``/hub/signup?cohort=<name>``: the account waits, as any sign-up does, until an instructor of
  that cohort (or an admin) approves it (``POST /hub/api/cohorts/<name>/signups/<user>``); the
  approval also puts it in the cohort.
"""

from __future__ import annotations

import html
from typing import Any

from nativeauthenticator.handlers import SignUpHandler
from tornado import web

from oraculo.hub import cohorts

_SUBMIT = '<input type="submit" id="signup_submit"'


class CohortSignUpHandler(SignUpHandler):
    """NativeAuthenticator's sign-up, plus an invitation code and a cohort to ask for."""

    _invite: Any = None
    _asked: Any = None

    async def render_template(self, name: str, sync: bool = False, **ns: Any) -> Any:
        page = await super().render_template(name, sync=sync, **ns)
        if name != "signup.html" or _SUBMIT not in page:
            return page
        cohort = html.escape(self.get_argument("cohort", ""), quote=True)
        invite = html.escape(self.get_argument("invite", ""), quote=True)
        fields = (
            '<label for="invite_input">Invitation code (joins its cohort at once):</label>'
            f'<input id="invite_input" type="text" name="invite" value="{invite}" '
            'autocomplete="off" class="form-control" /><p></p>'
            '<label for="cohort_input">Or a cohort to ask to join (its instructor approves):'
            f'</label><input id="cohort_input" type="text" name="cohort" value="{cohort}" '
            'class="form-control" /><p></p>'
        )
        return page.replace(_SUBMIT, fields + _SUBMIT, 1)

    async def _refuse(self, message: str) -> None:
        page = await self.render_template(
            "signup.html",
            ask_email=self.authenticator.ask_email_on_signup,
            result_message=message,
            alert="alert-danger",
            two_factor_auth=self.authenticator.allow_2fa,
            recaptcha_key=self.authenticator.recaptcha_key,
            tos=self.authenticator.tos,
        )
        self.set_status(400)
        self.finish(page)

    async def post(self) -> None:
        if not self.authenticator.enable_signup:
            raise web.HTTPError(404)
        code = self.get_body_argument("invite", "", strip=True)
        asked = self.get_body_argument("cohort", "", strip=True)
        if code:
            self._invite = cohorts.by_code(self.db, code)
            if self._invite is None:
                await self._refuse(
                    "This invitation code is not valid. Ask your instructor for a new one."
                )
                return
        elif asked:
            try:
                self._asked = cohorts.find(self.db, asked)
            except cohorts.CohortError:
                await self._refuse(f"There is no cohort named {asked!r}.")
                return
        await super().post()

    def get_result_message(self, user: Any, *args: Any) -> tuple[str, str]:
        alert, message = super().get_result_message(user, *args)
        if user is None:
            return alert, message
        if self._invite is not None:
            user.is_authorized = True
            self.db.commit()
            account = self.user_from_username(user.username)
            cohorts.join(self.db, self._invite, account.orm_user)
            return (
                "alert-success",
                f"The signup was successful! You are in cohort {self._invite.name}: sign in now.",
            )
        if self._asked is not None:
            cohorts.add_pending(self.db, self._asked, user.username)
            if user.is_authorized:
                return (
                    "alert-success",
                    f"The signup was successful! You can sign in; an instructor of cohort "
                    f"{self._asked.name} will add you to it.",
                )
            return (
                "alert-info",
                f"Your sign-up waits for approval by an instructor of cohort {self._asked.name}.",
            )
        return alert, message
