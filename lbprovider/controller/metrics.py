"""The controller's Prometheus metrics: allocation results by reason, reconcile durations,
work-queue depth, watch restarts, leadership.

Why: an operator must see from a scrape that Services wait for addresses (``OutOfIPs`` rising),
that reconciles slow down, that the queue backs up or that watches keep breaking. Counters and
the histogram are updated by the workers; gauges and the cache counters are read at scrape time
from the live objects (no bookkeeping on the hot path).

The registry is given: ``lbprovider serve`` passes the API app's one so a single ``/metrics``
shows both, ``lbprovider controller`` serves its own with :func:`serve_metrics`. What this module
must not do: label a series by Service, namespace or IP (unbounded cardinality).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# Reconciles are usually a few milliseconds (cache read, one transaction, maybe one PATCH);
# the upper buckets catch a slow database or API server.
RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Cache(Protocol):
    """What the collector reads of an ``ObjectCache``."""

    watch_restarts: int
    relists: int
    resyncs: int


class Queue(Protocol):
    """What the collector reads of a ``WorkQueue``."""

    def depth(self) -> int: ...

    def delayed(self) -> int: ...

    def processing(self) -> int: ...


class ControllerMetrics:
    """Counters and histogram the workers update; the rest is collected from the controller."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.allocations = Counter(
            "lbprovider_allocation_results",
            "Allocation decisions of the Service reconciler by condition reason "
            "(Satisfied, OutOfIPs, NoPool, SharingConflict, InvalidRequest, ...).",
            ["reason"],
            registry=registry,
        )
        self.reconciles = Histogram(
            "lbprovider_reconcile_duration_seconds",
            "Time of one reconcile by queue and result (done, retry, reprocess_pending, error, "
            "skipped).",
            ["queue", "result"],
            buckets=RECONCILE_BUCKETS,
            registry=registry,
        )
        self._collector: StateCollector | None = None

    def record_allocation(self, reason: str) -> None:
        self.allocations.labels(reason=reason).inc()

    def observe_reconcile(self, queue: str, result: str, seconds: float) -> None:
        self.reconciles.labels(queue=queue, result=result).observe(seconds)

    def watch(
        self,
        *,
        caches: Mapping[str, Cache],
        queues: Mapping[str, Queue],
        is_leader: Callable[[], bool],
        is_active: Callable[[], bool],
    ) -> None:
        """Collect the state of these caches and queues at scrape time (once per registry)."""
        if self._collector is not None:
            self.registry.unregister(self._collector)
        self._collector = StateCollector(caches, queues, is_leader, is_active)
        self.registry.register(self._collector)

    def close(self) -> None:
        """Stop collecting the controller's state (it stopped); counters stay."""
        if self._collector is not None:
            self.registry.unregister(self._collector)
            self._collector = None


class StateCollector(Collector):
    """Queue depths, cache counters and leadership, read when scraped."""

    def __init__(
        self,
        caches: Mapping[str, Cache],
        queues: Mapping[str, Queue],
        is_leader: Callable[[], bool],
        is_active: Callable[[], bool],
    ) -> None:
        self.caches = caches
        self.queues = queues
        self.is_leader = is_leader
        self.is_active = is_active

    def collect(self) -> Iterator[Metric]:
        yield from self._queues()
        yield from self._caches()
        leader = GaugeMetricFamily(
            "lbprovider_controller_leader", "1 while this replica holds the leader Lease."
        )
        leader.add_metric([], 1.0 if self.is_leader() else 0.0)
        active = GaugeMetricFamily(
            "lbprovider_controller_active",
            "1 while this replica reconciles (leader and start-up adoption done).",
        )
        active.add_metric([], 1.0 if self.is_active() else 0.0)
        yield leader
        yield active

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "lbprovider_workqueue_depth", "Keys ready to be reconciled, by queue.", labels=["queue"]
        )
        delayed = GaugeMetricFamily(
            "lbprovider_workqueue_delayed",
            "Keys waiting for a backoff or a delayed retry, by queue.",
            labels=["queue"],
        )
        processing = GaugeMetricFamily(
            "lbprovider_workqueue_processing",
            "Keys a worker is reconciling now, by queue.",
            labels=["queue"],
        )
        for name, queue in sorted(self.queues.items()):
            depth.add_metric([name], float(queue.depth()))
            delayed.add_metric([name], float(queue.delayed()))
            processing.add_metric([name], float(queue.processing()))
        yield depth
        yield delayed
        yield processing

    def _caches(self) -> Iterator[Metric]:
        families = {
            "watch_restarts": CounterMetricFamily(
                "lbprovider_watch_restarts",
                "Watch streams reopened after the first, by kind (a dropped connection, a "
                "timeout, an expired resourceVersion).",
                labels=["kind"],
            ),
            "relists": CounterMetricFamily(
                "lbprovider_watch_relists",
                "Full lists after the first, by kind (the resourceVersion was too old).",
                labels=["kind"],
            ),
            "resyncs": CounterMetricFamily(
                "lbprovider_cache_resyncs",
                "Periodic resyncs (every cached object handed to the handlers again), by kind.",
                labels=["kind"],
            ),
        }
        for kind, cache in sorted(self.caches.items()):
            for attr, family in families.items():
                family.add_metric([kind], float(getattr(cache, attr)))
        yield from families.values()


class _Server4(ThreadingWSGIServer):
    address_family = socket.AF_INET


class _Server6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


def metrics_app(registry: CollectorRegistry) -> Callable[..., Any]:
    """WSGI: ``/healthz`` answers ``ok`` (liveness), any other path is the Prometheus text."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        return metrics(environ, start_response)

    return app


def serve_metrics(registry: CollectorRegistry, listen: str) -> ThreadingWSGIServer:
    """Serve ``registry`` on ``host:port`` from a daemon thread; ``shutdown()`` stops it."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    server_class = _Server6 if ":" in host else _Server4
    server = make_server(
        host, int(port), metrics_app(registry), server_class, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="controller-metrics", daemon=True)
    thread.start()
    logger.info(
        "serving controller metrics",
        extra={"event": "metrics_listen", "listen": f"{host}:{server.server_port}"},
    )
    return server
