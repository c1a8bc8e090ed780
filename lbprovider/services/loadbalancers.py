"""The controller's database steps for one LoadBalancer Service, each a single unit of work.

``converge_service`` mirrors the Service into its record, adopts the addresses already in its
status when the database knows none for it, and allocates; ``adopt_services`` records, before
anything new is allocated, every address Services already show (a restart never changes an IP);
``retire_service`` releases and forgets a Service that is gone or no longer ours.

The caller owns the transaction (``lbprovider.db.session.transaction``). Nothing here talks to
Kubernetes or decides what a Service's status says.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Table, bindparam, insert, select, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from lbprovider.db.driver import DriverStatement, fetch_all
from lbprovider.db.models import Allocation, ReleasedIP, Reservation, ServiceRecord
from lbprovider.db.types import utcnow
from lbprovider.ipam.allocator import Decision, Holder, Occupancy, Reason, Request, ServiceRef
from lbprovider.services.allocations import (
    Outcome,
    active_allocations,
    adopt_service,
    allocate_service,
    release_service,
    steady_outcome,
)
from lbprovider.services.context import Actor, IPPolicy
from lbprovider.services.records import (
    ServiceData,
    delete_service_record,
    get_record,
    record_matches,
    set_condition,
)
from lbprovider.services.state import (
    HeldRow,
    Holdings,
    cached_pool_specs,
    live_reservation,
    load_holdings,
    port_set,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Converged:
    """What a Service holds after ``converge_service`` and what the fleet reported about it."""

    outcome: Outcome
    adopted: Outcome | None
    serving: bool
    serving_message: str


def converge_service(
    *,
    session: Session,
    data: ServiceData,
    request: Request,
    status_ips: Sequence[str],
    actor: Actor,
    policy: IPPolicy,
    recorded: bool = True,
) -> Converged:
    """Mirror, adopt what the status shows when nothing is recorded, then allocate.

    At steady state (the record and the request unchanged, the addresses held) this is three
    reads and no write: the record, the Service's allocations with their occupancy, and the
    pools' change stamp. The record is read and written as a plain row (Core on the table, no
    ORM unit of work), once, after the decision: a new Service's record costs one INSERT
    carrying its condition, a changed one at most one UPDATE (nothing in the allocation reads
    the record).

    ``recorded=False``: the caller knows of no record for the Service (a Service it has not
    seen yet), so the record is not read first: its INSERT, after the decision, is conditional
    (``ON CONFLICT DO NOTHING``); only if a record turns out to exist is it read and updated.
    A new Service thus costs one statement less, and a wrong guess only the read it skipped."""
    record = _read_record(session, data) if recorded else None
    holdings: Holdings | None = load_holdings(session, data.namespace, data.name, utcnow())
    adopted = None
    if _should_adopt(holdings, request, status_ips):
        holdings = None  # adoption writes: allocate_service reads afresh
        adopted = adopt_service(
            session=session,
            request=replace(request, requested_ips=tuple(status_ips)),
            actor=actor,
            policy=policy,
        )
    if adopted is not None and not adopted.decision.ok:
        # Never change an IP a Service already shows: report why it cannot be recorded and
        # leave the status as it is until an operator adds a pool or resolves the conflict.
        outcome = _unadoptable(adopted, status_ips)
    else:
        outcome = allocate_service(
            session=session, request=request, actor=actor, policy=policy, holdings=holdings
        )
    wanted = {
        **vars(data),
        "condition_reason": outcome.reason.value,
        "condition_message": outcome.decision.message,
    }
    if record is None and not recorded:
        if _insert_new_record(session, wanted):
            return Converged(outcome, adopted, False, "")
        record = _read_record(session, data)  # there was one after all
    _write_record(session, record, data, wanted)
    if record is None:
        return Converged(outcome, adopted, False, "")
    return Converged(outcome, adopted, record.serving, record.serving_message)


def _read_record(session: Session, data: ServiceData) -> Any:
    """The record's ``RECORD_STATE`` row, or None."""
    return (
        session.connection()
        .execute(RECORD_STATE_BY_KEY, {"ns": data.namespace, "name": data.name})
        .first()
    )


def _insert_new_record(session: Session, wanted: dict[str, Any]) -> bool:
    """Insert the record unless one exists (then write nothing); whether it was inserted."""
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        params = {k: json.dumps(v) if k in _JSON_FIELDS else v for k, v in wanted.items()}
        return bool(fetch_all(session, INSERT_NEW_RECORD_PG, {**params, "now": utcnow()}))
    return conn.execute(INSERT_NEW_RECORD_SQLITE, wanted).first() is not None


def _write_record(session: Session, record: Any, data: ServiceData, wanted: dict[str, Any]) -> None:
    """Insert the record (``record`` is None) with its condition, or update only the columns
    that differ from ``record`` (a ``RECORD_STATE`` row). Prebuilt statements with parameters:
    building an INSERT per call cost more than running it."""
    if record is None:
        session.connection().execute(INSERT_RECORD, wanted)
        return
    changed = {k: v for k, v in wanted.items() if getattr(record, k) != v}
    if changed:
        session.connection().execute(
            UPDATE_RECORD, {**changed, "_ns": data.namespace, "_name": data.name}
        )


def _should_adopt(holdings: Holdings | None, request: Request, status_ips: Sequence[str]) -> bool:
    """Adopt what the status shows when the database records nothing for the Service, unless
    its annotations explicitly ask for other addresses (then the request wins)."""
    if not status_ips or (holdings is not None and holdings.rows):
        return False
    return not request.requested_ips or set(status_ips) <= set(request.requested_ips)


def _unadoptable(adopted: Outcome, status_ips: Sequence[str]) -> Outcome:
    shown = ", ".join(status_ips)
    message = (
        f"{shown} (already in status) cannot be recorded: {adopted.decision.message}; "
        "the status is left unchanged"
    )
    decision = Decision(adopted.decision.reason, message)
    return Outcome(decision, tuple(status_ips), changed=False)


def held_service_keys(*, session: Session) -> set[str]:
    """``namespace/name`` of every Service holding a live allocation."""
    return {
        f"{ns}/{name}"
        for ns, name in session.execute(
            select(Allocation.service_namespace, Allocation.service_name).where(Allocation.active)
        )
    }


def adopt_services(
    *, session: Session, requests: Sequence[Request], actor: Actor, policy: IPPolicy
) -> dict[str, Outcome]:
    """Adopt ``requested_ips`` (status and foreign annotations) of each request, in order,
    skipping Services the database already knows addresses for. Returns what was attempted."""
    held = {
        (ns, name)
        for ns, name in session.execute(
            select(Allocation.service_namespace, Allocation.service_name).where(Allocation.active)
        )
    }
    results: dict[str, Outcome] = {}
    for request in requests:
        svc = request.service
        if (svc.namespace, svc.name) in held or not request.requested_ips:
            continue
        outcome = adopt_service(session=session, request=request, actor=actor, policy=policy)
        results[svc.key] = outcome
        if outcome.reason is not Reason.SATISFIED:
            logger.warning(
                "could not adopt an address already in status",
                extra={
                    "event": "adopt_failed",
                    "service": svc.key,
                    "ip": ",".join(request.requested_ips),
                    "error": outcome.decision.message,
                },
            )
    return results


def mark_invalid(*, session: Session, namespace: str, name: str, message: str) -> tuple[str, ...]:
    """Record an invalid request on the Service's record; returns what it still holds."""
    set_condition(
        session=session,
        namespace=namespace,
        name=name,
        reason=Reason.INVALID_REQUEST.value,
        message=message,
    )
    return tuple(a.ip for a in active_allocations(session, namespace, name))


def retire_service(
    *, session: Session, namespace: str, name: str, actor: Actor, reason: str
) -> list[str]:
    """Release every address of the Service (ledger says ``reason``) and drop its record."""
    released = release_service(
        session=session, namespace=namespace, name=name, actor=actor, reason=reason
    )
    if get_record(session, namespace, name) is not None:
        delete_service_record(session=session, namespace=namespace, name=name)
    return released


# Plain rows (no ORM identity map): what ``record_matches`` compares, and the condition. Core
# on the table, run on the session's connection: the ORM's execute path (entity columns, ORM
# bulk INSERT) cost as much as the statements themselves on the reconcile path.
_RECORDS: Table = ServiceRecord.__table__  # type: ignore[assignment]
RECORD_STATE = select(
    *(_RECORDS.c[f.name] for f in fields(ServiceData)),
    _RECORDS.c.condition_reason,
    _RECORDS.c.condition_message,
    _RECORDS.c.serving,
    _RECORDS.c.serving_message,
)
RECORD_STATE_BY_KEY = RECORD_STATE.where(
    _RECORDS.c.namespace == bindparam("ns"), _RECORDS.c.name == bindparam("name")
)
INSERT_RECORD = insert(_RECORDS).inline()
# A new Service's record when none is expected (see ``converge_service(recorded=False)``); it
# returns the new row's id, or no row when a record was there (the rowcount of an INSERT is
# not kept by every driver path). On PostgreSQL on the psycopg cursor (``db.driver``): through
# SQLAlchemy's execute layer its parameter processing (six JSON columns) cost more than the
# statement. JSON values go as text cast to jsonb.
_JSON_FIELDS = frozenset(
    f.name for f in fields(ServiceData) if isinstance(_RECORDS.c[f.name].type, JSON)
)
_RECORD_FIELDS = [f.name for f in fields(ServiceData)] + ["condition_reason", "condition_message"]
INSERT_NEW_RECORD_SQLITE = (
    sqlite_insert(_RECORDS)
    .on_conflict_do_nothing(index_elements=["namespace", "name"])
    .returning(_RECORDS.c.id)
)
_RECORD_VALUES = ", ".join(
    f"CAST(:{n} AS jsonb)" if n in _JSON_FIELDS else f":{n}" for n in _RECORD_FIELDS
)
INSERT_NEW_RECORD_PG = DriverStatement(
    text(
        # Column names from ServiceData, values all bound parameters.
        f"""
INSERT INTO service_records ({", ".join(_RECORD_FIELDS)},
    serving, serving_message, created_at, updated_at)
VALUES ({_RECORD_VALUES}, false, '', :now, :now)
ON CONFLICT (namespace, name) DO NOTHING
RETURNING id
"""  # noqa: S608
    )
)
# The SET clause is the parameters given (plus ``updated_at``'s onupdate).
UPDATE_RECORD = update(_RECORDS).where(
    _RECORDS.c.namespace == bindparam("_ns"), _RECORDS.c.name == bindparam("_name")
)


def steady_services(
    *,
    session: Session,
    items: Sequence[tuple[ServiceData, Request]],
    policy: IPPolicy,
    now: datetime | None = None,
) -> dict[str, Converged]:
    """``converge_service`` for many Services at once, read-only: the result of each Service
    that call would leave exactly as it is (record, addresses and condition unchanged, no
    adoption), keyed ``namespace/name``. The others are absent: they need a real reconcile.

    A few bulk reads (records, live allocations, reservations, releases) instead of four
    statements per Service: the start-up pass uses it to skip the Services already converged."""
    now = now or utcnow()
    records = {(r.namespace, r.name): r for r in session.execute(RECORD_STATE)}
    holdings = load_all_holdings(session, now)
    specs = cached_pool_specs(session)
    out: dict[str, Converged] = {}
    for data, request in items:
        rec = records.get((data.namespace, data.name))
        held = holdings.get((data.namespace, data.name))
        if rec is None or held is None or not record_matches(rec, data):
            continue
        outcome = steady_outcome(
            session=session,
            request=request,
            policy=policy,
            now=now,
            holdings=held,
            pool_specs=specs,
        )
        if outcome is None:
            continue
        if (rec.condition_reason, rec.condition_message) != (
            outcome.reason.value,
            outcome.decision.message,
        ):
            continue
        out[f"{data.namespace}/{data.name}"] = Converged(
            outcome, None, rec.serving, rec.serving_message
        )
    return out


def load_all_holdings(session: Session, now: datetime) -> dict[tuple[str, str], Holdings]:
    """``load_holdings`` of every Service holding an address, from three bulk reads."""
    rows = session.execute(
        select(
            Allocation.id,
            Allocation.ip,
            Allocation.pool_id,
            Allocation.pool_name,
            Allocation.family,
            Allocation.service_namespace,
            Allocation.service_name,
            Allocation.service_uid,
            Allocation.sharing_key,
            Allocation.ports,
        )
        .where(Allocation.active)
        .order_by(Allocation.family, Allocation.id)
    ).all()
    reserved = {
        r.ip: r
        for r in session.execute(
            select(
                Reservation.ip,
                Reservation.service_namespace,
                Reservation.service_name,
                Reservation.owner,
            ).where(live_reservation(now))
        )
    }
    released = {
        x.ip: x
        for x in session.execute(
            select(
                ReleasedIP.ip,
                ReleasedIP.service_namespace,
                ReleasedIP.service_name,
                ReleasedIP.released_at,
            )
        )
    }
    holders: dict[str, list[Holder]] = defaultdict(list)
    by_service: dict[tuple[str, str], list[HeldRow]] = defaultdict(list)
    for row in rows:
        ports = list(row.ports or [])
        ref = ServiceRef(row.service_namespace, row.service_name, row.service_uid or "")
        holders[row.ip].append(Holder(ref, row.sharing_key, port_set(ports)))
        by_service[(row.service_namespace, row.service_name)].append(
            HeldRow(
                row.id,
                row.ip,
                row.pool_id,
                row.pool_name,
                row.family,
                row.service_uid or "",
                row.sharing_key,
                ports,
            )
        )
    out: dict[tuple[str, str], Holdings] = {}
    for (namespace, name), held in by_service.items():
        occupancy: dict[str, Occupancy] = {}
        for h in held:
            res, rel = reserved.get(h.ip), released.get(h.ip)
            # The Service's own holding first, as ``load_holdings`` lists it.
            mine = [x for x in holders[h.ip] if x.service.key == f"{namespace}/{name}"]
            others = [x for x in holders[h.ip] if x.service.key != f"{namespace}/{name}"]
            occupancy[h.ip] = Occupancy(
                holders=tuple(mine + others),
                reserved=res is not None,
                reserved_for=f"{res.service_namespace}/{res.service_name}"
                if res is not None and res.service_name
                else None,
                reservation_owner=res.owner or "" if res is not None else "",
                released_at=rel.released_at if rel is not None else None,
                released_by=f"{rel.service_namespace}/{rel.service_name}"
                if rel is not None
                else None,
            )
        out[(namespace, name)] = Holdings(tuple(held), occupancy)
    return out


def known_service_keys(*, session: Session) -> set[str]:
    """``namespace/name`` of every Service with a record or a live allocation."""
    keys = {
        f"{ns}/{name}"
        for ns, name in session.execute(select(ServiceRecord.namespace, ServiceRecord.name))
    }
    keys |= {
        f"{ns}/{name}"
        for ns, name in session.execute(
            select(Allocation.service_namespace, Allocation.service_name).where(Allocation.active)
        )
    }
    return keys


def serving_states(*, session: Session) -> dict[str, tuple[bool, str]]:
    """``namespace/name`` → (serving, serving_message) of every Service record."""
    rows = session.execute(
        select(
            ServiceRecord.namespace,
            ServiceRecord.name,
            ServiceRecord.serving,
            ServiceRecord.serving_message,
        )
    )
    return {f"{ns}/{name}": (bool(serving), msg or "") for ns, name, serving, msg in rows}
