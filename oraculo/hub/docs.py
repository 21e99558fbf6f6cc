"""The docs service: the built docs site (MkDocs, from ``docs/``) at ``/services/docs/``.

A hub-managed service (see :meth:`oraculo.hub.config.OraculoHub.services`), public: the docs
hold nothing of anyone's, and getting started is read before signing up. It serves files from
the one folder it is given, with the same security headers as the rest of the workspace, and
nothing else.

    python -m oraculo.hub.docs <site folder>
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from urllib.parse import urlparse

from tornado import web


class DocsHandler(web.StaticFileHandler):
    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        # every asset is the site's own: nothing else may load
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self' 'unsafe-inline'; frame-ancestors 'self'",
        )


def application(site: str, prefix: str) -> web.Application:
    return web.Application(
        [
            (prefix.rstrip("/"), web.RedirectHandler, {"url": prefix}),
            (
                rf"{prefix}(.*)",
                DocsHandler,
                {"path": site, "default_filename": "index.html"},
            ),
        ]
    )


async def serve(site: str) -> None:
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8003"))
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/docs/")
    app = application(site, prefix)
    server = app.listen(url.port or 8003, url.hostname or "127.0.0.1")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        server.stop()


def main() -> None:
    if len(sys.argv) != 2 or not os.path.isfile(os.path.join(sys.argv[1], "index.html")):
        sys.exit("usage: python -m oraculo.hub.docs <built site folder, with index.html>")
    asyncio.run(serve(os.path.abspath(sys.argv[1])))


if __name__ == "__main__":
    main()
