"""Writes both OpenAPI documents to files, for the docs site's API reference (its build hook
runs this), without a hub: ``python -m oraculo.extensions.api.dump OUT_DIR``.

The documents come from a user server built in this process from the installed Jupyter config,
as the hub's servers are (so installed plugins are in it), and from the model service's own
application: the same code that serves ``api/v1/openapi.json`` and ``openapi.json``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from jupyter_server.serverapp import ServerApp

from oraculo.extensions.api.handlers import workspace_document
from oraculo.models.app import ModelServiceApp, application
from oraculo.models.openapi_handlers import models_document


async def documents(root: str) -> dict[str, dict[str, Any]]:
    server = ServerApp(
        root_dir=root,
        jpserver_extensions={"oraculo.extensions": True},
        open_browser=False,
        log_level="ERROR",
    )
    server.initialize(argv=[], new_httpserver=False)
    try:
        workspace = workspace_document(server.web_app, server.base_url)
        workspace["servers"] = [{"url": "/user/{name}", "description": "your server"}]
    finally:
        await server.cleanup_extensions()
    models = ModelServiceApp(data_dir=root, usage_db_url=f"sqlite:///{root}/usage.db")
    models.log_level = "ERROR"
    app = application("/services/models/", models._build_service())
    return {"workspace": workspace, "models": models_document(app)}


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m oraculo.extensions.api.dump OUT_DIR")
    out = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as root:
        docs = asyncio.run(documents(root))
    out.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        (out / f"{name}-openapi.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
