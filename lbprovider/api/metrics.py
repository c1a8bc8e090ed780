"""Prometheus metrics computed at scrape time: per pool and family, addresses total, used,
reserved and free. One registry per app (never the global one), so several apps in one process
do not collide; other packages add their collectors to ``app.state.metrics``."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.models import Pool
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


def make_registry(sessions: sessionmaker[Session]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(sessions))
    return registry
