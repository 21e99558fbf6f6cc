"""The user server's authorizer: a kernel's (or the panel server's) narrow token is not the user.

JupyterHub decides who reaches the server (``access:servers!server=<user>/``), and any token of the
user with that scope may do anything there: JupyterHub has no finer scopes for a single-user
server, and ``jupyterhub.singleuser`` leaves the server's authorizer at allow-all. The tokens this
server minted for its kernels and its panel server have that scope, so without more the code in a
kernel could open a terminal or start a kernel of another kind, outside its sandbox.

:class:`NarrowTokenAuthorizer` keeps JupyterHub's check and refuses those tokens (found by
:func:`oraculo.kernels.credentials.is_narrow`, wherever the request carries them: header, URL or
cookie) terminals, and writing kernels or sessions (start, restart, interrupt, stop). Everything
else, including the ``/api/v1`` features and the kernel websockets, stays open to them.
"""

from __future__ import annotations

from typing import Any

from jupyterhub.singleuser.extension import JupyterHubAuthorizer

from oraculo.kernels.credentials import is_narrow

#: (resource, action) pairs a narrow token may not use; action "*" means every action.
REFUSED_TO_NARROW = {
    ("terminals", "*"),
    ("kernels", "write"),
    ("sessions", "write"),
}


def refused_to_narrow(action: str, resource: str) -> bool:
    return (resource, "*") in REFUSED_TO_NARROW or (resource, action) in REFUSED_TO_NARROW


class NarrowTokenAuthorizer(JupyterHubAuthorizer):
    """JupyterHub's authorizer, plus: narrow tokens get no terminals and start no kernels."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        if not super().is_authorized(handler, user, action, resource):
            return False
        if refused_to_narrow(action, resource) and is_narrow(
            self.hub_auth.get_token(handler) or ""
        ):
            self.log.warning(
                "Refused %s on %s to a kernel's or panel's token of %s",
                action,
                resource,
                user.username,
            )
            return False
        return True
