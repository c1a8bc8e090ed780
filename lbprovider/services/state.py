"""The allocator's ``StateView`` answered from the database, a few indexed queries per batch.

Reads only. Every answer reflects committed data at the time of the query (READ COMMITTED on
PostgreSQL), which is why the claim step re-checks its address under a per-address lock.
"""

from __future__ import annotations

import ipaddress
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    CompoundSelect,
    Select,
    String,
    and_,
    bindparam,
    cast,
    exists,
    func,
    literal,
    null,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.orm import Session

from lbprovider.db.models import Allocation, Exclusion, IPLease, Pool, ReleasedIP, Reservation
from lbprovider.db.types import UTCDateTime
from lbprovider.ipam.allocator import Holder, Occupancy, ServiceRef
from lbprovider.ipam.pool import PoolSpec


def pool_spec(pool: Pool, exclusions: Sequence[str] | None = None) -> PoolSpec:
    """The allocator's view of a pool row."""
    return PoolSpec(
        name=pool.name,
        ranges=tuple(pool.ranges),
        auto_assign=pool.auto_assign,
        avoid_buggy_ips=pool.avoid_buggy_ips,
        disabled=pool.disabled,
        priority=pool.priority,
        namespaces=frozenset(pool.namespaces),
        namespace_selector=dict(pool.namespace_selector),
        service_selector=dict(pool.service_selector),
        exclusions=tuple(
            exclusions if exclusions is not None else [e.range for e in pool.exclusions]
        ),
    )


def load_pool_specs(session: Session) -> tuple[list[PoolSpec], dict[str, int]]:
    """Every pool as a spec, and the name → id map the writers need."""
    pools = session.scalars(select(Pool).order_by(Pool.name)).all()
    excl: dict[int, list[str]] = defaultdict(list)
    for pool_id, spec in session.execute(select(Exclusion.pool_id, Exclusion.range)):
        excl[pool_id].append(spec)
    return [pool_spec(p, excl[p.id]) for p in pools], {p.name: p.id for p in pools}


def ip_from_key(key: str) -> str:
    version, _, hexpart = key.partition(":")
    value = int(hexpart, 16)
    return str(ipaddress.IPv4Address(value) if version == "4" else ipaddress.IPv6Address(value))


def live_reservation(now: datetime) -> ColumnElement[bool]:
    return or_(Reservation.expires_at.is_(None), Reservation.expires_at > now)


def _build_occupancy_query() -> CompoundSelect[Any]:
    """One UNION ALL over allocations (a), reservations (r) and releases (x) of ``:ips``."""
    ips: BindParameter[Any] = bindparam("ips", expanding=True)
    now = bindparam("now", type_=UTCDateTime())
    no_time = null().cast(UTCDateTime())
    no_text = null().cast(String())
    return union_all(
        select(
            literal("a").label("kind"),
            Allocation.ip,
            Allocation.service_namespace.label("ns"),
            Allocation.service_name.label("name"),
            Allocation.service_uid.label("uid"),
            Allocation.sharing_key.label("key"),
            cast(Allocation.ports, String).label("extra"),
            no_time.label("at"),
        ).where(Allocation.active, Allocation.ip.in_(ips)),
        select(
            literal("r"),
            Reservation.ip,
            Reservation.service_namespace,
            Reservation.service_name,
            no_text,
            Reservation.owner,
            no_text,
            no_time,
        ).where(
            Reservation.ip.in_(ips),
            or_(Reservation.expires_at.is_(None), Reservation.expires_at > now),
        ),
        select(
            literal("x"),
            ReleasedIP.ip,
            ReleasedIP.service_namespace,
            ReleasedIP.service_name,
            no_text,
            no_text,
            no_text,
            ReleasedIP.released_at,
        ).where(ReleasedIP.ip.in_(ips)),
    )


def _build_high_water_query() -> Select[Any]:
    both = union_all(
        *(
            select(func.max(model.ip_key).label("k")).where(
                model.pool_id == bindparam("pool_id"), model.family == bindparam("family")
            )
            for model in (IPLease, ReleasedIP)
        )
    ).subquery()
    return select(func.max(both.c.k))


# Built once: constructing SQLAlchemy statements costs more than running them on this path.
OCCUPANCY = _build_occupancy_query()
HIGH_WATER = _build_high_water_query()
RESERVED_FOR = (
    select(Reservation.ip)
    .where(
        Reservation.service_namespace == bindparam("ns"),
        Reservation.service_name == bindparam("name"),
        Reservation.family == bindparam("family"),
        or_(
            Reservation.expires_at.is_(None),
            Reservation.expires_at > bindparam("now", type_=UTCDateTime()),
        ),
    )
    .order_by(Reservation.ip_key)
)
STICKY = (
    select(ReleasedIP.ip, ReleasedIP.released_at)
    .where(
        ReleasedIP.service_namespace == bindparam("ns"),
        ReleasedIP.service_name == bindparam("name"),
        ReleasedIP.family == bindparam("family"),
    )
    .order_by(ReleasedIP.released_at.desc())
    .limit(1)
)


class DBStateView:
    """``lbprovider.ipam.allocator.StateView`` over a session."""

    def __init__(self, session: Session, pool_ids: Mapping[str, int], now: datetime) -> None:
        self.session = session
        self.pool_ids = pool_ids
        self.now = now
        self.locked: set[str] = set()

    def occupancy(self, ips: Sequence[str]) -> Mapping[str, Occupancy]:
        """Holders, live reservation and last release of each address, in one round trip."""
        holders: dict[str, list[Holder]] = defaultdict(list)
        reserved: dict[str, Any] = {}
        released: dict[str, Any] = {}
        for row in self.session.execute(OCCUPANCY, {"ips": list(ips), "now": self.now}):
            if row.kind == "a":
                ports = frozenset((str(p[0]), int(p[1])) for p in json.loads(row.extra))
                svc = ServiceRef(row.ns, row.name, row.uid or "")
                holders[row.ip].append(Holder(svc, row.key, ports))
            elif row.kind == "r":
                reserved[row.ip] = row
            else:
                released[row.ip] = row
        out: dict[str, Occupancy] = {}
        for ip in set(holders) | set(reserved) | set(released):
            res, rel = reserved.get(ip), released.get(ip)
            out[ip] = Occupancy(
                holders=tuple(holders.get(ip, ())),
                reserved=res is not None,
                reserved_for=f"{res.ns}/{res.name}" if res is not None and res.name else None,
                reservation_owner=res.key if res is not None else "",
                released_at=rel.at if rel is not None else None,
                released_by=f"{rel.ns}/{rel.name}" if rel is not None else None,
            )
        return out

    def reserved_for_service(self, service: ServiceRef, family: int) -> Sequence[str]:
        params = {"ns": service.namespace, "name": service.name, "family": family, "now": self.now}
        return self.session.scalars(RESERVED_FOR, params).all()

    def sticky_ip(self, service: ServiceRef, family: int) -> tuple[str, datetime] | None:
        params = {"ns": service.namespace, "name": service.name, "family": family}
        row = self.session.execute(STICKY, params).first()
        return (row.ip, row.released_at) if row else None

    def sharing_ips(self, key: str, pool: str, family: int) -> Sequence[str]:
        return self.session.scalars(
            select(IPLease.ip)
            .where(
                IPLease.sharing_key == key,
                IPLease.pool_id == self.pool_ids[pool],
                IPLease.family == family,
            )
            .order_by(IPLease.ip_key)
        ).all()

    def high_water(self, pool: str, family: int) -> str | None:
        top = self.session.scalar(HIGH_WATER, {"pool_id": self.pool_ids[pool], "family": family})
        return ip_from_key(top) if top else None

    def released_lru(self, pool: str, family: int, limit: int) -> Sequence[str]:
        leased = exists().where(IPLease.ip == ReleasedIP.ip)
        return self.session.scalars(
            select(ReleasedIP.ip)
            .where(
                and_(
                    ReleasedIP.pool_id == self.pool_ids[pool],
                    ReleasedIP.family == family,
                    ~leased,
                )
            )
            .order_by(ReleasedIP.released_at, ReleasedIP.ip_key)
            .limit(limit)
        ).all()

    def claimable(self, ip: str) -> bool:
        """Take the per-address transaction lock if free (PostgreSQL; SQLite serialises)."""
        if ip in self.locked:
            return True
        if try_lock_ip(self.session, ip):
            self.locked.add(ip)
            return True
        return False


def try_lock_ip(session: Session, ip: str) -> bool:
    """A per-address transaction lock on PostgreSQL, or False when another writer holds it."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    got = session.execute(
        text("SELECT pg_try_advisory_xact_lock(hashtextextended(:ip, 0))"), {"ip": ip}
    ).scalar()
    return bool(got)
