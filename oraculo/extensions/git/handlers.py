"""``/api/v1/git``: the user's git logins, and commit + push of a file in the home."""

from __future__ import annotations

from urllib.parse import quote

from jupyter_server.auth.decorator import authorized
from tornado import web

from oraculo.extensions.base.handlers import OraculoAPIHandler
from oraculo.extensions.git.models import (
    CommitRequest,
    CommitResult,
    Credential,
    CredentialRequest,
)
from oraculo.openapi import operation


class CredentialsHandler(OraculoAPIHandler):
    """``GET`` the stored logins (never a password); ``POST`` one (201 new, 200 replaced)."""

    @operation(
        summary="The stored git logins (never a password).",
        responses={200: dict[str, list[Credential]]},
    )
    @web.authenticated
    @authorized
    async def get(self) -> None:
        logins = self.feature("git").service.list_credentials()
        self.finish({"credentials": [c.model_dump() for c in logins]})

    @operation(
        summary="Store a git login for a host (201 new, 200 replaced).",
        request=CredentialRequest,
        responses={200: Credential, 201: Credential},
    )
    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.parse_body(CredentialRequest)
        login, created = self.feature("git").service.set_credential(body)
        if created:
            self.set_status(201)
            self.set_header(
                "Location", f"{self.base_url}api/v1/git/credentials/{quote(login.host, safe='')}"
            )
        self.finish(login.model_dump())


class CredentialHandler(OraculoAPIHandler):
    """``DELETE /api/v1/git/credentials/{host}``: forget the login for a host (204)."""

    @operation(summary="Forget the login for a host.", responses={204: None})
    @web.authenticated
    @authorized
    async def delete(self, host: str) -> None:
        self.feature("git").service.delete_credential(host)
        self.set_status(204)
        self.finish()


class CommitsHandler(OraculoAPIHandler):
    """``POST /api/v1/git/commits``: commit a file and push its branch (201)."""

    @operation(
        summary="Commit a file in the home and push its branch.",
        request=CommitRequest,
        responses={201: CommitResult},
    )
    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.parse_body(CommitRequest)
        result = await self.feature("git").service.commit(body)
        self.set_status(201)
        self.finish(result.model_dump())
