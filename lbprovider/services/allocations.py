"""Allocate, adopt and release a Service's addresses: one database transaction each.

The pure allocator decides; this module writes the decision as rows (lease, allocation, ports,
ledger) and lets the database's unique constraints settle races. A lost race writes nothing
(the one-statement claim of a fresh address) or rolls back to a savepoint (every other write)
and decides again with fresh data, spreading the choice so eight concurrent allocators stop
choosing the same address.

A failed decision changes nothing: a Service keeps whatever it held.

Steady state is cheap on purpose (the controller re-converges every Service at start-up and on
every resync): a Service that already holds its addresses is decided from one read (its rows
with the occupancy of its addresses, and the pools' stamp) and the cached pool specs, with no
savepoint; only a decision that must write goes through the write path and decides again there.

A new Service on PostgreSQL costs three statements however many allocators race: that read
(which also brings its hints and the pools' high-water marks), one scan that locks the first
free candidate, and one claim (``CLAIM_CLEAN_PG``).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import bindparam, delete, func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lbprovider.db.driver import DriverStatement, fetch_all
from lbprovider.db.models import Allocation, AllocationPort, IPLease, LedgerEntry, ReleasedIP
from lbprovider.db.session import Unit, session_on
from lbprovider.db.types import utcnow
from lbprovider.ipam.allocator import (
    Allocator,
    Assignment,
    Decision,
    Occupancy,
    Policy,
    Reason,
    Request,
    ServiceRef,
)
from lbprovider.ipam.ranges import ip_key
from lbprovider.services.audit import LEDGER_ACTIONS
from lbprovider.services.context import Actor, IPPolicy
from lbprovider.services.errors import ConcurrentUpdate
from lbprovider.services.state import (
    DBStateView,
    HeldRow,
    Holdings,
    PoolSpecs,
    ScanClaim,
    cached_pool_specs,
    load_holdings,
    occupancy_from_rows,
)

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 12

# Built once: constructing SQLAlchemy statements costs more than running them on this path.
# Core statements on the tables: executed on the connection, they skip the ORM's bookkeeping.
_TABLES = Allocation.metadata.tables
INSERT_LEASE = insert(_TABLES[IPLease.__tablename__])
INSERT_ALLOCATION = insert(_TABLES[Allocation.__tablename__]).returning(Allocation.id)
INSERT_PORTS = insert(_TABLES[AllocationPort.__tablename__])
INSERT_LEDGER = insert(_TABLES[LedgerEntry.__tablename__])
LEASE_KEY = select(IPLease.sharing_key).where(IPLease.ip == bindparam("ip"))


@dataclass(frozen=True)
class Outcome:
    """What a Service holds after the call, and the decision that led there."""

    decision: Decision
    ips: tuple[str, ...]
    changed: bool

    @property
    def reason(self) -> Reason:
        return self.decision.reason


class _LostRace(Exception):
    """Another transaction holds or just took the address we chose."""


def active_allocations(session: Session, namespace: str, name: str) -> list[Allocation]:
    return list(
        session.scalars(
            select(Allocation)
            .where(
                Allocation.active,
                Allocation.service_namespace == namespace,
                Allocation.service_name == name,
            )
            .order_by(Allocation.family)
        )
    )


def allocate_service(
    *,
    session: Unit,
    request: Request,
    actor: Actor,
    policy: IPPolicy,
    now: datetime | None = None,
    reason: str | None = None,
    holdings: Holdings | None = None,
) -> Outcome:
    """Give ``request``'s Service the addresses it should hold (keeping what it has).

    ``reason``, when given, is what the ledger says for any change (else the decision's text).
    ``holdings``, when given, is what ``load_holdings`` just read for the Service in this
    transaction (the caller needed it too); else it is read here.

    ``session`` is the caller's unit of work: an ORM session (``db.session.transaction``) or a
    Core connection in its transaction (``db.session.connection_transaction``, lighter). On a
    connection, a decision that writes more than one clean claim makes an ORM session joined
    to it for that write (``db.session.session_on``)."""
    now = now or utcnow()
    if holdings is None:
        _flush_pending(session)
        holdings = load_holdings(session, request.service.namespace, request.service.name, now)
    if holdings.rows:
        kept = _steady(session, request, policy, now, holdings)
        if kept is not None:
            return kept
    return _with_retries(
        session, request, actor, policy, now, adopt=False, reason=reason, holdings=holdings
    )


def _flush_pending(session: Unit) -> None:
    """Reads below go through the connection (no autoflush): write pending ORM changes first."""
    if isinstance(session, Session) and (session.new or session.dirty or session.deleted):
        session.flush()


def steady_outcome(
    *,
    session: Unit,
    request: Request,
    policy: IPPolicy,
    now: datetime,
    holdings: Holdings,
    pool_specs: PoolSpecs | None = None,
) -> Outcome | None:
    """What ``allocate_service`` would return without writing, or None when it would write
    (read-only; for a start-up pass that checks many Services from bulk-read ``holdings``).
    ``pool_specs``: from ``cached_pool_specs`` in this transaction, when checking many."""
    if not holdings.rows:
        return None
    return _steady(session, request, policy, now, holdings, pool_specs)


def _steady(
    session: Unit,
    request: Request,
    ip_policy: IPPolicy,
    now: datetime,
    holdings: Holdings,
    pool_specs: PoolSpecs | None = None,
) -> Outcome | None:
    """The outcome when deciding changes nothing (the steady state), else None.

    Read-only: no savepoint, no write. The allocator decides exactly as on the full path, from
    the same data (the Service's rows and the occupancy of its addresses, read once); when that
    decision would write anything (a new or moved address, refreshed ports or sharing key) the
    caller takes the full path, which decides again under its savepoint."""
    if not all(_row_is_current(row, request) for row in holdings.rows):
        return None
    specs, pool_ids = pool_specs or cached_pool_specs(session, holdings.stamp)
    view = DBStateView(session, pool_ids, now, known=holdings.occupancy)
    policy = Policy(now=now, hold=ip_policy.hold, quarantine=ip_policy.quarantine)
    held = [Assignment(r.ip, r.pool_name, r.family) for r in holdings.rows]
    decision = Allocator(specs, view, policy).allocate(request, held)
    ips = tuple(r.ip for r in holdings.rows)
    if not decision.ok:
        return Outcome(decision, ips, changed=False)
    if {a.ip for a in decision.assignments} != set(ips):
        return None
    return Outcome(decision, tuple(sorted(ips, key=_family)), changed=False)


def _row_is_current(row: HeldRow, request: Request) -> bool:
    """A kept allocation needs no refresh: same ports, sharing key and (when known) uid."""
    return (
        row.ports == _ports_json(request)
        and row.sharing_key == request.sharing_key
        and (row.service_uid == request.service.uid or not request.service.uid)
    )


def adopt_service(
    *,
    session: Unit,
    request: Request,
    actor: Actor,
    policy: IPPolicy,
    now: datetime | None = None,
) -> Outcome:
    """Record the addresses in ``request.requested_ips`` (a Service's status) as its own.

    Nothing moves: an address held by another Service is reported, never taken over."""
    _flush_pending(session)
    return _with_retries(session, request, actor, policy, now or utcnow(), adopt=True)


class _Orm:
    """The ORM session a savepoint write needs: the caller's, or (when the caller gave a
    connection) one joined to that connection, made on first use and closed after the call."""

    def __init__(self, unit: Unit) -> None:
        self.unit = unit
        self.made: Session | None = None

    def session(self) -> Session:
        if isinstance(self.unit, Session):
            return self.unit
        if self.made is None:
            self.made = session_on(self.unit)
        return self.made

    def close(self) -> None:
        if self.made is not None:
            self.made.close()  # its writes were flushed; the transaction is the connection's


def _with_retries(
    session: Unit,
    request: Request,
    actor: Actor,
    policy: IPPolicy,
    now: datetime,
    *,
    adopt: bool,
    reason: str | None = None,
    holdings: Holdings | None = None,
) -> Outcome:
    orm = _Orm(session)
    try:
        rng = random.Random()
        for attempt in range(MAX_ATTEMPTS):
            spread = 1 if attempt == 0 else min(64, 2**attempt)
            # The first attempt may reuse what was read just before; a retry reads afresh.
            known = holdings if attempt == 0 else None
            in_savepoint = False
            try:
                arm = (
                    _scan_claim(request, actor, now, reason) if attempt == 0 and not adopt else None
                )
                plan = _decide(session, request, policy, now, spread, rng, adopt, known, arm)
                if isinstance(plan, Outcome):
                    return plan
                why = reason or plan.decision.message
                if plan.view.claimed is not None:
                    # The scan wrote the claim (SCAN_CLAIM_PG); it must be this decision's.
                    return _claimed_by_scan(plan, why)
                claim = _single_clean_claim(session, plan, adopt)
                if claim is not None:
                    # No savepoint: a lost race writes nothing (see CLAIM_CLEAN_PG).
                    return _claim_clean(session, plan, claim, actor, now, why)
                in_savepoint = True
                write_session = orm.session()
                with write_session.begin_nested():
                    return _write(write_session, plan, actor, now, adopt, why)
            except (IntegrityError, _LostRace) as e:
                if isinstance(e, IntegrityError) and not in_savepoint:
                    raise  # the transaction is aborted: nothing to retry in
                logger.debug(
                    "allocation race, retrying",
                    extra={
                        "event": "allocation_retry",
                        "service": request.service.key,
                        "error": str(e),
                    },
                )
        raise ConcurrentUpdate(f"could not allocate for {request.service.key}: too much contention")
    finally:
        orm.close()


@dataclass(frozen=True)
class _Plan:
    """A decision that writes, with what it was decided from."""

    allocator: Allocator
    request: Request
    decision: Decision
    current: Sequence[HeldRow]
    pool_ids: dict[str, int]
    view: DBStateView


def _decide(
    session: Unit,
    request: Request,
    ip_policy: IPPolicy,
    now: datetime,
    spread: int,
    rng: random.Random,
    adopt: bool,
    holdings: Holdings | None,
    arm: ScanClaim | None = None,
) -> _Plan | Outcome:
    """Decide from fresh reads (reads and per-address locks only: nothing to roll back).

    An ``Outcome`` when the decision writes nothing (a refusal), else the plan to write."""
    svc = request.service
    if holdings is None:
        holdings = load_holdings(session, svc.namespace, svc.name, now)
    current = holdings.rows
    held = [Assignment(a.ip, a.pool_name, a.family) for a in current]
    specs, pool_ids = cached_pool_specs(session, holdings.stamp)
    hints = {ServiceRef(svc.namespace, svc.name): holdings.hints} if holdings.hints else None
    view = DBStateView(
        session,
        pool_ids,
        now,
        known=holdings.occupancy,
        hints=hints,
        high_water=holdings.high_water,
    )
    if arm is not None and not current and view.postgresql:
        view.claim = arm
    policy = Policy(
        now=now, hold=ip_policy.hold, quarantine=ip_policy.quarantine, spread=spread, rng=rng
    )
    allocator = Allocator(specs, view, policy)
    if adopt:
        new_families = {a.family for a in held}
        todo = tuple(ip for ip in request.requested_ips if _family(ip) not in new_families)
        adopt_request = replace(request, requested_ips=todo)
        decision = (
            allocator.adopt(adopt_request, held)
            if todo
            else Decision(Reason.SATISFIED, "already recorded", tuple(held))
        )
        if decision.ok:
            decision = Decision(
                decision.reason,
                decision.message,
                tuple(held)
                + tuple(a for a in decision.assignments if a.ip not in {h.ip for h in held}),
            )
    else:
        decision = allocator.allocate(request, held)
    if not decision.ok and view.claimed is not None:
        raise RuntimeError(f"the scan claimed {view.claimed[0]}, the decision refused: {decision}")
    if not decision.ok:
        return Outcome(decision, tuple(a.ip for a in current), changed=False)
    return _Plan(allocator, request, decision, current, pool_ids, view)


def _family(ip: str) -> int:
    return 6 if ":" in ip else 4


def _write(
    session: Session, plan: _Plan, actor: Actor, now: datetime, adopt: bool, why: str
) -> Outcome:
    request, decision, current = plan.request, plan.decision, plan.current
    svc = request.service
    wanted = {a.ip: a for a in decision.assignments}
    changed = False
    replaced_families: set[int] = set()
    for row in current:
        if row.ip not in wanted:
            orm_row = session.get_one(Allocation, row.id)
            _release_row(
                session, orm_row, actor, now, action="reassigned", reason=f"moved away: {why}"
            )
            replaced_families.add(row.family)
            changed = True
    kept = {row.ip: row for row in current if row.ip in wanted}
    for ip in sorted(set(wanted) - set(kept)):
        a = wanted[ip]
        action = (
            "adopted" if adopt else ("reassigned" if a.family in replaced_families else "allocated")
        )
        entry = _Entry(actor, action, why)
        pool_id = plan.pool_ids[a.pool]
        if session.get_bind().dialect.name == "postgresql":
            _claim_in_one_statement(session, plan.allocator, request, a, pool_id, now, entry)
        else:
            _claim(session, plan.allocator, request, a, pool_id, now)
            _insert_ledger(session, actor, ip, action, why, a.pool, svc.namespace, svc.name)
        changed = True
    for row in kept.values():
        if not _row_is_current(row, request):
            changed |= _refresh_row(session, session.get_one(Allocation, row.id), request)
    session.flush()
    return Outcome(decision, tuple(sorted(wanted, key=_family)), changed)


def _scan_claim(
    request: Request, actor: Actor, now: datetime, reason: str | None
) -> ScanClaim | None:
    """What the scan writes when it may claim (``SCAN_CLAIM_PG``): a new single-stack IPv4
    Service without explicit addresses, on the first attempt (later ones spread at random)."""
    families = tuple(dict.fromkeys(request.families)) or (4,)
    if request.requested_ips or request.family_policy != "SingleStack" or families[0] != 4:
        return None
    svc = request.service
    return ScanClaim(
        {
            "ns": svc.namespace,
            "name": svc.name,
            "uid": svc.uid,
            "key": request.sharing_key,
            "ports": json.dumps(_ports_json(request)),
            "at": utcnow(),
            "reason": reason,
            "actor": actor.name,
            "request_id": actor.request_id,
        }
    )


def _claimed_by_scan(plan: _Plan, why: str) -> Outcome:
    """The outcome of a decision whose address the scan claimed, or ``_LostRace`` (then the
    scan wrote nothing). The scan claims only an address the allocator must take; anything
    else is a bug, and fails the transaction rather than write a second address."""
    view = plan.view
    assert view.claimed is not None and view.claim is not None
    ip, allocation_id, pool = view.claimed
    written = view.claim.params["reason"] or f"allocated {ip} from pool {pool!r}"
    if plan.decision.assignments != (Assignment(ip, pool, 4),) or why != written:
        raise RuntimeError(f"the scan claimed {ip} in {pool!r}, the decision is {plan.decision}")
    if allocation_id is None:
        raise _LostRace(ip)
    return Outcome(plan.decision, (ip,), changed=True)


def _single_clean_claim(session: Unit, plan: _Plan, adopt: bool) -> Assignment | None:
    """The one address to claim when that is the plan's only write and the scan locked it
    while nothing stood on it (PostgreSQL): the case ``_claim_clean`` handles."""
    if adopt or plan.current or len(plan.decision.assignments) != 1:
        return None
    a = plan.decision.assignments[0]
    if a.ip not in plan.view.clean or not plan.view.postgresql:
        return None
    return a


# PostgreSQL, the common claim: a new address for a Service that holds none, locked by the scan
# while nothing stood on it. The writes happen only if, in this statement's snapshot (taken
# after the lock, so it sees every commit of an earlier holder of the lock), nothing stands on
# the address (no allocation, lease, port, live reservation or release: the allocator cannot
# refuse it) and its pool still exists (held with FOR KEY SHARE, so a concurrent delete can
# neither slip in before the foreign keys are checked nor fail them). The one constraint left
# that a racing writer can hit, one live allocation per Service and family, is ON CONFLICT DO
# NOTHING: every other row hangs off the allocation's id. So a lost race writes nothing and
# returns no id, and the claim needs no savepoint. Only a writer that skips the address lock
# could still violate a constraint; that fails the statement (and the transaction), loudly.
# The port rows come from ``:ports`` (the allocation's own ``[[protocol, port], ...]``): array
# parameters cost the client more to dump than the rest of the statement's parameters.
CLAIM_CLEAN_PG = DriverStatement(
    text(
        """
WITH pool AS (
    SELECT id FROM pools WHERE id = :pool_id FOR KEY SHARE
), free AS (
    SELECT 1 AS one FROM pool
    WHERE NOT EXISTS (SELECT 1 FROM allocations WHERE active AND ip = :ip)
    AND NOT EXISTS (SELECT 1 FROM ip_leases WHERE ip = :ip)
    AND NOT EXISTS (SELECT 1 FROM allocation_ports WHERE ip = :ip)
    AND NOT EXISTS (SELECT 1 FROM reservations WHERE ip = :ip
        AND (expires_at IS NULL OR expires_at > :now))
    AND NOT EXISTS (SELECT 1 FROM released_ips WHERE ip = :ip)
), a AS (
    INSERT INTO allocations (ip, ip_key, pool_id, pool_name, family, service_namespace,
        service_name, service_uid, sharing_key, ports, active, allocated_at, released_at)
    SELECT :ip, :ip_key, :pool_id, :pool, :family, :ns, :name, :uid, :key,
        CAST(:ports AS jsonb), true, :now, NULL
    FROM free
    ON CONFLICT DO NOTHING
    RETURNING id
), l AS (
    INSERT INTO ip_leases (ip, ip_key, pool_id, family, sharing_key, created_at)
    SELECT :ip, :ip_key, :pool_id, :family, :key, :now FROM a
), p AS (
    INSERT INTO allocation_ports (allocation_id, ip, protocol, port)
    SELECT a.id, :ip, u.p ->> 0, CAST(u.p ->> 1 AS integer)
    FROM a, jsonb_array_elements(CAST(:ports AS jsonb)) AS u(p)
), g AS (
    INSERT INTO ledger (at, ip, pool, service_namespace, service_name, action, reason, actor,
        request_id)
    SELECT :at, :ip, :pool, :ns, :name, :action, :reason, :actor, :request_id FROM a
)
SELECT id FROM a
"""
    )
)


def _claim_clean(
    session: Unit, plan: _Plan, a: Assignment, actor: Actor, now: datetime, why: str
) -> Outcome:
    """Write ``_single_clean_claim``'s address in one statement, or raise ``_LostRace`` (then
    nothing was written)."""
    params = _claim_params(
        plan.request, a, plan.pool_ids[a.pool], now, _Entry(actor, "allocated", why)
    )
    written = fetch_all(session, CLAIM_CLEAN_PG, params)
    if not written:
        raise _LostRace(a.ip)
    return Outcome(plan.decision, (a.ip,), changed=True)


def _insert_ledger(
    session: Session,
    actor: Actor,
    ip: str,
    action: str,
    reason: str,
    pool: str,
    namespace: str,
    name: str,
) -> None:
    """``audit.record_ledger`` as one Core INSERT (no ORM object to flush)."""
    assert action in LEDGER_ACTIONS, action
    session.connection().execute(
        INSERT_LEDGER,
        {
            "ip": ip,
            "pool": pool,
            "service_namespace": namespace,
            "service_name": name,
            "action": action,
            "reason": reason,
            "actor": actor.name,
            "request_id": actor.request_id,
        },
    )


def lock_ip(session: Session, ip: str) -> None:
    """Wait for the per-address lock (releases and reservations must not skip)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:ip, 0))"), {"ip": ip})


def _claim(
    session: Session,
    allocator: Allocator,
    request: Request,
    a: Assignment,
    pool_id: int,
    now: datetime,
) -> None:
    if not allocator.view.claimable(a.ip):
        raise _LostRace(a.ip)
    # Read again now that the address is locked: the first read may predate a commit.
    fresh = allocator.view.occupancy([a.ip]).get(a.ip, Occupancy())
    if allocator.check(request, a.ip, fresh) is not None:
        raise _LostRace(a.ip)
    conn = session.connection()
    key = ip_key(a.ip)
    if fresh.holders:
        # Joining a shared address: the lease must carry the same sharing key.
        lease_key = conn.execute(LEASE_KEY, {"ip": a.ip}).scalar()
        if not request.sharing_key or lease_key != request.sharing_key:
            raise _LostRace(a.ip)
    else:
        conn.execute(
            INSERT_LEASE,
            {
                "ip": a.ip,
                "ip_key": key,
                "pool_id": pool_id,
                "family": a.family,
                "sharing_key": request.sharing_key,
                "created_at": now,
            },
        )
    svc = request.service
    allocation_id = conn.execute(
        INSERT_ALLOCATION,
        {
            "ip": a.ip,
            "ip_key": key,
            "pool_id": pool_id,
            "pool_name": a.pool,
            "family": a.family,
            "service_namespace": svc.namespace,
            "service_name": svc.name,
            "service_uid": svc.uid,
            "sharing_key": request.sharing_key,
            "ports": _ports_json(request),
            "allocated_at": now,
            "released_at": None,
            "active": True,
        },
    ).scalar_one()
    _insert_ports(session, allocation_id, a.ip, request)


@dataclass(frozen=True)
class _Entry:
    """The ledger row a claim writes."""

    actor: Actor
    action: str
    reason: str


# PostgreSQL: the whole claim after the per-address lock in one round trip. The sub-statements
# write the allocation, its ports, the lease (only when nobody holds the address) and the ledger
# row; the main SELECT sees the snapshot taken when the statement started, i.e. after the lock
# and before these writes, and returns the address's occupancy and lease for the re-check. A
# failed re-check rolls the savepoint back; a violated constraint fails the statement.
CLAIM_PG = text(
    """
WITH a AS (
    INSERT INTO allocations (ip, ip_key, pool_id, pool_name, family, service_namespace,
        service_name, service_uid, sharing_key, ports, active, allocated_at, released_at)
    VALUES (:ip, :ip_key, :pool_id, :pool, :family, :ns, :name, :uid, :key,
        CAST(:ports AS jsonb), true, :now, NULL)
    RETURNING id
), l AS (
    INSERT INTO ip_leases (ip, ip_key, pool_id, family, sharing_key, created_at)
    SELECT :ip, :ip_key, :pool_id, :family, :key, :now
    WHERE NOT EXISTS (SELECT 1 FROM allocations WHERE active AND ip = :ip)
), p AS (
    INSERT INTO allocation_ports (allocation_id, ip, protocol, port)
    SELECT a.id, :ip, u.protocol, u.port
    FROM a, unnest(CAST(:protocols AS varchar[]), CAST(:numbers AS integer[]))
        AS u(protocol, port)
), g AS (
    INSERT INTO ledger (at, ip, pool, service_namespace, service_name, action, reason, actor,
        request_id)
    VALUES (:at, :ip, :pool, :ns, :name, :action, :reason, :actor, :request_id)
)
SELECT 'i' AS kind, CAST(:ip AS varchar) AS ip, CAST(NULL AS varchar) AS ns,
    CAST(NULL AS varchar) AS name, CAST(NULL AS varchar) AS uid, CAST(NULL AS varchar) AS key,
    CAST((SELECT id FROM a) AS varchar) AS extra, CAST(NULL AS timestamptz) AS at
UNION ALL
SELECT 'k', ip, NULL, NULL, NULL, sharing_key, NULL, NULL FROM ip_leases WHERE ip = :ip
UNION ALL
SELECT 'a', ip, service_namespace, service_name, service_uid, sharing_key, CAST(ports AS varchar),
    NULL
FROM allocations WHERE active AND ip = :ip
UNION ALL
SELECT 'r', ip, service_namespace, service_name, NULL, owner, NULL, NULL
FROM reservations WHERE ip = :ip AND (expires_at IS NULL OR expires_at > :now)
UNION ALL
SELECT 'x', ip, service_namespace, service_name, NULL, NULL, NULL, released_at
FROM released_ips WHERE ip = :ip
"""
)


def _claim_in_one_statement(
    session: Session,
    allocator: Allocator,
    request: Request,
    a: Assignment,
    pool_id: int,
    now: datetime,
    entry: _Entry,
) -> None:
    """``_claim`` plus the ledger row on PostgreSQL: the lock, then one statement."""
    if not allocator.view.claimable(a.ip):
        raise _LostRace(a.ip)
    ports = sorted(request.ports)
    params = {
        **_claim_params(request, a, pool_id, now, entry),
        "protocols": [proto for proto, _ in ports],
        "numbers": [port for _, port in ports],
    }
    rows = session.connection().execute(CLAIM_PG, params).all()
    fresh = occupancy_from_rows(rows).get(a.ip, Occupancy())
    if allocator.check(request, a.ip, fresh) is not None:
        raise _LostRace(a.ip)
    if fresh.holders:
        # Joined a shared address: the lease must carry the same sharing key.
        lease_keys = [row.key for row in rows if row.kind == "k"]
        if not request.sharing_key or lease_keys != [request.sharing_key]:
            raise _LostRace(a.ip)


def _claim_params(
    request: Request, a: Assignment, pool_id: int, now: datetime, entry: _Entry
) -> dict[str, object]:
    svc = request.service
    assert entry.action in LEDGER_ACTIONS, entry.action
    return {
        "ip": a.ip,
        "ip_key": ip_key(a.ip),
        "pool_id": pool_id,
        "pool": a.pool,
        "family": a.family,
        "ns": svc.namespace,
        "name": svc.name,
        "uid": svc.uid,
        "key": request.sharing_key,
        "ports": json.dumps(_ports_json(request)),
        "now": now,
        "at": utcnow(),
        "action": entry.action,
        "reason": entry.reason,
        "actor": entry.actor.name,
        "request_id": entry.actor.request_id,
    }


def _ports_json(request: Request) -> list[list[object]]:
    return [[proto, port] for proto, port in sorted(request.ports)]


def _insert_ports(session: Session, allocation_id: int, ip: str, request: Request) -> None:
    rows = [
        {"allocation_id": allocation_id, "ip": ip, "protocol": proto, "port": port}
        for proto, port in sorted(request.ports)
    ]
    if rows:
        session.connection().execute(INSERT_PORTS, rows)


def _refresh_row(session: Session, row: Allocation, request: Request) -> bool:
    """Bring a kept allocation's ports, sharing key and uid up to date."""
    ports = _ports_json(request)
    if (
        row.ports == ports
        and row.sharing_key == request.sharing_key
        and (row.service_uid == request.service.uid or not request.service.uid)
    ):
        return False
    if row.ports != ports:
        session.execute(delete(AllocationPort).where(AllocationPort.allocation_id == row.id))
        session.flush()
        _insert_ports(session, row.id, row.ip, request)
        row.ports = ports
    row.sharing_key = request.sharing_key
    if request.service.uid:
        row.service_uid = request.service.uid
    lease = session.get(IPLease, row.ip)
    if lease is not None and lease.sharing_key != request.sharing_key:
        others = _holder_count(session, row.ip) - 1
        if others == 0:
            lease.sharing_key = request.sharing_key
    session.flush()
    return True


def _holder_count(session: Session, ip: str) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Allocation)
            .where(Allocation.active, Allocation.ip == ip)
        )
        or 0
    )


def release_service(
    *,
    session: Session,
    namespace: str,
    name: str,
    actor: Actor,
    reason: str,
    now: datetime | None = None,
) -> list[str]:
    """Release every address the Service holds; the ledger says why. Returns the addresses."""
    released = []
    for row in active_allocations(session, namespace, name):
        _release_row(session, row, actor, now or utcnow(), action="released", reason=reason)
        released.append(row.ip)
    session.flush()
    return released


def _release_row(
    session: Session, row: Allocation, actor: Actor, now: datetime, *, action: str, reason: str
) -> None:
    lock_ip(session, row.ip)
    row.active = False
    row.released_at = now
    session.execute(delete(AllocationPort).where(AllocationPort.allocation_id == row.id))
    session.flush()
    if _holder_count(session, row.ip) == 0:
        session.execute(delete(IPLease).where(IPLease.ip == row.ip))
        if row.pool_id is not None:
            _remember_release(session, row, now)
    _insert_ledger(
        session,
        actor,
        row.ip,
        action,
        reason,
        row.pool_name,
        row.service_namespace,
        row.service_name,
    )


def _remember_release(session: Session, row: Allocation, now: datetime) -> None:
    assert row.pool_id is not None
    rel = session.get(ReleasedIP, row.ip)
    if rel is None:
        rel = ReleasedIP(
            ip=row.ip,
            ip_key=row.ip_key,
            pool_id=row.pool_id,
            family=row.family,
            service_namespace=row.service_namespace,
            service_name=row.service_name,
            released_at=now,
        )
        session.add(rel)
    else:
        rel.pool_id = row.pool_id
        rel.service_namespace = row.service_namespace
        rel.service_name = row.service_name
        rel.released_at = now
