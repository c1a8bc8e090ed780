"""Read-side views of what Kubernetes asked for: LoadBalancer Services with the addresses they
hold (or why they hold none), ExternalName mappings and Ingress routes.

The dashboard lists and pages these; each list is a ``Select`` over one indexed table, the
page's live allocations left-joined in the same statement, so a page costs the same with 10
or 10,000 rows.
Nothing here writes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, NamedTuple, Protocol

from sqlalchemy import (
    ColumnElement,
    Integer,
    Row,
    Select,
    String,
    Subquery,
    and_,
    bindparam,
    exists,
    func,
    literal_column,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
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
from lbprovider.services.queries import TOTAL_COLUMN, Counted, count_of, total_in

ServiceState = Literal["pending", "allocated"]
WAITING = "waiting for the controller to decide"


class folded_like(FunctionElement[bool]):
    """``folded_like(column, pattern)``: ``column`` matches the lower-case ``LIKE`` pattern
    ignoring case (escape character ``/``), spelled per database so an index can serve it:
    ``column ILIKE pattern`` on PostgreSQL (which folds both sides with ``lower()``, the same
    rule as ``lower(column) LIKE pattern``; pg_trgm's GIN indexes on the name columns serve
    it), the bare ``column LIKE pattern`` on SQLite (its ``LIKE`` already ignores ASCII case,
    the only case its ``lower()`` folds), ``lower(column) LIKE pattern`` elsewhere."""

    inherit_cache = True
    name = "folded_like"


def _like_parts(element: folded_like, compiler: SQLCompiler, **kw: Any) -> tuple[str, str]:
    column, pattern = element.clauses.clauses
    return compiler.process(column, **kw), compiler.process(pattern, **kw)


class folded_scan(folded_like):
    """``folded_like`` for a pattern too short for trigrams (under three characters between the
    wildcards): no index serves it, and a scan compares ``lower(column) LIKE`` faster than
    ``ILIKE`` (14 against 21 ms over 10,000 names on PostgreSQL)."""

    inherit_cache = True
    name = "folded_scan"


@compiles(folded_like)
@compiles(folded_scan)
@compiles(folded_scan, "postgresql")
def _folded_like(element: folded_like, compiler: SQLCompiler, **kw: Any) -> str:
    column, pattern = _like_parts(element, compiler, **kw)
    return f"lower({column}) LIKE {pattern} ESCAPE '/'"


@compiles(folded_like, "postgresql")
def _folded_like_pg(element: folded_like, compiler: SQLCompiler, **kw: Any) -> str:
    column, pattern = _like_parts(element, compiler, **kw)
    return f"{column} ILIKE {pattern} ESCAPE '/'"


@compiles(folded_like, "sqlite")
@compiles(folded_scan, "sqlite")
def _folded_like_sqlite(element: folded_like, compiler: SQLCompiler, **kw: Any) -> str:
    column, pattern = _like_parts(element, compiler, **kw)
    return f"{column} LIKE {pattern} ESCAPE '/'"


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


def like_escaped(text: str) -> str:
    """``text`` for a ``LIKE`` pattern with escape character ``/`` (``%`` and ``_`` literal)."""
    return text.replace("/", "//").replace("%", "/%").replace("_", "/_")


def contains_pattern(text: str) -> str:
    """The pattern ``name_like`` takes for "contains ``text``, ignoring case"."""
    return f"%{like_escaped(text.lower())}%"


def name_like(column: Any, pattern: Any, *, short: bool) -> ColumnElement[bool]:
    """``column`` matches ``pattern`` (a ``contains_pattern``, as a value or a bind
    parameter) ignoring case; ``short``: the text is under three characters (no trigram)."""
    return (folded_scan if short else folded_like)(column, pattern)


def name_contains(column: Any, text: str) -> ColumnElement[bool]:
    """``column`` contains ``text``, ignoring case (``%`` and ``_`` in it are literal). The
    pattern is one bound value (not ``'%' || :text || '%'``), so PostgreSQL plans it with the
    trigram index."""
    return name_like(column, contains_pattern(text), short=len(text) < 3)


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
        return _reason(self.record.condition_reason if self.record else None, self.allocations)

    @property
    def message(self) -> str:
        return _message(self.record.condition_message if self.record else None, self.allocations)

    @property
    def ports(self) -> list[str]:
        return _ports(self.record.ports if self.record else None, self.allocations)

    @property
    def traffic_policy(self) -> str:
        return self.record.external_traffic_policy if self.record is not None else ""

    @property
    def sharing_key(self) -> str:
        return _sharing_key(self.record.options if self.record else None, self.allocations)


class Held(Protocol):
    """What the list rules read of an allocation (an ``Allocation``, a ``HeldColumns``, a
    ``search.SHOWN_ALLOCATION`` row)."""

    @property
    def ip(self) -> str: ...
    @property
    def pool_name(self) -> str: ...
    @property
    def ports(self) -> list[Any]: ...
    @property
    def sharing_key(self) -> str | None: ...


def _reason(condition_reason: str | None, held: Sequence[Held]) -> str:
    if condition_reason:
        return condition_reason
    return "Satisfied" if held else "Pending"


def _message(condition_message: str | None, held: Sequence[Held]) -> str:
    if condition_message:
        return condition_message
    return "" if held else WAITING


def _ports(record_ports: list[dict[str, Any]] | None, held: Sequence[Held]) -> list[str]:
    if record_ports:
        return [_port_text(p) for p in record_ports]
    seen = {(str(p[0]), int(p[1])) for a in held for p in a.ports}
    return [f"{port}/{proto}" for proto, port in sorted(seen, key=lambda x: (x[1], x[0]))]


def _sharing_key(options: dict[str, Any] | None, held: Sequence[Held]) -> str:
    keys = {a.sharing_key for a in held if a.sharing_key}
    if not keys and options is not None:
        keys = {str(options.get("sharing_key") or "")} - {""}
    return ", ".join(sorted(keys))


@dataclass(frozen=True, slots=True)
class ServiceLine:
    """One line of a Service list (the Services page, the search's Services section): what a
    ``ServiceRow`` shows, by the same rules, computed once from plain column values. A list
    page builds 50 of these from Core rows instead of loading 50 records and their allocations
    as ORM objects (identity map, instance state, cyclic garbage: most of a page's time)."""

    namespace: str
    name: str
    ips: list[str]
    pools: list[str]
    ports: list[str]
    traffic_policy: str
    sharing_key: str
    reason: str
    message: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def pending(self) -> bool:
        return not self.ips

    @classmethod
    def of(cls, namespace: str, name: str, record: Any | None, held: Sequence[Held]) -> ServiceLine:
        """``record``: a row with the ``LISTED`` columns, or None (no record written yet)."""
        return cls(
            namespace=namespace,
            name=name,
            ips=[a.ip for a in held],
            pools=sorted({a.pool_name for a in held}),
            ports=_ports(record.ports if record is not None else None, held),
            traffic_policy=record.external_traffic_policy if record is not None else "",
            sharing_key=_sharing_key(record.options if record is not None else None, held),
            reason=_reason(record.condition_reason if record is not None else None, held),
            message=_message(record.condition_message if record is not None else None, held),
        )


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
    return _filtered(
        namespace=namespace or None,
        pattern=contains_pattern(q) if q else None,
        short=bool(q) and len(q or "") < 3,
        pool=pool or None,
        state=state,
        reason=reason or None,
    )


def _filtered(
    *,
    namespace: Any,
    pattern: Any,
    short: bool,
    pool: Any,
    state: ServiceState | None,
    reason: Any,
) -> Select[ServiceRecord]:
    """``service_query`` with each filter a value or a bind parameter (None: no filter);
    ``pattern`` a ``contains_pattern``."""
    stmt = select(ServiceRecord)
    if namespace is not None:
        stmt = stmt.where(ServiceRecord.namespace == namespace)
    if pattern is not None:
        stmt = stmt.where(name_like(ServiceRecord.name, pattern, short=short))
    if reason is not None:
        stmt = stmt.where(ServiceRecord.condition_reason == reason)
    if pool is not None:
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
"""The record columns a ``ServiceLine`` reads."""


def listed(stmt: Select[ServiceRecord]) -> Select[Any]:
    """``stmt`` (records, any filters and order) selecting only the ``LISTED`` columns, as
    Core rows: labels, annotations and the rest are not read, no ORM object is built."""
    return stmt.with_only_columns(*LISTED)


HELD = (
    Allocation.ip.label("held_ip"),
    Allocation.pool_name.label("held_pool"),
    Allocation.ports.label("held_ports"),
    Allocation.sharing_key.label("held_sharing_key"),
)
"""The allocation columns a ``ServiceLine`` reads, as joined onto ``LISTED`` rows."""


class HeldColumns(NamedTuple):
    """One live allocation as ``HELD`` reads it (the ``Held`` a ``ServiceLine`` takes)."""

    ip: str
    pool_name: str
    ports: list[Any]
    sharing_key: str | None


def _held_join(namespace: Any, name: Any) -> ColumnElement[bool]:
    return and_(live(), Allocation.service_namespace == namespace, Allocation.service_name == name)


def with_held(page: Subquery) -> Select[Any]:
    """``page`` (a subquery of ``LISTED`` rows, in order) with each row's live allocations
    left-joined: one statement for a list and its addresses instead of two (the second was a
    round trip on PostgreSQL and a statement's worth of Python on both). A Service with two
    addresses is two rows, one without any is one row with NULL ``HELD`` columns;
    ``grouped_lines`` folds them back."""
    return (
        select(page, *HELD)
        .outerjoin(Allocation, _held_join(page.c.namespace, page.c.name))
        .order_by(page.c.namespace, page.c.name, Allocation.family, Allocation.ip_key)
    )


def grouped_lines(rows: Iterable[Row[Any]]) -> Counted[ServiceLine]:
    """``ServiceLine``s of ``with_held`` rows (ordered by namespace, name), with the total
    they carry (``queries.total_column``), if any."""
    lines: Counted[ServiceLine] = Counted()
    record: Row[Any] | None = None
    held: list[HeldColumns] = []
    for row in rows:
        if record is None or row.name != record.name or row.namespace != record.namespace:
            if record is not None:
                lines.append(ServiceLine.of(record.namespace, record.name, record, held))
            else:
                lines.total = total_in([row])
            record, held = row, []
        if row.held_ip is not None:
            held.append(
                HeldColumns(row.held_ip, row.held_pool, row.held_ports, row.held_sharing_key)
            )
    if record is not None:
        lines.append(ServiceLine.of(record.namespace, record.name, record, held))
    return lines


QueryLength = Literal["", "short", "long"]
"""A name filter's shape: none, under three characters (no trigram), or longer."""


class ServiceList(NamedTuple):
    """The Services page's statements for one shape of filters (``service_list``)."""

    page: Select[Any]
    """The page's ``ServiceLine`` rows (``with_held``), on PostgreSQL with the total."""
    matches: Select[Any]
    """How many Services match (SQLite, or a PostgreSQL page past the end)."""


@lru_cache(maxsize=64)
def service_list(
    *,
    namespace: bool,
    q: QueryLength,
    pool: bool,
    state: ServiceState | None,
    reason: bool,
    postgresql: bool,
) -> ServiceList:
    """The Services page's statements for one shape of filters, built once per process with
    bound parameters (``namespace``, ``pattern``, ``pool``, ``reason``; ``offset``, ``limit``),
    so a request neither rebuilds them (operators, coercions, subqueries: most of the objects a
    page left to the cyclic GC) nor recomputes their cache key (see ``service_lines``).

    The page's keys come first from the (namespace, name) index alone (an index-only walk past
    ``offset`` entries), then only those rows are read: PostgreSQL otherwise either fetches
    every skipped row from the heap (wide rows, 6 ms at offset 9,950) or sorts the whole table
    (narrow rows, 35 ms). On PostgreSQL each key's record is a ``LATERAL`` lookup (kept
    apart by its ``LIMIT 1``; the key is unique), and ``limit`` is rendered into the SQL text
    (one of a few values) rather than sent: psycopg prepares a statement after five runs on a
    connection, PostgreSQL may then run its generic plan, and for ``LIMIT $1`` that plan
    assumed 1,000 keys and hash-joined them to a sequential scan of every record (5.5 against
    1.9 ms at 10,000). A lateral lookup is a nested loop of index scans in every plan, and
    with the limit known the generic plan is as cheap as a custom one, so PostgreSQL keeps it
    instead of planning every request anew. On PostgreSQL every row also carries the list's
    total (counted once, ``_page_keys``, which also walks a late page from the index's end):
    one round trip instead of two, and the count is an index-only scan. SQLite has no round
    trip to save, and the subquery would count even a page that is the whole list (a partial
    page needs no count), so there ``matches`` runs only when needed."""
    stmt = _filtered(
        namespace=bindparam("namespace", type_=String) if namespace else None,
        pattern=bindparam("pattern", type_=String) if q else None,
        short=q == "short",
        pool=bindparam("pool", type_=String) if pool else None,
        state=state,
        reason=bindparam("reason", type_=String) if reason else None,
    )
    limit = bindparam("limit", type_=Integer, literal_execute=True)
    offset = bindparam("offset", type_=Integer)
    walk = stmt.with_only_columns(ServiceRecord.namespace, ServiceRecord.name)
    page: Select[Any]
    if postgresql:
        keys = _page_keys(stmt, walk, limit, offset)
        record = (
            select(*LISTED)
            .where(ServiceRecord.namespace == keys.c.namespace, ServiceRecord.name == keys.c.name)
            .limit(literal_column("1"))  # a subquery with a LIMIT is not pulled up
            .lateral()
        )
        page = select(*record.c, keys.c[TOTAL_COLUMN]).select_from(keys.join(record, true()))
    else:
        keys = walk.limit(limit).offset(offset).subquery()
        page = select(*LISTED).join(
            keys,
            (ServiceRecord.namespace == keys.c.namespace) & (ServiceRecord.name == keys.c.name),
        )
    return ServiceList(with_held(page.subquery()), count_of(stmt))


def _page_keys(
    stmt: Select[ServiceRecord], walk: Select[str, str], limit: Any, offset: Any
) -> Subquery:
    """PostgreSQL: the (namespace, name) keys of the page at ``offset``, each with the list's
    total (``TOTAL_COLUMN``), walking the index from whichever end is nearer.

    The total is counted once (a CTE) and decides, inside the statement, which of two walks
    runs (the other is a one-time filter that is never executed): a page in the first half is
    ``OFFSET offset`` in index order; a page in the second half walks the index backwards past
    ``total - offset - limit`` entries and takes ``least(limit, total - offset)``, the same
    rows (``with_held`` orders them). The last page of 10,000 is then a walk of 50 entries
    instead of 10,000; a page past the end is empty either way."""
    total = select(func.count().label("n")).select_from(stmt.order_by(None).subquery()).cte("total")
    n = select(total.c.n).scalar_subquery()
    zero, two = literal_column("0", Integer), literal_column("2", Integer)
    forward = walk.limit(limit).offset(offset).subquery("forward")
    backward = (
        walk.order_by(None)
        .order_by(ServiceRecord.namespace.desc(), ServiceRecord.name.desc())
        .limit(func.greatest(func.least(limit, n - offset), zero))
        .offset(func.greatest(n - offset - limit, zero))
        .subquery("backward")
    )
    return select(
        union_all(
            select(forward.c.namespace, forward.c.name).where(offset * two < n),
            select(backward.c.namespace, backward.c.name).where(offset * two >= n),
        ).subquery("keys"),
        n.label(TOTAL_COLUMN),
    ).subquery("counted")


def service_lines(
    session: Session,
    *,
    limit: int,
    offset: int,
    namespace: str | None = None,
    q: str | None = None,
    pool: str | None = None,
    state: ServiceState | None = None,
    reason: str | None = None,
) -> tuple[list[ServiceLine], int]:
    """One page of ``service_query(...)`` (by namespace, name) as ``ServiceLine``s, their live
    allocations joined in the same statement (``with_held``), and how many Services match in
    all (exact). The statements are ``service_list``'s for these filters' shape, run as Core
    statements on the session's connection (no ORM result layer for plain columns)."""
    lists = service_list(
        namespace=bool(namespace),
        q=("short" if len(q) < 3 else "long") if q else "",
        pool=bool(pool),
        state=state,
        reason=bool(reason),
        postgresql=session.get_bind().dialect.name == "postgresql",
    )
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if namespace:
        params["namespace"] = namespace
    if q:
        params["pattern"] = contains_pattern(q)
    if pool:
        params["pool"] = pool
    if reason:
        params["reason"] = reason
    connection = session.connection()
    lines = grouped_lines(connection.execute(lists.page, params))
    total = lines.total
    if total is None:
        if offset or len(lines) >= limit:
            total = connection.execute(lists.matches, params).scalar() or 0
        else:
            total = len(lines)
    return lines, total


def _held_query(keys: set[tuple[str, str]], columns: Sequence[Any]) -> Select[Any]:
    # Two plain IN lists use the (namespace, name) index on both databases; a row-value IN
    # does not on SQLite. The callers drop the few extra combinations.
    return (
        select(*columns)
        .where(
            Allocation.service_namespace.in_({k[0] for k in keys}),
            Allocation.service_name.in_({k[1] for k in keys}),
            live(),
        )
        .order_by(Allocation.family, Allocation.ip_key)
    )


def service_rows(session: Session, records: Sequence[ServiceRecord]) -> list[ServiceRow]:
    """Attach the live allocations of a page of records, in one query."""
    keys = {(r.namespace, r.name) for r in records}
    held: dict[tuple[str, str], list[Allocation]] = defaultdict(list)
    if keys:
        for a in session.scalars(_held_query(keys, [Allocation])):
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
