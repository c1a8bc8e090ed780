"""Read-side views of what Kubernetes asked for: LoadBalancer Services with the addresses they
hold (or why they hold none), ExternalName mappings and Ingress routes.

The dashboard lists and pages these; each list is a ``Select`` over one indexed table plus one
batched query for the page's allocations, so a page costs the same with 10 or 10,000 rows.
Nothing here writes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, exists, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, load_only
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from lbprovider.db.models import (
    Allocation,
    ExternalNameMapping,
    IngressRoute,
    LedgerEntry,
    ServiceRecord,
)
from lbprovider.services.errors import NotFound

ServiceState = Literal["pending", "allocated"]
WAITING = "waiting for the controller to decide"


class folded(FunctionElement[str]):
    """A name column for a case-insensitive ``LIKE`` against lower-cased text: ``lower(col)``,
    except on SQLite, whose ``LIKE`` already ignores ASCII case (the only case its ``lower()``
    folds), so the bare column finds the same rows without a ``lower()`` call per row (three times
    the cost of the scan over 10,000 names)."""

    inherit_cache = True
    name = "folded"


@compiles(folded)
def _folded(element: folded, compiler: SQLCompiler, **kw: Any) -> str:
    return f"lower({compiler.process(element.clauses, **kw)})"


@compiles(folded, "sqlite")
def _folded_sqlite(element: folded, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)


class bare(FunctionElement[bool]):
    """A boolean column as a condition, spelled as the bare column on every database.

    SQLAlchemy spells ``Allocation.active`` as ``active = 1`` on SQLite; with no statistics,
    SQLite then walks ``ix_allocations_active_key`` (every live row, 20 ms for 10,000) instead
    of the (namespace, name) index at hand, and ``= 1`` does not match the partial unique
    index's ``WHERE active`` either. The bare column (what PostgreSQL gets anyway) does both."""

    inherit_cache = True
    name = "bare"


@compiles(bare)
def _bare(element: bare, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)


def live() -> ColumnElement[bool]:
    """``Allocation.active``, spelled so that both databases use the right index."""
    return bare(Allocation.active)


def name_contains(column: Any, text: str) -> ColumnElement[bool]:
    """``column`` contains ``text``, ignoring case (``%`` and ``_`` in it are literal)."""
    return folded(column).contains(text.lower(), autoescape=True)


@dataclass(frozen=True)
class ServiceRow:
    """A LoadBalancer Service as an operator reads it: addresses, or ``<pending>`` and why."""

    namespace: str
    name: str
    record: ServiceRecord | None
    allocations: list[Allocation] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ips(self) -> list[str]:
        return [a.ip for a in self.allocations]

    @property
    def pools(self) -> list[str]:
        return sorted({a.pool_name for a in self.allocations})

    @property
    def pending(self) -> bool:
        return not self.allocations

    @property
    def reason(self) -> str:
        if self.record is not None and self.record.condition_reason:
            return self.record.condition_reason
        return "Satisfied" if self.allocations else "Pending"

    @property
    def message(self) -> str:
        if self.record is not None and self.record.condition_message:
            return self.record.condition_message
        return "" if self.allocations else WAITING

    @property
    def ports(self) -> list[str]:
        if self.record is not None and self.record.ports:
            return [_port_text(p) for p in self.record.ports]
        seen = {(str(p[0]), int(p[1])) for a in self.allocations for p in a.ports}
        return [f"{port}/{proto}" for proto, port in sorted(seen, key=lambda x: (x[1], x[0]))]

    @property
    def traffic_policy(self) -> str:
        return self.record.external_traffic_policy if self.record is not None else ""

    @property
    def sharing_key(self) -> str:
        keys = {a.sharing_key for a in self.allocations if a.sharing_key}
        if not keys and self.record is not None:
            keys = {str(self.record.options.get("sharing_key") or "")} - {""}
        return ", ".join(sorted(keys))


def _port_text(port: dict[str, Any]) -> str:
    text = f"{port.get('port')}/{port.get('protocol', 'TCP')}"
    node_port = port.get("nodePort") or port.get("node_port")
    return f"{text} → {node_port}" if node_port else text


def _has_live_allocation() -> Any:
    return exists().where(
        live(),
        Allocation.service_namespace == ServiceRecord.namespace,
        Allocation.service_name == ServiceRecord.name,
    )


def service_query(
    *,
    namespace: str | None = None,
    q: str | None = None,
    pool: str | None = None,
    state: ServiceState | None = None,
    reason: str | None = None,
) -> Select[ServiceRecord]:
    """Service records matching every filter, by namespace then name (the unique index)."""
    stmt = select(ServiceRecord)
    if namespace:
        stmt = stmt.where(ServiceRecord.namespace == namespace)
    if q:
        stmt = stmt.where(name_contains(ServiceRecord.name, q))
    if reason:
        stmt = stmt.where(ServiceRecord.condition_reason == reason)
    if pool:
        stmt = stmt.where(
            exists().where(
                live(),
                Allocation.pool_name == pool,
                Allocation.service_namespace == ServiceRecord.namespace,
                Allocation.service_name == ServiceRecord.name,
            )
        )
    if state == "pending":
        stmt = stmt.where(~_has_live_allocation())
    elif state == "allocated":
        stmt = stmt.where(_has_live_allocation())
    return stmt.order_by(ServiceRecord.namespace, ServiceRecord.name)


LISTED = (
    ServiceRecord.namespace,
    ServiceRecord.name,
    ServiceRecord.ports,
    ServiceRecord.external_traffic_policy,
    ServiceRecord.options,
    ServiceRecord.condition_reason,
    ServiceRecord.condition_message,
)
"""The record columns a ``ServiceRow`` in a list reads (its properties)."""


def listed(stmt: Select[ServiceRecord]) -> Select[ServiceRecord]:
    """``stmt`` loading only the ``LISTED`` columns: a page of 50 records costs a quarter less
    to load (labels, annotations and the rest are JSON decoded per row); any other attribute
    still loads on first use. Not for deep ``OFFSET`` pages: PostgreSQL then prefers sorting
    the narrow rows of the whole table to walking the index."""
    return stmt.options(load_only(*LISTED))


def service_rows(session: Session, records: Sequence[ServiceRecord]) -> list[ServiceRow]:
    """Attach the live allocations of a page of records, in one query."""
    keys = {(r.namespace, r.name) for r in records}
    held: dict[tuple[str, str], list[Allocation]] = defaultdict(list)
    if keys:
        # Two plain IN lists use the (namespace, name) index on both databases; a row-value
        # IN does not on SQLite. The few extra combinations are dropped below.
        rows = session.scalars(
            select(Allocation)
            .where(
                Allocation.service_namespace.in_({k[0] for k in keys}),
                Allocation.service_name.in_({k[1] for k in keys}),
                live(),
            )
            .order_by(Allocation.family, Allocation.ip_key)
        )
        for a in rows:
            if (a.service_namespace, a.service_name) in keys:
                held[(a.service_namespace, a.service_name)].append(a)
    return [ServiceRow(r.namespace, r.name, r, held[(r.namespace, r.name)]) for r in records]


def get_service(*, session: Session, namespace: str, name: str) -> ServiceRow:
    """One Service: its record (if the controller wrote one) and live allocations."""
    record = session.scalar(
        select(ServiceRecord).where(
            ServiceRecord.namespace == namespace, ServiceRecord.name == name
        )
    )
    allocations = list(
        session.scalars(
            select(Allocation)
            .where(
                live(),
                Allocation.service_namespace == namespace,
                Allocation.service_name == name,
            )
            .order_by(Allocation.family)
        )
    )
    if record is None and not allocations and not _ever_known(session, namespace, name):
        raise NotFound(f"no LoadBalancer Service {namespace}/{name} is known", field="name")
    return ServiceRow(namespace, name, record, allocations)


def _ever_known(session: Session, namespace: str, name: str) -> bool:
    return (
        session.scalar(
            select(LedgerEntry.id)
            .where(LedgerEntry.service_namespace == namespace, LedgerEntry.service_name == name)
            .limit(1)
        )
        is not None
    )


def service_events(
    *, session: Session, namespace: str, name: str, limit: int = 50
) -> list[LedgerEntry]:
    """The Service's ledger rows, newest first: its Events-like history."""
    return list(
        session.scalars(
            select(LedgerEntry)
            .where(LedgerEntry.service_namespace == namespace, LedgerEntry.service_name == name)
            .order_by(LedgerEntry.id.desc())
            .limit(limit)
        )
    )


ExternalNameState = Literal["resolves", "nxdomain", "timeout", "error", "unknown", "removed"]
"""The DNS statuses the controller stores (``services.externalnames.DNS_STATUSES``) or removed."""


def external_name_query(
    *, namespace: str | None = None, q: str | None = None, status: str | None = None
) -> Select[ExternalNameMapping]:
    """ExternalName mappings; ``status`` is a DNS status word or ``removed``."""
    stmt = select(ExternalNameMapping)
    if namespace:
        stmt = stmt.where(ExternalNameMapping.namespace == namespace)
    if q:
        stmt = stmt.where(
            or_(
                name_contains(ExternalNameMapping.name, q),
                name_contains(ExternalNameMapping.external_name, q),
            )
        )
    if status == "removed":
        stmt = stmt.where(ExternalNameMapping.removed_at.is_not(None))
    elif status:
        stmt = stmt.where(
            ExternalNameMapping.dns_status == status, ExternalNameMapping.removed_at.is_(None)
        )
    return stmt.order_by(ExternalNameMapping.namespace, ExternalNameMapping.name)


def ingress_route_query(
    *, namespace: str | None = None, q: str | None = None, broken: bool | None = None
) -> Select[IngressRoute]:
    """Ingress routes; ``broken`` True keeps those with an error (no NodePort, ...)."""
    stmt = select(IngressRoute)
    if namespace:
        stmt = stmt.where(IngressRoute.namespace == namespace)
    if q:
        stmt = stmt.where(
            or_(
                name_contains(IngressRoute.host, q),
                name_contains(IngressRoute.ingress_name, q),
                name_contains(IngressRoute.backend_service, q),
            )
        )
    if broken is True:
        stmt = stmt.where(IngressRoute.error != "")
    elif broken is False:
        stmt = stmt.where(IngressRoute.error == "")
    return stmt.order_by(
        IngressRoute.namespace, IngressRoute.ingress_name, IngressRoute.host, IngressRoute.path
    )


def namespaces(session: Session, *, limit: int = 500) -> list[str]:
    """Namespaces that have a Service record (for filter drop-downs)."""
    return list(
        session.scalars(
            select(ServiceRecord.namespace)
            .distinct()
            .order_by(ServiceRecord.namespace)
            .limit(limit)
        )
    )


def pending_query() -> Select[ServiceRecord]:
    """Services with no address, the ones an operator is asked about."""
    return service_query(state="pending")


# The REST API's filters: exact matches on top of the dashboard's queries above.

DnsStatus = Literal["unknown", "resolves", "nxdomain", "timeout", "error"]
"""The words ``lbprovider.services.externalnames`` stores as ``dns_status``."""


def service_search(
    *,
    namespace: str | None = None,
    name: str | None = None,
    pool: str | None = None,
    ip: str | None = None,
    state: ServiceState | None = None,
    reason: str | None = None,
    q: str | None = None,
) -> Select[ServiceRecord]:
    """``service_query`` plus an exact ``name`` and an address (canonical text) the Service
    holds now; same order (namespace, name)."""
    stmt = service_query(namespace=namespace, q=q, pool=pool, state=state, reason=reason)
    if name:
        stmt = stmt.where(ServiceRecord.name == name)
    if ip:
        stmt = stmt.where(
            exists().where(
                live(),
                Allocation.ip == ip,
                Allocation.service_namespace == ServiceRecord.namespace,
                Allocation.service_name == ServiceRecord.name,
            )
        )
    return stmt


@dataclass(frozen=True)
class ServiceDetail:
    """One Service and its ledger rows, newest first."""

    service: ServiceRow
    events: list[LedgerEntry]


def service_detail(
    *, session: Session, namespace: str, name: str, limit: int = 50
) -> ServiceDetail:
    """``get_service`` (NotFound for a Service never seen) with ``service_events``."""
    row = get_service(session=session, namespace=namespace, name=name)
    events = service_events(session=session, namespace=namespace, name=name, limit=limit)
    return ServiceDetail(row, events)


def external_name_search(
    *,
    namespace: str | None = None,
    dns_status: DnsStatus | None = None,
    removed: bool | None = None,
    q: str | None = None,
) -> Select[ExternalNameMapping]:
    """ExternalName mappings by DNS status and removed or not (independent filters), by
    namespace then name."""
    stmt = external_name_query(namespace=namespace, q=q)
    if dns_status is not None:
        stmt = stmt.where(ExternalNameMapping.dns_status == dns_status)
    if removed is True:
        stmt = stmt.where(ExternalNameMapping.removed_at.is_not(None))
    elif removed is False:
        stmt = stmt.where(ExternalNameMapping.removed_at.is_(None))
    return stmt


def ingress_route_search(
    *,
    namespace: str | None = None,
    host: str | None = None,
    ingress: str | None = None,
    has_error: bool | None = None,
    q: str | None = None,
) -> Select[IngressRoute]:
    """``ingress_route_query`` plus an exact host (``""`` is the catch-all rule) and Ingress
    name; ordered by namespace, Ingress, host, path, then id."""
    stmt = ingress_route_query(namespace=namespace, q=q, broken=has_error)
    if host is not None:
        stmt = stmt.where(IngressRoute.host == host)
    if ingress:
        stmt = stmt.where(IngressRoute.ingress_name == ingress)
    return stmt.order_by(IngressRoute.id)
