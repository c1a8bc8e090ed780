"""Allocate, adopt and release a Service's addresses: one database transaction each.

The pure allocator decides; this module writes the decision as rows (lease, allocation, ports,
ledger) and lets the database's unique constraints settle races. A lost race rolls back to a
savepoint and decides again with fresh data, spreading the choice so eight concurrent
allocators stop choosing the same address.

A failed decision changes nothing: a Service keeps whatever it held.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lbprovider.db.models import Allocation, AllocationPort, IPLease, ReleasedIP
from lbprovider.db.types import utcnow
from lbprovider.ipam.allocator import (
    Allocator,
    Assignment,
    Decision,
    Occupancy,
    Policy,
    Reason,
    Request,
)
from lbprovider.ipam.ranges import ip_key
from lbprovider.services.audit import record_ledger
from lbprovider.services.context import Actor, IPPolicy
from lbprovider.services.errors import ConcurrentUpdate
from lbprovider.services.state import DBStateView, load_pool_specs

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 12


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
    session: Session,
    request: Request,
    actor: Actor,
    policy: IPPolicy,
    now: datetime | None = None,
    reason: str | None = None,
) -> Outcome:
    """Give ``request``'s Service the addresses it should hold (keeping what it has).

    ``reason``, when given, is what the ledger says for any change (else the decision's text)."""
    return _with_retries(session, request, actor, policy, now, adopt=False, reason=reason)


def adopt_service(
    *,
    session: Session,
    request: Request,
    actor: Actor,
    policy: IPPolicy,
    now: datetime | None = None,
) -> Outcome:
    """Record the addresses in ``request.requested_ips`` (a Service's status) as its own.

    Nothing moves: an address held by another Service is reported, never taken over."""
    return _with_retries(session, request, actor, policy, now, adopt=True)


def _with_retries(
    session: Session,
    request: Request,
    actor: Actor,
    policy: IPPolicy,
    now: datetime | None,
    *,
    adopt: bool,
    reason: str | None = None,
) -> Outcome:
    rng = random.Random()
    for attempt in range(MAX_ATTEMPTS):
        spread = 1 if attempt == 0 else min(64, 2**attempt)
        try:
            with session.begin_nested():
                return _decide_and_write(
                    session, request, actor, policy, now or utcnow(), spread, rng, adopt, reason
                )
        except (IntegrityError, _LostRace) as e:
            logger.debug(
                "allocation race, retrying",
                extra={
                    "event": "allocation_retry",
                    "service": request.service.key,
                    "error": str(e),
                },
            )
    raise ConcurrentUpdate(f"could not allocate for {request.service.key}: too much contention")


def _decide_and_write(
    session: Session,
    request: Request,
    actor: Actor,
    ip_policy: IPPolicy,
    now: datetime,
    spread: int,
    rng: random.Random,
    adopt: bool,
    reason: str | None,
) -> Outcome:
    svc = request.service
    current = active_allocations(session, svc.namespace, svc.name)
    held = [Assignment(a.ip, a.pool_name, a.family) for a in current]
    specs, pool_ids = load_pool_specs(session)
    view = DBStateView(session, pool_ids, now)
    policy = Policy(
        now=now, hold=ip_policy.hold, quarantine=ip_policy.quarantine, spread=spread, rng=rng
    )
    allocator = Allocator(specs, view, policy)
    if adopt:
        new_families = {a.family for a in held}
        todo = tuple(ip for ip in request.requested_ips if _family(ip) not in new_families)
        adopt_request = _replace_ips(request, todo)
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
    if not decision.ok:
        return Outcome(decision, tuple(a.ip for a in current), changed=False)
    why = reason or decision.message
    return _write(session, allocator, request, decision, current, pool_ids, actor, now, adopt, why)


def _family(ip: str) -> int:
    return 6 if ":" in ip else 4


def _replace_ips(request: Request, ips: tuple[str, ...]) -> Request:
    from dataclasses import replace

    return replace(request, requested_ips=ips)


def _write(
    session: Session,
    allocator: Allocator,
    request: Request,
    decision: Decision,
    current: Sequence[Allocation],
    pool_ids: dict[str, int],
    actor: Actor,
    now: datetime,
    adopt: bool,
    why: str,
) -> Outcome:
    svc = request.service
    wanted = {a.ip: a for a in decision.assignments}
    changed = False
    replaced_families: set[int] = set()
    for row in current:
        if row.ip not in wanted:
            _release_row(session, row, actor, now, action="reassigned", reason=f"moved away: {why}")
            replaced_families.add(row.family)
            changed = True
    kept = {row.ip: row for row in current if row.ip in wanted}
    for ip in sorted(set(wanted) - set(kept)):
        a = wanted[ip]
        _claim(session, allocator, request, a, pool_ids[a.pool], now)
        action = (
            "adopted" if adopt else ("reassigned" if a.family in replaced_families else "allocated")
        )
        record_ledger(
            session,
            actor=actor,
            ip=ip,
            action=action,
            reason=why,
            pool=a.pool,
            namespace=svc.namespace,
            name=svc.name,
        )
        changed = True
    for row in kept.values():
        changed |= _refresh_row(session, row, request)
    session.flush()
    return Outcome(decision, tuple(sorted(wanted, key=_family)), changed)


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
    fresh = allocator.view.occupancy([a.ip]).get(a.ip, Occupancy())
    if allocator.check(request, a.ip, fresh) is not None:
        raise _LostRace(a.ip)
    if fresh.holders:
        # Joining a shared address: the lease must carry the same sharing key.
        lease_key = session.scalar(select(IPLease.sharing_key).where(IPLease.ip == a.ip))
        if not request.sharing_key or lease_key != request.sharing_key:
            raise _LostRace(a.ip)
    else:
        session.execute(
            insert(IPLease).values(
                ip=a.ip,
                ip_key=ip_key(a.ip),
                pool_id=pool_id,
                family=a.family,
                sharing_key=request.sharing_key,
                created_at=now,
            )
        )
    svc = request.service
    allocation_id = session.execute(
        insert(Allocation)
        .values(
            ip=a.ip,
            ip_key=ip_key(a.ip),
            pool_id=pool_id,
            pool_name=a.pool,
            family=a.family,
            service_namespace=svc.namespace,
            service_name=svc.name,
            service_uid=svc.uid,
            sharing_key=request.sharing_key,
            ports=_ports_json(request),
            allocated_at=now,
            active=True,
        )
        .returning(Allocation.id)
    ).scalar_one()
    _insert_ports(session, allocation_id, a.ip, request)


def _ports_json(request: Request) -> list[list[object]]:
    return [[proto, port] for proto, port in sorted(request.ports)]


def _insert_ports(session: Session, allocation_id: int, ip: str, request: Request) -> None:
    rows = [
        {"allocation_id": allocation_id, "ip": ip, "protocol": proto, "port": port}
        for proto, port in sorted(request.ports)
    ]
    if rows:
        session.execute(insert(AllocationPort), rows)


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
    record_ledger(
        session,
        actor=actor,
        ip=row.ip,
        action=action,
        reason=reason,
        pool=row.pool_name,
        namespace=row.service_namespace,
        name=row.service_name,
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
