"""Oráculo's default sign-in: JupyterHub's NativeAuthenticator with a bootstrapped admin.

People sign up at ``/hub/signup`` and an admin approves them at ``/hub/authorize`` (or
sign-up is open, in ``open_signup`` mode). On the hub's first start every name in
``admin_users`` that has no account yet gets one, with a generated password written to
``admin_password_file`` (mode 0600) — so no stranger can claim the admin name by signing up
first, and nobody has to put a password in a config file.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import bcrypt
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import LoginHandler as NativeLoginHandler
from nativeauthenticator.orm import UserInfo
from traitlets import Unicode, default

from oraculo.hub.cohort_handlers import api_handlers
from oraculo.hub.signup import CohortSignUpHandler


class LoginHandler(NativeLoginHandler):
    """NativeAuthenticator's login page, fixed for JupyterHub 6.

    nativeauthenticator 1.3 times logins with ``self.statsd``, which JupyterHub 6 removed, and
    its ``_render`` rejects the keyword arguments JupyterHub passes when it shows a login
    error. Same behaviour otherwise.
    """

    def _render(self, login_error: Any = None, username: Any = None, **kwargs: Any) -> Any:
        return super()._render(login_error=login_error, username=username)

    async def post(self) -> None:
        data = {arg: self.get_argument(arg, strip=False) for arg in self.request.arguments}
        user = await self.login_user(data)
        if user:
            self._jupyterhub_user = user
            self.redirect(self.get_next_url(user))
            return
        error = "Invalid username or password."
        username = data.get("username", "")
        info = self.authenticator.get_user(username)
        if (
            info is not None
            and info.is_valid_password(data.get("password", ""))
            and (not info.is_authorized)
        ):
            error = f"User {username} has not been authorized by an administrator yet."
        self.finish(await self._render(login_error=error, username=username))


class OraculoNativeAuthenticator(NativeAuthenticator):
    """NativeAuthenticator that creates the admin account on first start."""

    admin_password_file = Unicode(
        config=True,
        help="""Where the generated password of a bootstrapped admin account is written
        (mode 0600). Default: <ORACULO_DATA_DIR>/admin-password.""",
    )
    initial_admin_password = Unicode(
        config=True,
        help="""Password for admin accounts created on first start. Default: the
        ORACULO_ADMIN_PASSWORD environment variable, else a random one, written to
        admin_password_file.""",
    )

    @default("admin_password_file")
    def _default_admin_password_file(self) -> str:
        data = os.environ.get("ORACULO_DATA_DIR", os.path.abspath(".data"))
        return os.path.join(data, "admin-password")

    @default("initial_admin_password")
    def _default_initial_admin_password(self) -> str:
        return os.environ.get("ORACULO_ADMIN_PASSWORD", "")

    @default("allow_all")
    def _default_allow_all(self) -> bool:
        # Who may sign in is decided by NativeAuthenticator's own approval (is_authorized).
        return True

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        replaced = {r"/login": LoginHandler, r"/signup": CohortSignUpHandler}
        return api_handlers(app) + [
            (pattern, replaced.get(pattern, handler))
            for pattern, handler in super().get_handlers(app)
        ]

    def add_user(self, user: Any) -> None:
        super().add_user(user)
        if user.name in self.admin_users and not self.user_exists(user.name):
            self._bootstrap_admin(user.name)

    def _bootstrap_admin(self, name: str) -> None:
        password = self.initial_admin_password or secrets.token_urlsafe(18)
        info = UserInfo(
            username=name,
            password=bcrypt.hashpw(password.encode(), bcrypt.gensalt()),
            is_authorized=True,
        )
        self.db.add(info)
        self.db.commit()
        if self.initial_admin_password:
            self.log.info("Admin account %r created with the configured password", name)
            return
        path = self.admin_password_file
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(f"{name}:{password}\n")
        self.log.warning("Admin account %r created; its password is in %s", name, path)
