"""The allocator's ``StateView`` answered from the database, a few indexed queries per batch.

Reads (and, on PostgreSQL, per-address try-locks) only. Every answer reflects committed data at
the time of the query (READ COMMITTED on PostgreSQL), which is why the claim step re-checks its
address under the lock. ``load_holdings`` reads everything a decision needs before it looks at
candidates in one round trip (``PRELUDE``); ``DBStateView.scan`` checks a batch of candidates
and locks the first free one in another (``SCAN_PG``).

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
    ColumnClause,
    ColumnElement,
    CompoundSelect,
    Engine,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    cast,
    column,
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

from lbprovider.db.driver import DriverStatement, fetch_all
from lbprovider.db.models import Allocation, Exclusion, IPLease, Pool, ReleasedIP, Reservation
from lbprovider.db.session import Unit, connection_of, engine_of, is_postgresql, session_on
from lbprovider.db.types import UTCDateTime, as_utc
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


def load_pool_specs(session: Unit) -> tuple[list[PoolSpec], dict[str, int]]:
    """Every pool as a spec, and the name → id map the writers need (read afresh)."""
    if not isinstance(session, Session):
        with session_on(session) as orm:
            return load_pool_specs(orm)
    pools = session.scalars(select(Pool).order_by(Pool.name)).all()
    excl: dict[int, list[str]] = defaultdict(list)
    for pool_id, spec in session.execute(select(Exclusion.pool_id, Exclusion.range)):
        excl[pool_id].append(spec)
    return [pool_spec(p, excl[p.id]) for p in pools], {p.name: p.id for p in pools}


# One row per pool (p: id, version, updated_at) and one for the exclusions (e: count, top id):
# any create, edit (``version`` and ``updated_at`` move), delete or exclusion change gives
# another stamp. ``PRELUDE`` carries the same rows, so either read gives the same stamp.
_STAMP_POOLS = select(
    literal("p").label("kind"),
    Pool.updated_at.label("at"),
    Pool.id.label("n1"),
    Pool.version.label("n2"),
)
_STAMP_EXCLUSIONS = select(
    literal("e"), null().cast(UTCDateTime()), func.count(Exclusion.id), func.max(Exclusion.id)
)
POOL_STAMP = union_all(_STAMP_POOLS, _STAMP_EXCLUSIONS)

PoolStamp = tuple[tuple[Any, ...], ...]
PoolSpecs = tuple[list[PoolSpec], dict[str, int]]

_pool_cache: weakref.WeakKeyDictionary[Engine, tuple[PoolStamp, PoolSpecs]] = (
    weakref.WeakKeyDictionary()
)
_pool_cache_lock = threading.Lock()


def stamp_from_rows(rows: Iterable[Any]) -> PoolStamp:
    """The pools' change stamp from rows of kind p and e (``POOL_STAMP``'s or ``PRELUDE``'s)."""
    rows = list(rows)
    pools = sorted((row.n1, row.n2, row.at) for row in rows if row.kind == "p")
    return (*pools, *((row.n1, row.n2) for row in rows if row.kind == "e"))


def cached_pool_specs(session: Unit, stamp: PoolStamp | None = None) -> PoolSpecs:
    """``load_pool_specs``, reused while the pools' change stamp (one small query) is the same.

    The stamp is read in the caller's transaction (``stamp``, when given, is one read earlier
    in it, e.g. by ``load_holdings``), so a pool edited earlier in the same transaction, or
    committed by another process, is reloaded before the next decision."""
    if stamp is None:
        stamp = stamp_from_rows(connection_of(session).execute(POOL_STAMP))
    engine = engine_of(session)
    cached = _pool_cache.get(engine)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    specs = load_pool_specs(session)
    if not isinstance(session, Session) or not (session.dirty or session.new or session.deleted):
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
            ports = port_set(json.loads(row.extra))
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
            released_at=as_utc(rel.at) if rel is not None else None,
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
class Hints:
    """Reservations naming a Service (per family, in address order) and its last release."""

    reserved: dict[int, list[str]]
    sticky: dict[int, tuple[str, datetime]]


@dataclass(frozen=True)
class Holdings:
    """A Service's live allocations and the full occupancy of those addresses.

    ``load_holdings`` also returns, from the same round trip, what a decision needs next: the
    pools' change stamp, the Service's hints and, when it holds nothing, every pool's high-water
    mark (``(pool id, family)`` → top ``ip_key``). A decision uses them once, in the transaction
    they were read in; a retry reads afresh."""

    rows: tuple[HeldRow, ...]
    occupancy: Mapping[str, Occupancy]
    stamp: PoolStamp | None = None
    hints: Hints | None = None
    high_water: Mapping[tuple[int, int], str | None] | None = None


def _occupancy_columns() -> tuple[ColumnClause[Any], ...]:
    """The leading columns of the UNION ALL statements whose rows (kinds a, r, x, ...) go to
    ``occupancy_from_rows``; a statement may append columns of its own after them. Fresh
    objects per statement: a column belongs to the statement it is declared on."""
    return (
        column("kind", String()),
        column("ip", String()),
        column("ns", String()),
        column("name", String()),
        column("uid", String()),
        column("key", String()),
        column("extra", String()),
        column("at", UTCDateTime()),
    )


# Everything a decision for ``:ns/:name`` reads before it looks at candidates, in one round
# trip: a UNION ALL over generic columns (kind, ip, ns, name, uid, key, extra, at, n1, n2, n3).
# - m: each live allocation of the Service (n1 id, n2 pool id, n3 family, name pool name, uid,
#   key sharing key, extra ports); a, r, x: the occupancy of those addresses, shaped as
#   ``OCCUPANCY``'s rows;
# - p, e: the pools' change stamp (p: n1 id, n2 version, at updated_at; e: n1 count, n2 top id
#   of the exclusions), as ``POOL_STAMP``;
# - s, t: the reservations naming the Service (s) and its releases (t) (ip, n3 family, key
#   ip_key, at released_at), as ``SERVICE_HINTS``;
# - w, only when the Service holds nothing: each pool's high-water mark per family (n1 pool id,
#   n3 family, key top lease key, extra top release key), as ``HIGH_WATER``.
# Plain SQL that PostgreSQL and SQLite both run, kept short (the driver caches statements up to
# 4 kB).
PRELUDE = (
    text(
        """
WITH mine AS (
    SELECT id, ip, pool_id, pool_name, family, service_uid, sharing_key, ports
    FROM allocations WHERE active AND service_namespace = :ns AND service_name = :name
)
SELECT 'm' AS kind, ip, CAST(NULL AS VARCHAR) AS ns, pool_name AS name, service_uid AS uid,
    sharing_key AS key, CAST(ports AS VARCHAR) AS extra,
    CAST(NULL AS TIMESTAMP WITH TIME ZONE) AS at, id AS n1, pool_id AS n2, family AS n3
FROM mine
UNION ALL
SELECT 'a', ip, service_namespace, service_name, service_uid, sharing_key,
    CAST(ports AS VARCHAR), NULL, NULL, NULL, NULL
FROM allocations WHERE active AND ip IN (SELECT ip FROM mine)
UNION ALL
SELECT 'r', ip, service_namespace, service_name, NULL, owner, NULL, NULL, NULL, NULL, NULL
FROM reservations WHERE ip IN (SELECT ip FROM mine)
    AND (expires_at IS NULL OR expires_at > :now)
UNION ALL
SELECT 'x', ip, service_namespace, service_name, NULL, NULL, NULL, released_at, NULL, NULL, NULL
FROM released_ips WHERE ip IN (SELECT ip FROM mine)
UNION ALL
SELECT 'p', NULL, NULL, NULL, NULL, NULL, NULL, updated_at, id, version, NULL FROM pools
UNION ALL
SELECT 'e', NULL, NULL, NULL, NULL, NULL, NULL, NULL, count(id), max(id), NULL FROM exclusions
UNION ALL
SELECT 's', ip, NULL, NULL, NULL, ip_key, NULL, NULL, NULL, NULL, family
FROM reservations WHERE service_namespace = :ns AND service_name = :name
    AND (expires_at IS NULL OR expires_at > :now)
UNION ALL
SELECT 't', ip, NULL, NULL, NULL, ip_key, NULL, released_at, NULL, NULL, family
FROM released_ips WHERE service_namespace = :ns AND service_name = :name
UNION ALL
SELECT 'w', NULL, NULL, NULL, NULL,
    (SELECT max(ip_key) FROM ip_leases l WHERE l.pool_id = p.id AND l.family = f.family),
    (SELECT max(ip_key) FROM released_ips x WHERE x.pool_id = p.id AND x.family = f.family),
    NULL, p.id, NULL, f.family
FROM pools AS p, (SELECT 4 AS family UNION ALL SELECT 6) AS f
WHERE NOT EXISTS (SELECT 1 FROM mine)
"""
    )
    .bindparams(bindparam("now", type_=UTCDateTime()))
    .columns(
        *_occupancy_columns(),
        column("n1", Integer()),
        column("n2", Integer()),
        column("n3", Integer()),
    )
)


# The same on PostgreSQL's hot path: on the psycopg cursor (``db.driver``), no result layer.
PRELUDE_PG = DriverStatement(PRELUDE)


def load_holdings(session: Unit, namespace: str, name: str, now: datetime) -> Holdings:
    """What ``namespace/name`` holds, what stands on those addresses, the pools' stamp, the
    Service's hints and (when it holds nothing) the high-water marks: one round trip."""
    params = {"ns": namespace, "name": name, "now": now}
    result: Sequence[Any]
    if is_postgresql(session):
        result = fetch_all(session, PRELUDE_PG, params)
    else:
        result = connection_of(session).execute(PRELUDE, params).all()
    mine = sorted((r for r in result if r.kind == "m"), key=lambda r: (r.n3, r.n1))
    rows = tuple(
        HeldRow(
            r.n1,
            r.ip,
            r.n2,
            r.name,
            r.n3,
            r.uid or "",
            r.key,
            list(json.loads(r.extra) if r.extra else []),
        )
        for r in mine
    )
    occupancy = occupancy_from_rows(result)
    hints = hints_from_rows(result)
    high_water: dict[tuple[int, int], str | None] = {}
    for r in result:
        if r.kind == "w":
            tops = [k for k in (r.key, r.extra) if k]
            high_water[(r.n1, r.n3)] = max(tops) if tops else None
    stamp = stamp_from_rows(result)
    return Holdings(
        rows,
        {ip: occupancy.get(ip, Occupancy()) for ip in {r.ip for r in rows}},
        stamp=stamp,
        hints=hints,
        high_water=high_water if not rows else None,
    )


def port_set(ports: Sequence[Sequence[Any]]) -> frozenset[tuple[str, int]]:
    """A stored ``ports`` value (``[[protocol, port], ...]``) as the allocator's port set."""
    return frozenset((str(p[0]), int(p[1])) for p in ports)


# Reservations naming the Service (s) and its releases (t), every family, in one round trip;
# shaped as ``PRELUDE``'s rows of those kinds (n3 family, key ip_key, at released_at).
SERVICE_HINTS = union_all(
    select(
        literal("s").label("kind"),
        Reservation.ip,
        Reservation.family.label("n3"),
        Reservation.ip_key.label("key"),
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
        literal("t"),
        ReleasedIP.ip,
        ReleasedIP.family,
        ReleasedIP.ip_key,
        ReleasedIP.released_at,
    ).where(
        ReleasedIP.service_namespace == bindparam("ns"),
        ReleasedIP.service_name == bindparam("name"),
    ),
)


def hints_from_rows(rows: Iterable[Any]) -> Hints:
    """``Hints`` from the rows of kind s and t (``SERVICE_HINTS``' or ``PRELUDE``'s)."""
    reserved: dict[int, list[tuple[str, str]]] = defaultdict(list)
    sticky: dict[int, tuple[str, datetime]] = {}
    for row in rows:
        if row.kind == "s":
            reserved[row.n3].append((row.key, row.ip))
        elif row.kind == "t" and (row.n3 not in sticky or row.at > sticky[row.n3][1]):
            sticky[row.n3] = (row.ip, as_utc(row.at))
    ordered = {f: [ip for _, ip in sorted(items)] for f, items in reserved.items()}
    return Hints(ordered, sticky)


class DBStateView:
    """``lbprovider.ipam.allocator.StateView`` over a session or a connection in its
    transaction."""

    def __init__(
        self,
        session: Unit,
        pool_ids: Mapping[str, int],
        now: datetime,
        known: Mapping[str, Occupancy] | None = None,
        hints: Mapping[ServiceRef, Hints] | None = None,
        high_water: Mapping[tuple[int, int], str | None] | None = None,
    ) -> None:
        self.session = session
        self.postgresql = is_postgresql(session)
        self.pool_ids = pool_ids
        self.now = now
        self.locked: set[str] = set()
        # Unoccupied addresses a scan tried to lock and could not (another writer holds them).
        self.busy: set[str] = set()
        # Addresses a scan locked while nothing stood on them (as of the scan's snapshot).
        self.clean: set[str] = set()
        # Occupancy read earlier in this transaction (a Service's own addresses): answered
        # from here until the address is locked for a claim, which always reads afresh.
        self.known: dict[str, Occupancy] = dict(known or {})
        # Set by the caller when the first clean address a scan locks (in a pool of
        # ``claim.pools``) is its decision: the scan then writes the claim too (SCAN_CLAIM_PG)
        # and notes it in ``claimed`` (address, allocation id or None when the insert lost,
        # pool).
        self.claim: ScanClaim | None = None
        self.claimed: tuple[str, int | None, str] | None = None
        # Hints and high-water marks read with the holdings: each answers one question, once.
        self._hints: dict[ServiceRef, Hints] = dict(hints or {})
        self._high_water: dict[tuple[int, int], str | None] = dict(high_water or {})

    def occupancy(self, ips: Sequence[str]) -> Mapping[str, Occupancy]:
        """Holders, live reservation and last release of each address, in one round trip."""
        if ips and all(ip in self.known and ip not in self.locked for ip in ips):
            return {ip: self.known[ip] for ip in ips if self.known[ip] != Occupancy()}
        params = {"ips": list(ips), "now": self.now}
        return occupancy_from_rows(connection_of(self.session).execute(OCCUPANCY, params))

    def scan(self, ips: Sequence[str], pool: str = "") -> tuple[Mapping[str, Occupancy], int]:
        """``occupancy`` and, on PostgreSQL, the lock of the first unoccupied free address, in
        one round trip (see ``SCAN_PG``); with ``claim`` set, also its claim (``SCAN_CLAIM_PG``)."""
        if not self.postgresql or not ips or all(ip in self.known for ip in ips):
            return self.occupancy(ips), len(ips)
        # One comma-separated string, split by the server: dumping a Python list as an
        # array costs the client more than the rest of the parameters together.
        claim = self.claim
        if claim is not None and pool in self.pool_ids and self.claimed is None:
            params = {
                **claim.params,
                "ips": ",".join(ips),
                "now": self.now,
                "pool": pool,
                "pool_id": self.pool_ids[pool],
                "reason_tail": f" from pool {pool!r}",
            }
            rows = fetch_all(self.session, SCAN_CLAIM_PG, params)
            got = next((row for row in rows if row.kind == "c"), None)
            if got is not None:
                written = int(got.extra) if got.extra is not None else None
                self.claimed = (got.ip, written, pool)
        else:
            params = {"ips": ",".join(ips), "now": self.now}
            rows = fetch_all(self.session, SCAN_PG, params)
        occ = occupancy_from_rows(rows)
        taken = next((row for row in rows if row.kind == "l"), None)
        seen = int(taken.extra) if taken is not None else len(ips)
        for ip in ips[: seen - 1 if taken is not None else seen]:
            if ip not in occ and ip not in self.locked:
                self.busy.add(ip)
        if taken is not None:
            self.locked.add(taken.ip)
            self.clean.add(taken.ip)
        return occ, seen

    def _hints_for(self, service: ServiceRef) -> Hints:
        ref = ServiceRef(service.namespace, service.name)
        hints = self._hints.get(ref)
        if hints is None:
            params = {"ns": service.namespace, "name": service.name, "now": self.now}
            rows = connection_of(self.session).execute(SERVICE_HINTS, params)
            hints = self._hints[ref] = hints_from_rows(rows)
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
        key = (params["pool_id"], family)
        if key in self._high_water:
            top = self._high_water.pop(key)  # read once, with the holdings
        else:
            top = connection_of(self.session).execute(HIGH_WATER, params).scalar()
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
        if ip in self.busy:
            return False
        if try_lock_ip(self.session, ip):
            self.locked.add(ip)
            return True
        return False


def try_lock_ip(session: Unit, ip: str) -> bool:
    """A per-address transaction lock on PostgreSQL, or False when another writer holds it."""
    if not is_postgresql(session):
        return True
    return bool(connection_of(session).execute(TRY_LOCK, {"ip": ip}).scalar())


TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(hashtextextended(:ip, 0))")


# PostgreSQL: ``OCCUPANCY`` and ``claimable`` for a batch of candidates in one round trip.
# ``l`` walks the candidates in order and try-locks each one nothing stands on (no live
# allocation, live reservation or release: an address any request may take), stopping at the
# first it locks (the CASE keeps the lock behind the checks, the LIMIT stops the walk). The
# occupancy rows cover the candidates up to that one (all of them when none was locked), as of
# the statement's snapshot; the claim re-reads after the lock.
# ``:ips`` is the candidates joined by commas (no address contains one).
# Every table is reached through its address index, one candidate at a time (the LATERAL
# subqueries, kept apart by OFFSET 0, as in ``l``), whatever the statistics: a generic plan made
# while the tables were nearly empty (a fresh database, before its first ANALYZE) otherwise
# scanned the whole allocations table for every scan until autovacuum analysed it.
def _walk(lock: str) -> str:
    """The ``c``, ``l`` and ``seen`` CTEs of a scan, ``lock`` the try-lock of a candidate
    (a SQL expression of ``c.ip``: a constant of this module, never a value)."""
    return f"""
WITH c AS MATERIALIZED (
    SELECT ip, n FROM unnest(string_to_array(:ips, ',')) WITH ORDINALITY AS c(ip, n)
), l AS MATERIALIZED (
    SELECT c.ip, c.n FROM c
    WHERE CASE
        WHEN (SELECT 1 FROM allocations a WHERE a.active AND a.ip = c.ip LIMIT 1) = 1
            THEN false
        WHEN (SELECT 1 FROM reservations r WHERE r.ip = c.ip
            AND (r.expires_at IS NULL OR r.expires_at > :now) LIMIT 1) = 1 THEN false
        WHEN (SELECT 1 FROM released_ips x WHERE x.ip = c.ip LIMIT 1) = 1 THEN false
        ELSE {lock}
    END
    LIMIT 1
), seen AS MATERIALIZED (
    SELECT ip FROM c WHERE c.n <= COALESCE((SELECT n FROM l), 2147483647)
)"""  # noqa: S608 (lock is one of this module's two constants)


# The rows of the scan's answer: ``l`` (the address locked, its position), then the occupancy
# of every address ``seen`` ('a' live allocation, 'r' live reservation, 'x' release).
_LOCKED_ROW = """
SELECT 'l' AS kind, ip, NULL AS ns, NULL AS name, NULL AS uid, NULL AS key,
    CAST(n AS varchar) AS extra, CAST(NULL AS timestamptz) AS at
FROM l"""
_OCCUPANCY = """
SELECT 'a' AS kind, a.ip, a.service_namespace AS ns, a.service_name AS name,
    a.service_uid AS uid, a.sharing_key AS key, CAST(a.ports AS varchar) AS extra,
    CAST(NULL AS timestamptz) AS at
FROM seen, LATERAL (SELECT * FROM allocations WHERE active AND ip = seen.ip OFFSET 0) AS a
UNION ALL
SELECT 'r', r.ip, r.service_namespace, r.service_name, NULL, r.owner, NULL, NULL
FROM seen, LATERAL (SELECT * FROM reservations WHERE ip = seen.ip
    AND (expires_at IS NULL OR expires_at > :now) OFFSET 0) AS r
UNION ALL
SELECT 'x', x.ip, x.service_namespace, x.service_name, NULL, NULL, NULL, x.released_at
FROM seen, LATERAL (SELECT * FROM released_ips WHERE ip = seen.ip OFFSET 0) AS x"""

SCAN_PG = DriverStatement(
    text(
        _walk("pg_try_advisory_xact_lock(hashtextextended(c.ip, 0))")
        + _LOCKED_ROW
        + "\nUNION ALL"
        + _OCCUPANCY
    )
)


@dataclass(frozen=True)
class ScanClaim:
    """What ``SCAN_CLAIM_PG`` writes besides the address, pool and times: ``ns``, ``name``,
    ``uid``, ``key`` (sharing key or None), ``ports`` (JSON text), ``at``, ``reason`` (None:
    the decision's own text, "allocated <ip> from pool '<pool>'"), ``actor``, ``request_id``."""

    params: Mapping[str, Any]


# PostgreSQL: ``SCAN_PG`` and ``allocations.CLAIM_CLEAN_PG`` in one round trip, for the decision
# that takes the first clean IPv4 address a scan locks (a new single-stack Service, first
# attempt: the caller arms it with ``DBStateView.claim``). The walk is SCAN_PG's, except that the
# lock is ``lbp_lock_if_free`` (models.LOCK_IF_FREE_SQL): this statement's snapshot predates the
# lock, so the check that nothing stands on the address (allocation, lease, port, live
# reservation, release) is made after the lock by the function's own query, which sees what an
# earlier holder of the lock committed, as the separate claim's later snapshot did. The claim is
# written only when the allocator, given these rows, must take that address: every candidate
# before it with occupancy is one it refuses (reserved for someone else, or held by another
# Service without this request's sharing key); any other occupancy (a release, a reservation
# for this Service, a shared address it might join) writes nothing and the caller decides and
# claims as before. The writes are CLAIM_CLEAN_PG's (pool row FOR KEY SHARE, ON CONFLICT DO
# NOTHING for one live allocation per Service and family, every other row hanging off the
# allocation's id), so a lost race writes nothing; row ``c`` says what was tried (extra: the
# allocation's id, NULL when nothing was written). Uniqueness stays with the constraints.
SCAN_CLAIM_PG = DriverStatement(
    text(
        _walk("lbp_lock_if_free(c.ip, :now)")  # noqa: S608 (module constants, values bound)
        + ", o AS MATERIALIZED ("
        + _OCCUPANCY
        + """
), pick AS MATERIALIZED (
    SELECT l.ip, '4:' || lpad(to_hex(CAST(l.ip AS inet) - inet '0.0.0.0'), 32, '0') AS ip_key
    FROM l
    WHERE NOT EXISTS (
        SELECT 1 FROM o AS q WHERE NOT EXISTS (
            SELECT 1 FROM o AS w WHERE w.ip = q.ip AND (
                (w.kind = 'r' AND (w.name IS NULL OR w.ns <> :ns OR w.name <> :name))
                OR (w.kind = 'a' AND (w.ns <> :ns OR w.name <> :name)
                    AND (COALESCE(CAST(:key AS varchar), '') = ''
                        OR w.key IS DISTINCT FROM CAST(:key AS varchar)))
            )
        )
    )
), pool AS (
    SELECT id FROM pools WHERE id = :pool_id FOR KEY SHARE
), a AS (
    INSERT INTO allocations (ip, ip_key, pool_id, pool_name, family, service_namespace,
        service_name, service_uid, sharing_key, ports, active, allocated_at, released_at)
    SELECT pick.ip, pick.ip_key, pool.id, :pool, 4, :ns, :name, :uid, :key,
        CAST(:ports AS jsonb), true, :now, NULL
    FROM pick, pool
    ON CONFLICT DO NOTHING
    RETURNING id, ip, ip_key
), lease AS (
    INSERT INTO ip_leases (ip, ip_key, pool_id, family, sharing_key, created_at)
    SELECT a.ip, a.ip_key, :pool_id, 4, :key, :now FROM a
), p AS (
    INSERT INTO allocation_ports (allocation_id, ip, protocol, port)
    SELECT a.id, a.ip, u.p ->> 0, CAST(u.p ->> 1 AS integer)
    FROM a, jsonb_array_elements(CAST(:ports AS jsonb)) AS u(p)
), g AS (
    INSERT INTO ledger (at, ip, pool, service_namespace, service_name, action, reason, actor,
        request_id)
    SELECT :at, a.ip, :pool, :ns, :name, 'allocated',
        COALESCE(CAST(:reason AS varchar), 'allocated ' || a.ip || :reason_tail),
        :actor, :request_id
    FROM a
)
"""
        + _LOCKED_ROW
        + """
UNION ALL
SELECT kind, ip, ns, name, uid, key, extra, at FROM o
UNION ALL
SELECT 'c', ip, NULL, NULL, NULL, NULL, CAST((SELECT id FROM a) AS varchar), NULL FROM pick
"""
    )
)
