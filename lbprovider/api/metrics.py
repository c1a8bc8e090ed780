"""Prometheus metrics computed at scrape time from the database: per pool and family, addresses
total, used, reserved and free; Services by allocation reason and serving state; per fleet host
what its last heartbeat said (heartbeat age, in sync, reloads, backend servers by state).

One registry per app (never the global one), so several apps in one process do not collide;
other packages add their collectors to ``app.state.metrics`` (``serve`` hands it to the
controller). Collectors hold no SQL (the services layer counts) and label nothing by Service or
IP: every series stays bounded by pools, reasons, hosts and states.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.models import Pool
from lbprovider.db.types import utcnow
from lbprovider.services.metrics import HostFigures, count_services, host_figures
from lbprovider.services.pools import utilisation

logger = logging.getLogger(__name__)


class PoolCollector(Collector):
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        addresses = GaugeMetricFamily(
            "lbprovider_pool_addresses",
            "Addresses of a pool by family and state (total, used, reserved, free).",
            labels=["pool", "family", "state"],
        )
        up = GaugeMetricFamily("lbprovider_database_up", "1 when the last scrape read the DB.")
        try:
            self._fill(addresses)
            up.add_metric([], 1)
        except SQLAlchemyError as e:
            logger.warning("metrics scrape failed", extra={"event": "metrics", "error": str(e)})
            up.add_metric([], 0)
        yield addresses
        yield up

    def _fill(self, addresses: GaugeMetricFamily) -> None:
        with self.sessions() as session:
            for pool in session.scalars(select(Pool).order_by(Pool.name)):
                for u in utilisation(session=session, pool=pool):
                    fam = str(u.family)
                    for state, value in (
                        ("total", u.total),
                        ("used", u.used),
                        ("reserved", u.reserved),
                        ("free", u.free),
                    ):
                        addresses.add_metric([pool.name, fam, state], float(value))


class ServiceCollector(Collector):
    """Services by IPAllocated reason and by whether the fleet serves them."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        services = GaugeMetricFamily(
            "lbprovider_services",
            "LoadBalancer Services known to the database, by IPAllocated condition reason "
            "(empty before the first decision) and serving (true: a live fleet host serves it).",
            labels=["reason", "serving"],
        )
        try:
            with self.sessions() as session:
                counts = count_services(session=session)
        except SQLAlchemyError as e:
            logger.warning("metrics scrape failed", extra={"event": "metrics", "error": str(e)})
            counts = []
        for c in counts:
            services.add_metric([c.reason, "true" if c.serving else "false"], float(c.count))
        yield services


class FleetCollector(Collector):
    """Per fleet host, what its last heartbeat reported (hosts are few: one series each)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        try:
            with self.sessions() as session:
                hosts = host_figures(session=session, now=utcnow())
        except SQLAlchemyError as e:
            logger.warning("metrics scrape failed", extra={"event": "metrics", "error": str(e)})
            hosts = []
        yield from _fleet_families(hosts)


def _fleet_families(hosts: list[HostFigures]) -> Iterator[Metric]:
    def gauge(name: str, doc: str, extra: list[str] | None = None) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=["host", *(extra or [])])

    def counter(name: str, doc: str) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, labels=["host"])

    enabled = gauge("lbprovider_fleet_host_enabled", "1 unless the host is drained from the fleet.")
    age = gauge(
        "lbprovider_fleet_host_heartbeat_age_seconds",
        "Seconds since the host's last heartbeat (absent: it never reported).",
    )
    in_sync = gauge(
        "lbprovider_fleet_host_in_sync",
        "1 when the host applied the version it last fetched and has nothing pending; 0 while "
        "its applied version lags the desired one.",
    )
    pending = gauge("lbprovider_fleet_host_pending_routes", "Routes the host has yet to apply.")
    errors = gauge("lbprovider_fleet_host_errors", "Errors in the host's last report.")
    reloads = counter(
        "lbprovider_fleet_host_reloads", "HAProxy reloads on the host (from its master process)."
    )
    failed = counter("lbprovider_fleet_host_failed_reloads", "HAProxy reloads that failed.")
    exits = gauge(
        "lbprovider_fleet_host_worker_exits",
        "Abnormal HAProxy worker exits the host reports (old or current workers).",
    )
    servers = gauge(
        "lbprovider_fleet_backend_servers",
        "HAProxy backend servers (Service x node) on the host by state (UP, DOWN, DRAIN, ...).",
        ["state"],
    )
    for h in hosts:
        enabled.add_metric([h.name], 1.0 if h.enabled else 0.0)
        if h.heartbeat_age_seconds is not None:
            age.add_metric([h.name], h.heartbeat_age_seconds)
        in_sync.add_metric([h.name], 1.0 if h.in_sync else 0.0)
        pending.add_metric([h.name], float(h.pending))
        errors.add_metric([h.name], float(h.errors))
        reloads.add_metric([h.name], float(h.reloads))
        failed.add_metric([h.name], float(h.failed_reloads))
        exits.add_metric([h.name], float(h.worker_exits))
        for state, n in sorted(h.servers.items()):
            servers.add_metric([h.name, state], float(n))
    yield from (enabled, age, in_sync, pending, errors, reloads, failed, exits, servers)


def make_registry(sessions: sessionmaker[Session]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(sessions))
    registry.register(ServiceCollector(sessions))
    registry.register(FleetCollector(sessions))
    return registry
