"""``lbprovider serve``: the API and dashboard process, plus the controller when a cluster is
configured. Composition only: each part lives in its own package."""

from __future__ import annotations

import asyncio
import gc
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


def settle_heap() -> int:
    """Collect once, then move everything alive (modules, mappers, compiled templates and
    statements, settings: ~150,000 objects that live as long as the process) out of the cyclic
    GC's reach (``gc.freeze``), and return how many. A process-level choice, so it is made here
    at start-up and not in the app factory that tests build many times: a full collection
    over that heap took 200-300 ms on the 2-vCPU bench machine, every few dozen dashboard
    requests, and with it frozen 40 ms. Frozen objects are still freed by reference counting;
    only a cycle among them would outlive its use, and these live for the process anyway."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


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
    logger.debug("start-up heap frozen", extra={"event": "gc_freeze", "objects": settle_heap()})
    try:
        _Server(config, controller.stop if controller else None).run()
    finally:
        if controller is not None:
            controller.stop()
