"""Reservations: addresses claimed by a pipeline before its Service or DNS record exists.

A reserved address is never auto-assigned; it goes only to the Service the reservation names
(if it names one). Expired reservations are released by ``expire_reservations``, which the
server runs on a timer — nobody has to call the API.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lbprovider.db.models import IPLease, Reservation
from lbprovider.db.types import utcnow
from lbprovider.ipam.allocator import Allocator, Occupancy, Policy, Request, ServiceRef
from lbprovider.ipam.pool import PoolSpec
from lbprovider.ipam.ranges import RangeError, ip_key, parse_ip
from lbprovider.services.allocations import lock_ip
from lbprovider.services.audit import record_audit, record_ledger
from lbprovider.services.context import Actor, IPPolicy
from lbprovider.services.errors import Conflict, InvalidInput, NotFound
from lbprovider.services.pools import get_pool
from lbprovider.services.state import DBStateView, load_pool_specs, try_lock_ip

CANDIDATES = 64
SCAN_ROUNDS = 20


def reservation_as_dict(r: Reservation) -> dict[str, object]:
    return {
        "id": r.id,
        "ip": r.ip,
        "pool": r.pool.name,
        "owner": r.owner,
        "purpose": r.purpose,
        "service_namespace": r.service_namespace,
        "service_name": r.service_name,
        "expires_at": r.expires_at.isoformat() if r.expires_at else None,
    }


def create_reservation(
    *,
    session: Session,
    pool_name: str,
    owner: str,
    actor: Actor,
    policy: IPPolicy,
    ip: str | None = None,
    family: int | None = None,
    purpose: str = "",
    service_namespace: str | None = None,
    service_name: str | None = None,
    expires_at: datetime | None = None,
) -> Reservation:
    """Reserve ``ip``, or the next free address of the pool when ``ip`` is None."""
    pool = get_pool(session=session, name=pool_name)
    if bool(service_namespace) != bool(service_name):
        raise InvalidInput(
            "give both service_namespace and service_name, or neither", field="service_name"
        )
    now = utcnow()
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("expires_at is in the past", field="expires_at")
    specs, ids = load_pool_specs(session)
    spec = next(s for s in specs if s.name == pool.name)
    allocator = Allocator(
        specs,
        DBStateView(session, ids, now),
        Policy(now=now, hold=policy.hold, quarantine=policy.quarantine),
    )
    owner_ref = ServiceRef(service_namespace or "", service_name or "")
    request = Request(service=owner_ref, ports=frozenset())

    def reserve_first(candidates: list[str], wait: bool) -> Reservation | None:
        for candidate in candidates:
            row = _try_reserve(
                session,
                allocator,
                request,
                candidate,
                pool.id,
                owner,
                purpose,
                service_namespace,
                service_name,
                expires_at,
                actor,
                wait=wait,
            )
            if row is not None:
                return row
        return None

    if ip is not None:
        row = reserve_first([_explicit(spec_ip=ip, spec=spec)], wait=True)
    else:
        row = _reserve_next_free(spec, family, allocator, reserve_first)
    if row is None and ip is not None:
        raise Conflict(f"{ip} is not free in pool {pool.name!r}", field="ip")
    if row is None:
        raise Conflict(f"pool {pool.name!r} has no free address to reserve", field="pool")
    record_ledger(
        session,
        actor=actor,
        ip=row.ip,
        action="reserved",
        reason=f"reserved by {owner}" + (f": {purpose}" if purpose else ""),
        pool=pool.name,
        namespace=service_namespace or "",
        name=service_name or "",
    )
    record_audit(
        session,
        actor=actor,
        action="reservation.create",
        object_type="reservation",
        object_id=row.ip,
        after=reservation_as_dict(row),
    )
    return row


def _reserve_next_free(
    spec: PoolSpec,
    family: int | None,
    allocator: Allocator,
    reserve_first: Callable[[list[str], bool], Reservation | None],
) -> Reservation | None:
    """Scan, try the candidates (skipping addresses another writer is deciding on), and scan
    again while concurrent writers took them all: "no free address" is only said after a fresh
    scan finds none. Without the rescan, clients racing down the same list starve each other."""
    if family is not None and family not in spec.families:
        raise InvalidInput(f"pool {spec.name!r} has no IPv{family} range", field="family")
    fams = [family] if family else list(spec.families)
    for _ in range(SCAN_ROUNDS):
        candidates = [a for f in fams for a in allocator.available(spec, f, CANDIDATES)]
        if not candidates:
            return None
        row = reserve_first(candidates, False)
        if row is not None:
            return row
    return None


def _explicit(*, spec_ip: str, spec: PoolSpec) -> str:
    try:
        addr = parse_ip(spec_ip)
    except RangeError as e:
        raise InvalidInput(str(e), field="ip") from e
    if not spec.usable(addr):
        raise InvalidInput(f"{addr} is not a usable address of pool {spec.name!r}", field="ip")
    return str(addr)


def _try_reserve(
    session: Session,
    allocator: Allocator,
    request: Request,
    ip: str,
    pool_id: int,
    owner: str,
    purpose: str,
    service_namespace: str | None,
    service_name: str | None,
    expires_at: datetime | None,
    actor: Actor,
    *,
    wait: bool = True,
) -> Reservation | None:
    try:
        with session.begin_nested():
            if wait:
                lock_ip(session, ip)
            elif not try_lock_ip(session, ip):
                return None
            occ = allocator.view.occupancy([ip]).get(ip, Occupancy())
            if occ.reserved or allocator.check(request, ip, occ) is not None:
                return None
            if session.get(IPLease, ip) is not None and not occ.holders:
                return None
            row = Reservation(
                ip=ip,
                ip_key=ip_key(ip),
                pool_id=pool_id,
                family=parse_ip(ip).version,
                owner=owner,
                purpose=purpose,
                service_namespace=service_namespace,
                service_name=service_name,
                expires_at=expires_at,
                created_by=actor.name,
            )
            session.add(row)
            session.flush()
            return row
    except IntegrityError:
        return None


def get_reservation(*, session: Session, reservation_id: int) -> Reservation:
    row = session.get(Reservation, reservation_id)
    if row is None:
        raise NotFound(f"reservation {reservation_id} does not exist", field="id")
    return row


def delete_reservation(
    *, session: Session, reservation_id: int, actor: Actor, reason: str = "deleted"
) -> None:
    row = get_reservation(session=session, reservation_id=reservation_id)
    before = reservation_as_dict(row)
    record_ledger(
        session,
        actor=actor,
        ip=row.ip,
        action="unreserved",
        reason=reason,
        pool=row.pool.name,
        namespace=row.service_namespace or "",
        name=row.service_name or "",
    )
    record_audit(
        session,
        actor=actor,
        action="reservation.delete",
        object_type="reservation",
        object_id=row.ip,
        before=before,
    )
    session.delete(row)
    session.flush()


def expire_reservations(*, session: Session, actor: Actor, now: datetime | None = None) -> int:
    """Delete every reservation past its expiry (ledger row each). Returns how many."""
    now = now or utcnow()
    # Every API replica sweeps: lock what we release and skip what another sweep holds, so an
    # expiry is released (and written to the ledger) once.
    expired = session.scalars(
        select(Reservation)
        .where(Reservation.expires_at.is_not(None), Reservation.expires_at <= now)
        .with_for_update(skip_locked=True)
    ).all()
    for row in expired:
        delete_reservation(session=session, reservation_id=row.id, actor=actor, reason="expired")
    return len(expired)


def reservation_query(
    *, pool_id: int | None = None, owner: str | None = None, ip: str | None = None
) -> Select[Reservation]:
    stmt = select(Reservation)
    if pool_id is not None:
        stmt = stmt.where(Reservation.pool_id == pool_id)
    if owner is not None:
        stmt = stmt.where(Reservation.owner == owner)
    if ip is not None:
        stmt = stmt.where(Reservation.ip == ip)
    return stmt.order_by(Reservation.id)
