"""Pool use cases: create, read with utilisation, edit with preview, drain, delete.

An edit that would push live allocations out of a pool is refused with the list of what would
move (``EditWouldMoveAllocations``) unless the caller forces it; a forced edit moves each
affected Service through the normal allocation path, so every move lands in the ledger.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from lbprovider.db.models import Allocation, Exclusion, IPLease, Pool, Reservation, ServiceRecord
from lbprovider.db.types import utcnow
from lbprovider.ipam.allocator import Allocator, Policy, ServiceRef
from lbprovider.ipam.pool import PoolSpec, validate_pool
from lbprovider.ipam.preview import Displaced, Held, preview_pool_edit
from lbprovider.services.allocations import allocate_service, release_service
from lbprovider.services.audit import record_audit
from lbprovider.services.context import Actor, IPPolicy
from lbprovider.services.errors import (
    EditWouldMoveAllocations,
    InvalidInput,
    NotFound,
    PoolInUse,
    PreconditionFailed,
)
from lbprovider.services.records import request_for_allocation
from lbprovider.services.state import DBStateView, live_reservation, load_pool_specs, pool_spec

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass
class PoolFields:
    """A pool as written by an operator (create) or the fields they change (update)."""

    name: str = ""
    ranges: list[str] = field(default_factory=list)
    auto_assign: bool = True
    avoid_buggy_ips: bool = False
    disabled: bool = False
    priority: int = 100
    namespaces: list[str] = field(default_factory=list)
    namespace_selector: dict[str, str] = field(default_factory=dict)
    service_selector: dict[str, str] = field(default_factory=dict)
    description: str = ""
    exclusions: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Utilisation:
    family: int
    total: int
    used: int
    reserved: int

    @property
    def free(self) -> int:
        return max(self.total - self.used - self.reserved, 0)

    @property
    def percent(self) -> float:
        return 100.0 * (self.used + self.reserved) / self.total if self.total else 0.0


def pool_as_dict(pool: Pool) -> dict[str, Any]:
    """The audit/API view of a pool's definition."""
    return {
        "name": pool.name,
        "ranges": list(pool.ranges),
        "auto_assign": pool.auto_assign,
        "avoid_buggy_ips": pool.avoid_buggy_ips,
        "disabled": pool.disabled,
        "priority": pool.priority,
        "namespaces": list(pool.namespaces),
        "namespace_selector": dict(pool.namespace_selector),
        "service_selector": dict(pool.service_selector),
        "description": pool.description,
        "exclusions": [e.range for e in pool.exclusions],
        "version": pool.version,
    }


def get_pool(*, session: Session, name: str) -> Pool:
    pool = session.scalar(select(Pool).where(Pool.name == name))
    if pool is None:
        raise NotFound(f"pool {name!r} does not exist", field="name")
    return pool


def _spec_from_fields(data: PoolFields) -> PoolSpec:
    return PoolSpec(
        name=data.name,
        ranges=tuple(data.ranges),
        auto_assign=data.auto_assign,
        avoid_buggy_ips=data.avoid_buggy_ips,
        disabled=data.disabled,
        priority=data.priority,
        namespaces=frozenset(data.namespaces),
        namespace_selector=dict(data.namespace_selector),
        service_selector=dict(data.service_selector),
        exclusions=tuple(data.exclusions),
    )


def _validate(session: Session, data: PoolFields) -> PoolSpec:
    if not NAME_RE.match(data.name):
        raise InvalidInput(
            f"pool name {data.name!r} must be a DNS label (a-z, 0-9, '-', at most 63)",
            field="name",
        )
    spec = _spec_from_fields(data)
    others, _ = load_pool_specs(session)
    problems = validate_pool(spec, others)
    if problems:
        field_name = problems[0].partition(": ")[0]
        raise InvalidInput("; ".join(problems), field=field_name or "ranges")
    return spec


def _apply_fields(pool: Pool, data: PoolFields) -> None:
    for f in fields(PoolFields):
        if f.name != "exclusions":
            setattr(pool, f.name, getattr(data, f.name))
    pool.exclusions = [Exclusion(range=r) for r in data.exclusions]


def create_pool(*, session: Session, data: PoolFields, actor: Actor) -> Pool:
    _validate(session, data)
    if session.scalar(select(Pool.id).where(Pool.name == data.name)) is not None:
        raise InvalidInput(f"pool {data.name!r} already exists", field="name")
    pool = Pool()
    _apply_fields(pool, data)
    session.add(pool)
    session.flush()
    record_audit(
        session,
        actor=actor,
        action="pool.create",
        object_type="pool",
        object_id=pool.name,
        after=pool_as_dict(pool),
    )
    return pool


def fields_of(pool: Pool) -> PoolFields:
    d = pool_as_dict(pool)
    return PoolFields(**{f.name: d[f.name] for f in fields(PoolFields)})


def preview_edit(*, session: Session, name: str, data: PoolFields) -> list[Displaced]:
    """The live allocations that ``data`` as the pool's new definition would push out."""
    pool = get_pool(session=session, name=name)
    spec = _validate(session, data)
    held = []
    for row in session.scalars(
        select(Allocation).where(Allocation.active, Allocation.pool_id == pool.id)
    ):
        rec = session.scalar(
            select(ServiceRecord).where(
                ServiceRecord.namespace == row.service_namespace,
                ServiceRecord.name == row.service_name,
            )
        )
        labels = dict(rec.labels) if rec else {}
        ns_labels = dict(rec.options.get("namespace_labels", {})) if rec else {}
        svc = ServiceRef(row.service_namespace, row.service_name, row.service_uid)
        held.append(Held(row.ip, svc, labels, ns_labels))
    return preview_pool_edit(spec, held)


def update_pool(
    *,
    session: Session,
    name: str,
    data: PoolFields,
    actor: Actor,
    policy: IPPolicy,
    if_match: int | None = None,
    force: bool = False,
) -> tuple[Pool, list[Displaced]]:
    """Replace the pool's definition. Refused (409 + preview) when it would move live
    allocations, unless ``force``; then each affected Service is re-allocated."""
    pool = get_pool(session=session, name=name)
    if if_match is not None and if_match != pool.version:
        raise PreconditionFailed(
            f"pool {name!r} is at version {pool.version}, not {if_match}",
            field="If-Match",
            current_version=pool.version,
        )
    if data.name != name:
        raise InvalidInput("a pool cannot be renamed", field="name")
    displaced = preview_edit(session=session, name=name, data=data)
    if displaced and not force:
        raise EditWouldMoveAllocations(
            f"the edit would move {len(displaced)} live allocation(s); confirm with force",
            field="ranges",
            displaced=[_displaced_dict(d) for d in displaced],
        )
    before = pool_as_dict(pool)
    _apply_fields(pool, data)
    pool.version += 1
    session.flush()
    for d in displaced:
        _move(session, d, actor, policy, f"pool {name!r} edited: {d.why}")
    record_audit(
        session,
        actor=actor,
        action="pool.update",
        object_type="pool",
        object_id=name,
        before=before,
        after=pool_as_dict(pool),
    )
    return pool, displaced


def _displaced_dict(d: Displaced) -> dict[str, str]:
    return {"ip": d.ip, "namespace": d.service.namespace, "name": d.service.name, "why": d.why}


def _move(session: Session, d: Displaced, actor: Actor, policy: IPPolicy, why: str) -> None:
    row = session.scalar(
        select(Allocation).where(
            Allocation.active,
            Allocation.ip == d.ip,
            Allocation.service_namespace == d.service.namespace,
            Allocation.service_name == d.service.name,
        )
    )
    if row is None:
        return
    request = request_for_allocation(session, row)
    outcome = allocate_service(
        session=session, request=request, actor=actor, policy=policy, reason=why
    )
    if not outcome.decision.ok:
        release_service(
            session=session,
            namespace=row.service_namespace,
            name=row.service_name,
            actor=actor,
            reason=f"{why}; no address to move to: {outcome.decision.message}",
        )


def delete_pool(*, session: Session, name: str, actor: Actor, force: bool = False) -> None:
    """Delete a pool. Refused while it has allocations or reservations, unless ``force``:
    then they are released (ledger rows) first."""
    pool = get_pool(session=session, name=name)
    live = session.scalars(
        select(Allocation).where(Allocation.active, Allocation.pool_id == pool.id)
    ).all()
    reservations = session.scalars(select(Reservation).where(Reservation.pool_id == pool.id)).all()
    if (live or reservations) and not force:
        raise PoolInUse(
            f"pool {name!r} has {len(live)} allocation(s) and {len(reservations)} "
            "reservation(s); delete with force to release them",
            field="name",
        )
    from lbprovider.services.reservations import delete_reservation

    for svc in sorted({(a.service_namespace, a.service_name) for a in live}):
        release_service(
            session=session,
            namespace=svc[0],
            name=svc[1],
            actor=actor,
            reason=f"pool {name!r} deleted",
        )
    for r in reservations:
        delete_reservation(
            session=session, reservation_id=r.id, actor=actor, reason=f"pool {name!r} deleted"
        )
    before = pool_as_dict(pool)
    session.delete(pool)
    session.flush()
    record_audit(
        session,
        actor=actor,
        action="pool.delete",
        object_type="pool",
        object_id=name,
        before=before,
    )


def pool_query(
    *,
    name: str | None = None,
    family: int | None = None,
    disabled: bool | None = None,
    q: str | None = None,
) -> Select[Pool]:
    stmt = select(Pool)
    if name is not None:
        stmt = stmt.where(Pool.name == name)
    if disabled is not None:
        stmt = stmt.where(Pool.disabled == disabled)
    if q:
        like = f"%{q.lower()}%"
        stmt = stmt.where(
            or_(func.lower(Pool.name).like(like), func.lower(Pool.description).like(like))
        )
    return stmt.order_by(Pool.name)


def filter_family(pools: Sequence[Pool], family: int | None) -> list[Pool]:
    if family is None:
        return list(pools)
    return [p for p in pools if family in pool_spec(p).families]


def utilisation(*, session: Session, pool: Pool) -> list[Utilisation]:
    """Per-family totals, computed from counts and range sizes (an IPv6 /64 is never listed)."""
    spec = pool_spec(pool)
    now = utcnow()
    out = []
    for family in spec.families:
        used = (
            session.scalar(
                select(func.count())
                .select_from(IPLease)
                .where(IPLease.pool_id == pool.id, IPLease.family == family)
            )
            or 0
        )
        leased = select(IPLease.ip).where(IPLease.ip == Reservation.ip).exists()
        reserved = (
            session.scalar(
                select(func.count())
                .select_from(Reservation)
                .where(
                    Reservation.pool_id == pool.id,
                    Reservation.family == family,
                    live_reservation(now),
                    ~leased,
                )
            )
            or 0
        )
        out.append(Utilisation(family, spec.capacity(family), used, reserved))
    return out


def available_ips(
    *, session: Session, name: str, limit: int, policy: IPPolicy, family: int | None = None
) -> list[str]:
    """The next free addresses a new Service would get, without allocating anything."""
    get_pool(session=session, name=name)  # NotFound for an unknown pool
    specs, ids = load_pool_specs(session)
    spec = next(s for s in specs if s.name == name)
    now = utcnow()
    allocator = Allocator(
        specs,
        DBStateView(session, ids, now),
        Policy(now=now, hold=policy.hold, quarantine=policy.quarantine),
    )
    families = [family] if family else list(spec.families)
    out: list[str] = []
    for fam in families:
        out += allocator.available(spec, fam, limit - len(out))
        if len(out) >= limit:
            break
    return out
