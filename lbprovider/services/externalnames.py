"""ExternalName Services recorded for the fleet: target name, ports and whether it resolves.

The controller records the mapping on every change and marks it removed (kept as history) when
the Service goes; a separate checker refreshes the DNS status off the reconcile path through
``names_due_for_check`` and ``set_dns_status``. Nothing here resolves names or reads Kubernetes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from lbprovider.db.models import ExternalNameMapping
from lbprovider.db.types import utcnow

DNS_STATUSES = ("unknown", "resolves", "nxdomain", "timeout", "error")


@dataclass(frozen=True)
class DueName:
    namespace: str
    name: str
    external_name: str


def _get(session: Session, namespace: str, name: str) -> ExternalNameMapping | None:
    return session.scalar(
        select(ExternalNameMapping).where(
            ExternalNameMapping.namespace == namespace, ExternalNameMapping.name == name
        )
    )


def upsert_external_name(
    *, session: Session, namespace: str, name: str, external_name: str, ports: list[Any]
) -> bool:
    """Record (or revive) the mapping; a new target resets its DNS status. True if changed."""
    row = _get(session, namespace, name)
    if row is None:
        row = ExternalNameMapping(namespace=namespace, name=name, external_name=external_name)
        session.add(row)
        row.ports = ports
        session.flush()
        return True
    changed = False
    if row.external_name != external_name:
        row.external_name = external_name
        row.dns_status, row.dns_addresses, row.dns_checked_at = "unknown", [], None
        changed = True
    if row.ports != ports:
        row.ports = ports
        changed = True
    if row.removed_at is not None:
        row.removed_at = None
        changed = True
    return changed


def mark_external_name_removed(
    *, session: Session, namespace: str, name: str, now: datetime | None = None
) -> bool:
    """The Service is gone or no longer ExternalName: keep the row, stamp ``removed_at``."""
    row = _get(session, namespace, name)
    if row is None or row.removed_at is not None:
        return False
    row.removed_at = now or utcnow()
    return True


def live_external_names(*, session: Session) -> set[str]:
    """``namespace/name`` of every mapping not marked removed."""
    rows = session.execute(
        select(ExternalNameMapping.namespace, ExternalNameMapping.name).where(
            ExternalNameMapping.removed_at.is_(None)
        )
    )
    return {f"{ns}/{name}" for ns, name in rows}


def names_due_for_check(
    *, session: Session, checked_before: datetime, limit: int = 100
) -> list[DueName]:
    """Live mappings never checked, or last checked before ``checked_before``, oldest first."""
    rows = session.scalars(
        select(ExternalNameMapping)
        .where(
            ExternalNameMapping.removed_at.is_(None),
            or_(
                ExternalNameMapping.dns_checked_at.is_(None),
                ExternalNameMapping.dns_checked_at < checked_before,
            ),
        )
        .order_by(
            ExternalNameMapping.dns_checked_at.is_not(None), ExternalNameMapping.dns_checked_at
        )
        .limit(limit)
    )
    return [DueName(r.namespace, r.name, r.external_name) for r in rows]


def set_dns_status(
    *,
    session: Session,
    namespace: str,
    name: str,
    external_name: str,
    status: str,
    addresses: list[str],
    checked_at: datetime | None = None,
) -> bool:
    """Store a check's result unless the mapping's target changed meanwhile."""
    assert status in DNS_STATUSES, status
    row = _get(session, namespace, name)
    if row is None or row.external_name != external_name:
        return False
    row.dns_status = status
    row.dns_addresses = addresses
    row.dns_checked_at = checked_at or utcnow()
    return True


def get_external_name(*, session: Session, namespace: str, name: str) -> ExternalNameMapping | None:
    return _get(session, namespace, name)
