"""Append-only records: the address ledger and the audit log of every write."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from lbprovider.db.models import AuditEntry, LedgerEntry
from lbprovider.services.context import Actor

LEDGER_ACTIONS = ("allocated", "released", "adopted", "reassigned", "reserved", "unreserved")


def record_ledger(
    session: Session,
    *,
    actor: Actor,
    ip: str,
    action: str,
    reason: str,
    pool: str = "",
    namespace: str = "",
    name: str = "",
) -> None:
    assert action in LEDGER_ACTIONS, action
    session.add(
        LedgerEntry(
            ip=ip,
            pool=pool,
            service_namespace=namespace,
            service_name=name,
            action=action,
            reason=reason,
            actor=actor.name,
            request_id=actor.request_id,
        )
    )


def record_audit(
    session: Session,
    *,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEntry(
            actor=actor.name,
            action=action,
            object_type=object_type,
            object_id=object_id,
            request_id=actor.request_id,
            before=before,
            after=after,
        )
    )


def ledger_query(
    *,
    ip: str | None = None,
    namespace: str | None = None,
    name: str | None = None,
    pool: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Select[LedgerEntry]:
    """Ledger rows matching every given filter, newest first."""
    q = select(LedgerEntry)
    for column, value in (
        (LedgerEntry.ip, ip),
        (LedgerEntry.service_namespace, namespace),
        (LedgerEntry.service_name, name),
        (LedgerEntry.pool, pool),
        (LedgerEntry.actor, actor),
        (LedgerEntry.action, action),
    ):
        if value is not None:
            q = q.where(column == value)
    if since is not None:
        q = q.where(LedgerEntry.at >= since)
    if until is not None:
        q = q.where(LedgerEntry.at < until)
    return q.order_by(LedgerEntry.id.desc())


def audit_query(
    *,
    actor: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    request_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Select[AuditEntry]:
    q = select(AuditEntry)
    for column, value in (
        (AuditEntry.actor, actor),
        (AuditEntry.object_type, object_type),
        (AuditEntry.object_id, object_id),
        (AuditEntry.request_id, request_id),
    ):
        if value is not None:
            q = q.where(column == value)
    if since is not None:
        q = q.where(AuditEntry.at >= since)
    if until is not None:
        q = q.where(AuditEntry.at < until)
    return q.order_by(AuditEntry.id.desc())
