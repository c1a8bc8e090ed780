"""``lbprovider serve``: the API and dashboard process, plus the controller when a cluster is
configured. Composition only: each part lives in its own package."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import uvicorn

from lbprovider.config import Settings

logger = logging.getLogger(__name__)


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class _Server(uvicorn.Server):
    """Stops the controller during uvicorn's graceful shutdown (uvicorn re-raises the signal
    afterwards), so the leader Lease is handed over before the process ends."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: Any = None) -> None:
        await super().shutdown(sockets=sockets)
        if self._on_shutdown is not None:
            await asyncio.to_thread(self._on_shutdown)


def run_server(settings: Settings, *, listen: str | None = None) -> None:
    from lbprovider.api.app import create_app
    from lbprovider.controller.runner import start_in_background
    from lbprovider.db.migrate import upgrade

    upgrade(settings.database_url)
    host, port = split_listen(listen or settings.listen)
    app = create_app(settings)
    # One /metrics for both: the controller registers in the app's registry.
    controller = start_in_background(settings, registry=app.state.metrics)
    logger.info("serving", extra={"event": "serve", "host": host, "port": port})
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False)
    try:
        _Server(config, controller.stop if controller else None).run()
    finally:
        if controller is not None:
            controller.stop()
