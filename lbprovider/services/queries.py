"""Read-side queries the REST API and the dashboard list from: allocations, tokens, fleet hosts.

Each returns a ``Select`` in a stable order so callers can count and page it. Nothing here
writes; the use cases that change rows live in their own modules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, TypeVar

from sqlalchemy import Row, Select, func, select
from sqlalchemy.orm import Session

from lbprovider.db.models import Allocation, ApiToken, AuditEntry, FleetHost, LedgerEntry
from lbprovider.ipam.ranges import ip_key
from lbprovider.services.audit import audit_query
from lbprovider.services.errors import NotFound

T = TypeVar("T")

AllocationState = Literal["active", "released"]


def allocation_query(
    *,
    pool: str | None = None,
    namespace: str | None = None,
    service: str | None = None,
    ip: str | None = None,
    cidr: str | None = None,
    state: AllocationState | None = None,
) -> Select[Allocation]:
    """Allocations matching every given filter, oldest first. ``cidr`` is an index range scan
    over the sortable ``ip_key`` (no address is enumerated)."""
    stmt = select(Allocation)
    for column, value in (
        (Allocation.pool_name, pool),
        (Allocation.service_namespace, namespace),
        (Allocation.service_name, service),
        (Allocation.ip, ip),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if cidr is not None:
        net = ipaddress.ip_network(cidr, strict=False)
        stmt = stmt.where(
            Allocation.ip_key >= ip_key(net.network_address),
            Allocation.ip_key <= ip_key(net.broadcast_address),
        )
    if state is not None:
        stmt = stmt.where(Allocation.active == (state == "active"))
    return stmt.order_by(Allocation.id)


def get_allocation(*, session: Session, allocation_id: int) -> Allocation:
    row = session.get(Allocation, allocation_id)
    if row is None:
        raise NotFound(f"allocation {allocation_id} does not exist", field="id")
    return row


def allocation_history(*, session: Session, allocation: Allocation) -> list[LedgerEntry]:
    """The ledger rows about this address and this Service, oldest first."""
    return list(
        session.scalars(
            select(LedgerEntry)
            .where(
                LedgerEntry.ip == allocation.ip,
                LedgerEntry.service_namespace == allocation.service_namespace,
                LedgerEntry.service_name == allocation.service_name,
            )
            .order_by(LedgerEntry.id)
        )
    )


def token_query() -> Select[ApiToken]:
    return select(ApiToken).order_by(ApiToken.id)


def fleet_host_query(*, enabled: bool | None = None) -> Select[FleetHost]:
    stmt = select(FleetHost)
    if enabled is not None:
        stmt = stmt.where(FleetHost.enabled == enabled)
    return stmt.order_by(FleetHost.name)


TOTAL_COLUMN = "total_rows"


def total_column(stmt: Select[Any]) -> Any:
    """How many rows ``stmt`` matches (ORDER BY dropped), as a column to add to a limited
    statement: an uncorrelated scalar subquery, which both databases evaluate once per
    statement (PostgreSQL as an InitPlan, SQLite caches it), so a page and its total are one
    statement and one round trip instead of two. (``count(*) OVER ()`` would say the same,
    but SQLite materializes and re-sorts the whole list for it: 14 ms against 1 ms for 10,000
    names.)"""
    return count_of(stmt).scalar_subquery().label(TOTAL_COLUMN)


def count_of(stmt: Select[Any]) -> Select[Any]:
    """``SELECT count(*)`` over ``stmt`` without its ORDER BY."""
    return select(func.count()).select_from(stmt.order_by(None).subquery())


class Counted(list[T]):
    """A list that may know how many rows its query matches in all (``total``; None: not
    known, count when needed), for rows folded from a statement's result (several result rows
    per item) that carried ``total_column``."""

    total: int | None = None


def total_in(rows: Sequence[Any]) -> int | None:
    """The ``TOTAL_COLUMN`` the rows carry (``total_column``), or None (no rows, or rows
    without that column). A ``Counted`` list says it itself."""
    if isinstance(rows, Counted):
        return rows.total
    if rows and isinstance(rows[0], Row) and TOTAL_COLUMN in rows[0]._fields:
        return int(rows[0]._mapping[TOTAL_COLUMN])
    return None


def count_rows(session: Session, stmt: Select[Any]) -> int:
    """How many rows ``stmt`` would return (ORDER BY dropped)."""
    return session.scalar(count_of(stmt)) or 0


def page_rows(session: Session, stmt: Select[T], *, limit: int, offset: int) -> Sequence[T]:
    return session.scalars(stmt.limit(limit).offset(offset)).all()


def audit_search(
    *,
    actor: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    request_id: str | None = None,
    ip: str | None = None,
    service: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Select[AuditEntry]:
    """``audit_query`` plus the filters a person asks for: an address (the object a reservation
    or allocation row names) and a Service (``namespace/name``)."""
    stmt = audit_query(
        actor=actor,
        object_type=object_type,
        object_id=object_id,
        request_id=request_id,
        since=since,
        until=until,
    )
    for value in (ip, service):
        if value is not None:
            stmt = stmt.where(AuditEntry.object_id == value)
    return stmt
