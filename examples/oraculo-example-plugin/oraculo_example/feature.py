"""A feature with one route: ``GET /api/v1/example/greeting``."""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from pydantic import BaseModel
from tornado import web
from traitlets import Unicode

from oraculo.extensions.base.feature import Feature
from oraculo.extensions.base.handlers import OraculoAPIHandler
from oraculo.openapi import operation


class Greeting(BaseModel):
    """What ``GET /api/v1/example/greeting`` answers."""

    user: str
    greeting: str
    plugin: str = "oraculo-example-plugin"


class GreetingHandler(OraculoAPIHandler):
    """Greets the caller (the user comes from the credential, as everywhere)."""

    @operation(summary="A greeting from the example plugin", responses={200: Greeting})
    @web.authenticated
    @authorized
    async def get(self) -> None:
        feature = self.feature("example")
        user = self.current_user.username
        self.finish(Greeting(user=user, greeting=f"{feature.salutation}, {user}!").model_dump())


class ExampleFeature(Feature):
    """The example plugin's feature; its settings are traitlets config like any feature's
    (``c.ExampleFeature.salutation = "Olá"``)."""

    name = "example"

    salutation = Unicode("Hello", config=True, help="How the greeting starts.")

    def handlers(self) -> list[tuple[str, Any]]:
        return [(r"/api/v1/example/greeting", GreetingHandler)]
