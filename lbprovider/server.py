"""``lbprovider serve``: the API and dashboard process, plus the controller when a cluster is
configured. Composition only: each part lives in its own package."""

from __future__ import annotations

import logging

from lbprovider.config import Settings

logger = logging.getLogger(__name__)


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def run_server(settings: Settings, *, listen: str | None = None) -> None:
    import uvicorn

    from lbprovider.api.app import create_app
    from lbprovider.controller.runner import start_in_background
    from lbprovider.db.migrate import upgrade

    upgrade(settings.database_url)
    host, port = split_listen(listen or settings.listen)
    controller = start_in_background(settings)
    logger.info("serving", extra={"event": "serve", "host": host, "port": port})
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False)
    finally:
        if controller is not None:
            controller.stop()
