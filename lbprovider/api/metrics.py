"""Prometheus metrics computed at scrape time from the database: per pool and family, addresses
total, used, reserved and free; Services by allocation reason and serving state; per fleet host
what its last heartbeat said (heartbeat age, in sync and version lag against the state the API
serves now, reloads and their duration, runtime-API commands, backend servers by state).

One registry per app (never the global one), so several apps in one process do not collide;
other packages add their collectors to ``app.state.metrics`` (``serve`` hands it to the
controller). Collectors hold no SQL (the services layer counts) and label nothing by Service or
IP: every series stays bounded by pools, reasons, hosts and states.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.models import FleetHost, Pool
from lbprovider.db.types import utcnow
from lbprovider.fleet.compile import StateCache
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
    """Per fleet host, what its last heartbeat reported (hosts are few: one series each),
    against the state the API would serve it now (``states``: the app's compiled-state cache,
    so a scrape compiles only when the database changed)."""

    def __init__(self, sessions: sessionmaker[Session], states: StateCache | None) -> None:
        self.sessions = sessions
        self.states = states

    def collect(self) -> Iterator[Metric]:
        try:
            with self.sessions() as session:
                hosts = host_figures(session=session, now=utcnow(), desired=self._desired(session))
        except SQLAlchemyError as e:
            logger.warning("metrics scrape failed", extra={"event": "metrics", "error": str(e)})
            hosts = []
        yield from _fleet_families(hosts)

    def _desired(self, session: Session) -> Callable[[FleetHost], str] | None:
        states = self.states
        if states is None:
            return None
        return lambda host: states.state(session, host.name).version


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
        "1 when the host applied the version the API serves it now and has nothing pending; 0 "
        "while its applied version lags that one.",
    )
    lag = gauge(
        "lbprovider_fleet_host_version_lag_seconds",
        "Seconds since the host's applied version first differed from the one the API serves "
        "it (0 in sync): from the first report showing it, else from the last report.",
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
    commands = counter(
        "lbprovider_fleet_runtime_commands",
        "Runtime-API commands the host's agent sent HAProxy (since the agent started).",
    )
    timed = counter(
        "lbprovider_fleet_timed_reloads",
        "Applies that reloaded HAProxy, timed by the host's agent (since the agent started).",
    )
    reload_seconds = counter(
        "lbprovider_fleet_reload_seconds",
        "Summed wall time of those applies, in seconds (divide by timed_reloads for the mean).",
    )
    reload_last = gauge(
        "lbprovider_fleet_reload_seconds_last",
        "Wall time of the agent's last reloading apply (absent before its first).",
    )
    for h in hosts:
        enabled.add_metric([h.name], 1.0 if h.enabled else 0.0)
        if h.heartbeat_age_seconds is not None:
            age.add_metric([h.name], h.heartbeat_age_seconds)
        in_sync.add_metric([h.name], 1.0 if h.in_sync else 0.0)
        if h.version_lag_seconds is not None:
            lag.add_metric([h.name], h.version_lag_seconds)
        commands.add_metric([h.name], float(h.runtime_commands))
        timed.add_metric([h.name], float(h.reloads_timed))
        reload_seconds.add_metric([h.name], h.reload_seconds)
        if h.reload_seconds_last is not None:
            reload_last.add_metric([h.name], h.reload_seconds_last)
        pending.add_metric([h.name], float(h.pending))
        errors.add_metric([h.name], float(h.errors))
        reloads.add_metric([h.name], float(h.reloads))
        failed.add_metric([h.name], float(h.failed_reloads))
        exits.add_metric([h.name], float(h.worker_exits))
        for state, n in sorted(h.servers.items()):
            servers.add_metric([h.name, state], float(n))
    yield from (enabled, age, in_sync, lag, pending, errors, reloads, failed, exits, servers)
    yield from (commands, timed, reload_seconds, reload_last)


def make_registry(
    sessions: sessionmaker[Session], states: StateCache | None = None
) -> CollectorRegistry:
    """The app's registry. ``states``: the cache the agent protocol serves states from; without
    it the fleet figures compare with the version each host last fetched."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(sessions))
    registry.register(ServiceCollector(sessions))
    registry.register(FleetCollector(sessions, states))
    return registry
