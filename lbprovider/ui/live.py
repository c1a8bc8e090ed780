"""Live updates: one watcher per app notices database changes and tells every open dashboard
which topics changed, over server-sent events; the page then re-fetches only those fragments.

The watcher reads a fingerprint of each topic (highest ledger and audit ids, newest update time
and row count of Service records, ExternalName mappings, Ingress routes, pools and fleet
heartbeats) in one query per tick, and only while someone listens, so writers in other processes
(the controller, another API replica) are seen too. Streams are bounded: they end cleanly when
the hub closes, when the server is shutting down (uvicorn's exit flag, found through its signal
handler), and after ``stream_seconds`` (the browser reconnects on its own). The browser falls
back to polling when the stream is unavailable (``web/static/live.js``). Reads only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.models import (
    AuditEntry,
    ExternalNameMapping,
    FleetHost,
    IngressRoute,
    LedgerEntry,
    Pool,
    ServiceRecord,
)

logger = logging.getLogger(__name__)

TOPICS = ("ledger", "audit", "services", "externalnames", "ingress", "pools", "fleet")
ExitProbe = Callable[[], bool]


def _fingerprint_query() -> Any:
    def newest(column: Any) -> Any:
        return select(func.max(column)).scalar_subquery()

    def rows(model: Any) -> Any:
        return select(func.count()).select_from(model).scalar_subquery()

    return select(
        newest(LedgerEntry.id).label("ledger"),
        newest(AuditEntry.id).label("audit"),
        newest(ServiceRecord.updated_at).label("services_at"),
        rows(ServiceRecord).label("services_n"),
        newest(ExternalNameMapping.updated_at).label("externalnames_at"),
        rows(ExternalNameMapping).label("externalnames_n"),
        newest(IngressRoute.updated_at).label("ingress_at"),
        rows(IngressRoute).label("ingress_n"),
        newest(Pool.updated_at).label("pools_at"),
        rows(Pool).label("pools_n"),
        newest(FleetHost.last_heartbeat).label("fleet_at"),
        rows(FleetHost).label("fleet_n"),
    )


def read_fingerprint(sessions: sessionmaker[Session]) -> dict[str, tuple[Any, ...]]:
    """Per topic, a value that changes whenever the topic's rows change."""
    with sessions() as session:
        row = session.execute(_fingerprint_query()).one()._mapping
    return {
        "ledger": (row["ledger"],),
        "audit": (row["audit"],),
        "services": (row["services_at"], row["services_n"]),
        "externalnames": (row["externalnames_at"], row["externalnames_n"]),
        "ingress": (row["ingress_at"], row["ingress_n"]),
        "pools": (row["pools_at"], row["pools_n"]),
        "fleet": (row["fleet_at"], row["fleet_n"]),
    }


def uvicorn_exit_probe() -> ExitProbe | None:
    """``lambda: server.should_exit`` of the uvicorn server running in the main thread, found
    through the SIGTERM handler it installed; None under another server or in a thread."""
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    if server is None or not hasattr(server, "should_exit"):
        return None
    return lambda: bool(server.should_exit)


class LiveHub:
    """Fans topic changes out to every open stream of one app."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        poll_seconds: float = 1.0,
        stream_seconds: float = 300.0,
        ping_seconds: float = 15.0,
    ) -> None:
        self.sessions = sessions
        self.poll_seconds = poll_seconds
        self.stream_seconds = stream_seconds
        self.ping_seconds = ping_seconds
        self.exit_probes: list[ExitProbe] = []
        self._queues: set[asyncio.Queue[str | None]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def listeners(self) -> int:
        return len(self._queues)

    @property
    def closed(self) -> bool:
        return self._closed

    def add_exit_probe(self, probe: ExitProbe) -> None:
        """Also end every stream once ``probe()`` is true (checked each tick)."""
        self.exit_probes.append(probe)

    def close(self) -> None:
        """End every open stream now and refuse new ones (server shutting down)."""
        self._closed = True
        for queue in list(self._queues):
            queue.put_nowait(None)

    async def stream(self) -> AsyncIterator[str]:
        """Server-sent event frames until the hub closes or the stream's time is up."""
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._queues.add(queue)
        self._ensure_watcher()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stream_seconds
        try:
            yield "retry: 2000\nevent: hello\ndata: live\n\n"
            while not self._closed:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    yield "event: bye\ndata: renew\n\n"
                    return
                try:
                    topics = await asyncio.wait_for(
                        queue.get(), timeout=min(remaining, self.ping_seconds)
                    )
                except TimeoutError:
                    yield ": ping\n\n"
                    continue
                if topics is None:
                    break
                yield f"event: change\ndata: {topics}\n\n"
            yield "event: bye\ndata: shutdown\n\n"
        finally:
            self._queues.discard(queue)

    def _ensure_watcher(self) -> None:
        if self._watcher is None or self._watcher.done():
            probe = uvicorn_exit_probe()
            if probe is not None and probe not in self.exit_probes:
                self.exit_probes.append(probe)
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def _exiting(self) -> bool:
        return any(probe() for probe in self.exit_probes)

    async def _watch(self) -> None:
        last: dict[str, tuple[Any, ...]] | None = None
        while self._queues and not self._closed:
            if self._exiting():
                logger.info("server exiting: ending live streams", extra={"event": "sse_close"})
                self.close()
                return
            current: dict[str, tuple[Any, ...]] | None
            try:
                current = await asyncio.to_thread(read_fingerprint, self.sessions)
            except Exception as e:  # a database hiccup must not end the streams
                logger.warning(
                    "live fingerprint failed",
                    extra={"event": "sse_poll_failed", "error": str(e)},
                )
                current = last
            if last is not None and current is not None and current != last:
                changed = ",".join(t for t in TOPICS if current[t] != last[t])
                for queue in list(self._queues):
                    queue.put_nowait(changed)
            last = current
            await asyncio.sleep(self.poll_seconds)

    async def aclose(self) -> None:
        """Close and wait for the watcher to finish (tests, app shutdown)."""
        self.close()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
