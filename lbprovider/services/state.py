"""The allocator's ``StateView`` answered from the database, a few indexed queries per batch.

Reads only. Every answer reflects committed data at the time of the query (READ COMMITTED on
PostgreSQL), which is why the claim step re-checks its address under a per-address lock.

Pool specs are cached per process and engine, keyed by a one-query change stamp of the pools
and exclusions tables read in the caller's transaction: an edit (which bumps ``version`` and
``updated_at``) is seen by the very next decision, and the parsed ranges are reused otherwise.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import weakref
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    CompoundSelect,
    Engine,
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
    """Every pool as a spec, and the name → id map the writers need (read afresh)."""
    pools = session.scalars(select(Pool).order_by(Pool.name)).all()
    excl: dict[int, list[str]] = defaultdict(list)
    for pool_id, spec in session.execute(select(Exclusion.pool_id, Exclusion.range)):
        excl[pool_id].append(spec)
    return [pool_spec(p, excl[p.id]) for p in pools], {p.name: p.id for p in pools}


# One row per pool plus the exclusions' count and top id: any create, edit (``version`` and
# ``updated_at`` move), delete or exclusion change gives another stamp.
POOL_STAMP = select(
    Pool.id,
    Pool.version,
    Pool.updated_at,
    select(func.count(Exclusion.id)).scalar_subquery(),
    select(func.max(Exclusion.id)).scalar_subquery(),
).order_by(Pool.id)

PoolSpecs = tuple[list[PoolSpec], dict[str, int]]

_pool_cache: weakref.WeakKeyDictionary[Engine, tuple[tuple[Any, ...], PoolSpecs]] = (
    weakref.WeakKeyDictionary()
)
_pool_cache_lock = threading.Lock()


def cached_pool_specs(session: Session) -> PoolSpecs:
    """``load_pool_specs``, reused while the pools' change stamp (one small query) is the same.

    The stamp is read in the caller's transaction, so a pool edited earlier in the same
    transaction, or committed by another process, is reloaded before the next decision."""
    stamp = tuple(tuple(row) for row in session.execute(POOL_STAMP))
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    cached = _pool_cache.get(engine)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    specs = load_pool_specs(session)
    if not session.dirty and not session.new and not session.deleted:
        with _pool_cache_lock:
            _pool_cache[engine] = (stamp, specs)
    return specs


def forget_pool_specs() -> None:
    """Drop every cached pool spec (pool edits need not call this: the stamp notices them)."""
    with _pool_cache_lock:
        _pool_cache.clear()


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


def occupancy_from_rows(rows: Iterable[Any]) -> dict[str, Occupancy]:
    """Occupancy per address from rows shaped like ``OCCUPANCY``'s (kind a, r or x; others are
    ignored)."""
    holders: dict[str, list[Holder]] = defaultdict(list)
    reserved: dict[str, Any] = {}
    released: dict[str, Any] = {}
    for row in rows:
        if row.kind == "a":
            ports = frozenset((str(p[0]), int(p[1])) for p in json.loads(row.extra))
            svc = ServiceRef(row.ns, row.name, row.uid or "")
            holders[row.ip].append(Holder(svc, row.key, ports))
        elif row.kind == "r":
            reserved[row.ip] = row
        elif row.kind == "x":
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


@dataclass(frozen=True)
class HeldRow:
    """One live allocation of the Service being decided (plain values, no ORM object)."""

    id: int
    ip: str
    pool_id: int | None
    pool_name: str
    family: int
    service_uid: str
    sharing_key: str | None
    ports: list[Any]


@dataclass(frozen=True)
class Holdings:
    """A Service's live allocations and the full occupancy of those addresses."""

    rows: tuple[HeldRow, ...]
    occupancy: Mapping[str, Occupancy]


def _build_holdings_query() -> Select[Any]:
    """Mine (m) joined to the other live holders (o), the live reservation (r) and the last
    release (x) of each of my addresses: one row per (mine, other holder)."""
    m = Allocation.__table__.alias("m")
    o = Allocation.__table__.alias("o")
    r = Reservation.__table__.alias("r")
    x = ReleasedIP.__table__.alias("x")
    now = bindparam("now", type_=UTCDateTime())
    return (
        select(
            m.c.id,
            m.c.ip,
            m.c.pool_id,
            m.c.pool_name,
            m.c.family,
            m.c.service_uid,
            m.c.sharing_key,
            m.c.ports,
            o.c.service_namespace.label("o_ns"),
            o.c.service_name.label("o_name"),
            o.c.service_uid.label("o_uid"),
            o.c.sharing_key.label("o_key"),
            o.c.ports.label("o_ports"),
            r.c.id.label("r_id"),
            r.c.service_namespace.label("r_ns"),
            r.c.service_name.label("r_name"),
            r.c.owner.label("r_owner"),
            x.c.released_at.label("x_at"),
            x.c.service_namespace.label("x_ns"),
            x.c.service_name.label("x_name"),
        )
        .select_from(m)
        .outerjoin(o, and_(o.c.ip == m.c.ip, o.c.active, o.c.id != m.c.id))
        .outerjoin(r, and_(r.c.ip == m.c.ip, or_(r.c.expires_at.is_(None), r.c.expires_at > now)))
        .outerjoin(x, x.c.ip == m.c.ip)
        .where(
            m.c.active,
            m.c.service_namespace == bindparam("ns"),
            m.c.service_name == bindparam("name"),
        )
        .order_by(m.c.family, m.c.id)
    )


HOLDINGS = _build_holdings_query()


def load_holdings(session: Session, namespace: str, name: str, now: datetime) -> Holdings:
    """What ``namespace/name`` holds, and what stands on those addresses, in one round trip."""
    params = {"ns": namespace, "name": name, "now": now}
    rows: dict[int, HeldRow] = {}
    holders: dict[str, list[Holder]] = defaultdict(list)
    occ: dict[str, Occupancy] = {}
    for row in session.connection().execute(HOLDINGS, params):
        if row.id not in rows:
            held = HeldRow(
                row.id,
                row.ip,
                row.pool_id,
                row.pool_name,
                row.family,
                row.service_uid or "",
                row.sharing_key,
                list(row.ports or []),
            )
            rows[row.id] = held
            mine = ServiceRef(namespace, name, held.service_uid)
            holders[row.ip].append(Holder(mine, held.sharing_key, _port_set(held.ports)))
            occ[row.ip] = Occupancy(
                reserved=row.r_id is not None,
                reserved_for=f"{row.r_ns}/{row.r_name}" if row.r_name else None,
                reservation_owner=row.r_owner or "",
                released_at=row.x_at,
                released_by=f"{row.x_ns}/{row.x_name}" if row.x_at is not None else None,
            )
        if row.o_ns is not None:
            other = ServiceRef(row.o_ns, row.o_name, row.o_uid or "")
            holders[row.ip].append(Holder(other, row.o_key, _port_set(row.o_ports or [])))
    full = {
        ip: Occupancy(
            holders=tuple(holders[ip]),
            reserved=o.reserved,
            reserved_for=o.reserved_for,
            reservation_owner=o.reservation_owner,
            released_at=o.released_at,
            released_by=o.released_by,
        )
        for ip, o in occ.items()
    }
    return Holdings(tuple(rows.values()), full)


def _port_set(ports: Sequence[Sequence[Any]]) -> frozenset[tuple[str, int]]:
    return frozenset((str(p[0]), int(p[1])) for p in ports)


# Reservations naming the Service (r) and its releases (x), every family, in one round trip.
SERVICE_HINTS = union_all(
    select(
        literal("r").label("kind"),
        Reservation.ip,
        Reservation.family,
        Reservation.ip_key.label("k"),
        null().cast(UTCDateTime()).label("at"),
    ).where(
        Reservation.service_namespace == bindparam("ns"),
        Reservation.service_name == bindparam("name"),
        or_(
            Reservation.expires_at.is_(None),
            Reservation.expires_at > bindparam("now", type_=UTCDateTime()),
        ),
    ),
    select(
        literal("x"),
        ReleasedIP.ip,
        ReleasedIP.family,
        ReleasedIP.ip_key,
        ReleasedIP.released_at,
    ).where(
        ReleasedIP.service_namespace == bindparam("ns"),
        ReleasedIP.service_name == bindparam("name"),
    ),
)


@dataclass(frozen=True)
class _Hints:
    reserved: dict[int, list[str]]
    sticky: dict[int, tuple[str, datetime]]


class DBStateView:
    """``lbprovider.ipam.allocator.StateView`` over a session."""

    def __init__(
        self,
        session: Session,
        pool_ids: Mapping[str, int],
        now: datetime,
        known: Mapping[str, Occupancy] | None = None,
    ) -> None:
        self.session = session
        self.pool_ids = pool_ids
        self.now = now
        self.locked: set[str] = set()
        # Occupancy read earlier in this transaction (a Service's own addresses): answered
        # from here until the address is locked for a claim, which always reads afresh.
        self.known: dict[str, Occupancy] = dict(known or {})
        self._hints: dict[ServiceRef, _Hints] = {}

    def occupancy(self, ips: Sequence[str]) -> Mapping[str, Occupancy]:
        """Holders, live reservation and last release of each address, in one round trip."""
        if ips and all(ip in self.known and ip not in self.locked for ip in ips):
            return {ip: self.known[ip] for ip in ips if self.known[ip] != Occupancy()}
        params = {"ips": list(ips), "now": self.now}
        return occupancy_from_rows(self.session.connection().execute(OCCUPANCY, params))

    def _hints_for(self, service: ServiceRef) -> _Hints:
        ref = ServiceRef(service.namespace, service.name)
        hints = self._hints.get(ref)
        if hints is None:
            params = {"ns": service.namespace, "name": service.name, "now": self.now}
            reserved: dict[int, list[tuple[str, str]]] = defaultdict(list)
            sticky: dict[int, tuple[str, datetime]] = {}
            for row in self.session.connection().execute(SERVICE_HINTS, params):
                if row.kind == "r":
                    reserved[row.family].append((row.k, row.ip))
                elif row.family not in sticky or row.at > sticky[row.family][1]:
                    sticky[row.family] = (row.ip, row.at)
            ordered = {f: [ip for _, ip in sorted(items)] for f, items in reserved.items()}
            hints = self._hints[ref] = _Hints(ordered, sticky)
        return hints

    def reserved_for_service(self, service: ServiceRef, family: int) -> Sequence[str]:
        return self._hints_for(service).reserved.get(family, [])

    def sticky_ip(self, service: ServiceRef, family: int) -> tuple[str, datetime] | None:
        return self._hints_for(service).sticky.get(family)

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
        params = {"pool_id": self.pool_ids[pool], "family": family}
        top = self.session.connection().execute(HIGH_WATER, params).scalar()
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
    return bool(session.connection().execute(TRY_LOCK, {"ip": ip}).scalar())


TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(hashtextextended(:ip, 0))")
