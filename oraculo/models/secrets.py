"""Per-user secrets the user's server needs and the user's own code must not read.

A user's kernels run as the user's OS account, so a file in the home is readable by any code the
user (or an agent, or a notebook from a course) runs. A secret that only the server should use,
such as the bearer token of an MCP server the user configured, is kept here instead, in the
model service's database, out of the users' reach.

- ``PUT v1/secrets/{name}`` ``{"value": "..."}``: store (or replace) the caller's secret (204).
- ``GET v1/secrets/{name}``: ``{"name", "value"}``; ``GET v1/secrets``: the names only.
- ``DELETE v1/secrets/{name}``: forget it (204).

Only the user's server (its token has ``users:activity``, which a kernel's or the panel server's
token lacks) or the user's own full token may do any of these, for that user only: a kernel's
token gets 403, so code in the kernel cannot read a secret back.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import sqlalchemy as sa

from .basehandler import BaseHandler
from .errors import Forbidden, InvalidRequest, NotFound
from .metering import schema_lock
from .service import ModelService

MAX_SECRET_CHARS = 8192
NAME = r"[A-Za-z0-9_.:-]{1,128}"

metadata = sa.MetaData()
user_secrets = sa.Table(
    "user_secrets",
    metadata,
    sa.Column("user", sa.String(255), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


class SecretStore:
    """One value per (user, name). Calls block: the handlers run them in a thread."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        with schema_lock(engine):  # several processes may share one database
            metadata.create_all(engine)

    def put(self, user: str, name: str, value: str) -> None:
        t = user_secrets
        with self.engine.begin() as c:
            c.execute(t.delete().where(t.c.user == user, t.c.name == name))
            c.execute(t.insert().values(user=user, name=name, value=value, updated_at=time.time()))

    def get(self, user: str, name: str) -> str | None:
        t = user_secrets
        with self.engine.connect() as c:
            row = c.execute(sa.select(t.c.value).where(t.c.user == user, t.c.name == name)).first()
        return None if row is None else str(row[0])

    def names(self, user: str) -> list[str]:
        t = user_secrets
        with self.engine.connect() as c:
            rows = c.execute(sa.select(t.c.name).where(t.c.user == user).order_by(t.c.name))
            return [str(r[0]) for r in rows]

    def delete(self, user: str, name: str) -> bool:
        t = user_secrets
        with self.engine.begin() as c:
            done = c.execute(t.delete().where(t.c.user == user, t.c.name == name))
        return bool(done.rowcount)


class _SecretsHandler(BaseHandler):
    # endpoint "": bookkeeping, not model use, so no usage row (ModelService.UNMETERED).
    endpoint = ""

    def initialize(self, service: ModelService, secrets: SecretStore) -> None:  # type: ignore[override]
        super().initialize(service)
        self.secrets = secrets

    def _user(self) -> str:
        who = self.identity
        assert who is not None
        if not who.can_write_audit:
            raise Forbidden("Only the user's server uses its secrets (a kernel's token may not).")
        return who.name


class SecretsHandler(_SecretsHandler):
    async def get(self) -> None:
        names = await asyncio.to_thread(self.secrets.names, self._user())
        self.write_json({"object": "list", "data": [{"name": n} for n in names]})


class SecretHandler(_SecretsHandler):
    async def put(self, name: str) -> None:
        user = self._user()
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError:
            raise InvalidRequest("The body must be JSON.") from None
        value = body.get("value") if isinstance(body, dict) else None
        if not isinstance(value, str) or not 1 <= len(value) <= MAX_SECRET_CHARS:
            raise InvalidRequest(
                f"'value' must be a string of 1 to {MAX_SECRET_CHARS} characters.", param="value"
            )
        await asyncio.to_thread(self.secrets.put, user, name, value)
        self.set_status(204)
        self.finish()

    async def get(self, name: str) -> None:
        value = await asyncio.to_thread(self.secrets.get, self._user(), name)
        if value is None:
            raise NotFound(f"No secret named {name!r}.")
        self.write_json({"object": "secret", "name": name, "value": value})

    async def delete(self, name: str) -> None:
        if not await asyncio.to_thread(self.secrets.delete, self._user(), name):
            raise NotFound(f"No secret named {name!r}.")
        self.set_status(204)
        self.finish()


def secrets_routes(prefix: str, service: ModelService) -> list[Any]:
    """The secrets routes under ``prefix``, on the usage store's database."""
    kw = {"service": service, "secrets": SecretStore(service.store.engine)}
    return [
        (rf"{prefix}v1/secrets", SecretsHandler, kw),
        (rf"{prefix}v1/secrets/({NAME})", SecretHandler, kw),
    ]
