"""Prints, as JSON, every route that a user server (built in-process from the installed Jupyter
config, as the hub's servers are) and the model service (built by its own ``application``) serve:
``{"server": [[regex, handler, methods], ...], "models": [...]}``.

Run as a separate process by the OpenAPI tests, so a whole ServerApp is never built inside
pytest. Its walk of tornado's routing table is its own, not :func:`oraculo.openapi.routes_of`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from typing import Any

from jupyter_server.serverapp import ServerApp
from tornado import routing, web, websocket

from oraculo.models.app import ModelServiceApp, application

METHODS = ("get", "post", "put", "patch", "delete")


def walk(router: Any) -> list[list[Any]]:
    out = []
    for rule in router.rules:
        if isinstance(rule.target, routing.Router):
            out += walk(rule.target)
        elif isinstance(rule.target, type) and issubclass(rule.target, web.RequestHandler):
            cls = rule.target
            if issubclass(cls, websocket.WebSocketHandler):
                methods = ["get"]
            else:
                methods = [
                    m for m in METHODS if getattr(cls, m) is not getattr(web.RequestHandler, m)
                ]
            out.append([rule.matcher.regex.pattern, cls.__name__, methods])
    return out


async def main(root: str) -> dict[str, Any]:
    server = ServerApp(
        root_dir=root,
        jpserver_extensions={"oraculo.extensions": True},
        open_browser=False,
        log_level="ERROR",
    )
    server.initialize(argv=[], new_httpserver=False)
    models = ModelServiceApp(data_dir=root, usage_db_url=f"sqlite:///{root}/usage.db")
    models.base_url = "/services/models/"
    try:
        return {
            "server": walk(server.web_app.default_router),
            "models": walk(application(models.base_url, models._build_service()).default_router),
        }
    finally:
        await server.cleanup_extensions()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as root:
        json.dump(asyncio.run(main(root)), sys.stdout)
