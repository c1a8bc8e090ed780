"""``lbprovider serve``: the API and dashboard process, plus the controller when a cluster is
configured. Composition only: each part lives in its own package."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
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


class HeapKeeper:
    """Keeps long-lived state out of later full collections: after a full (generation 2)
    collection that took ``slow`` seconds or more, its survivors are frozen (``gc.freeze``).

    What survives a full collection in this process is mostly what lives long: the fleet
    compiled for 10,000 Services, the hosts' stored reports, the controller's caches. Each
    later full collection rescanned all of it (65-110 ms at 10,000 Services on the 2-vCPU
    bench machine, a pause for every request in flight); frozen, a full collection scans only
    what is newer. Frozen objects are still freed by reference counting; only cyclic garbage
    among them waits, so every ``thaw_every`` seconds everything is unfrozen again and the
    next slow full collection reclaims such cycles before freezing anew: one long collection
    per ``thaw_every`` at most.

    The freeze is made by this object's own thread, never inside the collector's callback
    (which only notes the collection). A process-level choice: made in ``run_server``, not in
    the app factory that tests build many times."""

    def __init__(self, *, slow: float = 0.02, thaw_every: float = 600.0) -> None:
        self.slow = slow
        self.thaw_every = thaw_every
        self.freezes = 0
        self.thaws = 0
        self._started = 0.0
        self._thawed = time.monotonic()
        self._due = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> HeapKeeper:
        gc.callbacks.append(self._on_collection)
        self._thread = threading.Thread(target=self._run, name="heap-keeper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)
        self._stop.set()
        self._due.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _on_collection(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        elif time.perf_counter() - self._started >= self.slow:
            self._due.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._due.wait(timeout=max(0.0, self._thawed + self.thaw_every - time.monotonic()))
            if self._stop.is_set():
                return
            if self._due.is_set():
                self._due.clear()
                gc.freeze()
                self.freezes += 1
                logger.debug(
                    "heap frozen after a slow full collection",
                    extra={"event": "gc_freeze", "objects": gc.get_freeze_count()},
                )
            elif time.monotonic() >= self._thawed + self.thaw_every:
                self._thawed = time.monotonic()
                if gc.get_freeze_count():
                    gc.unfreeze()
                    self.thaws += 1


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
    keeper = HeapKeeper().start()
    try:
        _Server(config, controller.stop if controller else None).run()
    finally:
        keeper.stop()
        if controller is not None:
            controller.stop()
