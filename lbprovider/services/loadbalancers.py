"""The controller's database steps for one LoadBalancer Service, each a single unit of work.

``converge_service`` mirrors the Service into its record, adopts the addresses already in its
status when the database knows none for it, and allocates; ``adopt_services`` records, before
anything new is allocated, every address Services already show (a restart never changes an IP);
``retire_service`` releases and forgets a Service that is gone or no longer ours.

The caller owns the transaction (``lbprovider.db.session.transaction``). Nothing here talks to
Kubernetes or decides what a Service's status says.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from lbprovider.db.models import Allocation, ServiceRecord
from lbprovider.db.types import utcnow
from lbprovider.ipam.allocator import Decision, Reason, Request
from lbprovider.services.allocations import (
    Outcome,
    active_allocations,
    adopt_service,
    allocate_service,
    release_service,
)
from lbprovider.services.context import Actor, IPPolicy
from lbprovider.services.records import (
    ServiceData,
    delete_service_record,
    get_record,
    set_condition,
    upsert_service_record,
)
from lbprovider.services.state import Holdings, load_holdings

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
) -> Converged:
    """Mirror, adopt what the status shows when nothing is recorded, then allocate.

    At steady state (the record and the request unchanged, the addresses held) this is three
    reads and no write: the record, the Service's allocations with their occupancy, and the
    pools' change stamp."""
    record = upsert_service_record(session=session, data=data)
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
    set_condition(
        session=session,
        namespace=data.namespace,
        name=data.name,
        reason=outcome.reason.value,
        message=outcome.decision.message,
        record=record,
    )
    return Converged(outcome, adopted, record.serving, record.serving_message)


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
