"""One search box across pools, allocations, reservations, ExternalName mappings and Ingress
routes: an operator types an IP, a CIDR, ``namespace/name``, a Service name or a namespace.

The query's shape decides the lookups: an address or a network uses the sortable ``ip_key``
indexes (no address is enumerated); a word matches Service and namespace names. Every section
is capped at ``limit`` rows and says how many more there were. Reads only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Literal

from sqlalchemy import Select, String, bindparam, cast, func, or_, select, union_all
from sqlalchemy.orm import Session

from lbprovider.db.models import (
    Allocation,
    ExternalNameMapping,
    IngressRoute,
    Pool,
    Reservation,
    ServiceRecord,
)
from lbprovider.ipam.ranges import IPRange, ip_key, parse_ranges
from lbprovider.services.catalog import (
    ServiceLine,
    contains_pattern,
    grouped_lines,
    like_escaped,
    listed,
    live,
    name_like,
    with_held,
)
from lbprovider.services.queries import count_of, count_rows, total_column, total_in

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
QueryKind = Literal["ip", "cidr", "service", "word", "empty"]
MAX_QUERY = 253


@dataclass
class Section:
    rows: list[Any] = field(default_factory=list)
    total: int = 0

    @property
    def more(self) -> int:
        return max(self.total - len(self.rows), 0)


@dataclass
class SearchResult:
    query: str
    kind: QueryKind
    pools: Section = field(default_factory=Section)
    services: Section = field(default_factory=Section)
    allocations: Section = field(default_factory=Section)
    reservations: Section = field(default_factory=Section)
    external_names: Section = field(default_factory=Section)
    ingress_routes: Section = field(default_factory=Section)

    @property
    def total(self) -> int:
        return sum(
            s.total
            for s in (
                self.pools,
                self.services,
                self.allocations,
                self.reservations,
                self.external_names,
                self.ingress_routes,
            )
        )


def classify(query: str) -> tuple[QueryKind, str]:
    """What the text is, and its canonical spelling (addresses and networks normalised)."""
    text = query.strip()[:MAX_QUERY]
    if not text:
        return "empty", ""
    try:
        return "ip", str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if "/" in text:
        try:
            return "cidr", str(ipaddress.ip_network(text, strict=False))
        except ValueError:
            return "service", text
    return "word", text


def search(*, session: Session, query: str, limit: int = 25) -> SearchResult:
    kind, text = classify(query)
    result = SearchResult(query=text, kind=kind)
    if kind in ("ip", "cidr"):
        _search_network(session, result, ipaddress.ip_network(text), limit)
    elif kind == "service":
        namespace, _, name = text.partition("/")
        _search_names(session, result, limit, namespace=namespace, name=name)
    elif kind == "word":
        _search_names(session, result, limit, word=text)
    return result


SHOWN_ALLOCATION = (
    Allocation.ip,
    Allocation.service_namespace,
    Allocation.service_name,
    Allocation.pool_name,
    Allocation.active,
    Allocation.allocated_at,
    Allocation.released_at,
    Allocation.ports,
    Allocation.sharing_key,
    Allocation.family,
)
"""What the Allocations section shows (and a ``ServiceLine`` without a record reads)."""


def _section(session: Session, stmt: Select[Any], limit: int, *, columns: bool = False) -> Section:
    """Up to ``limit`` rows of ``stmt`` (its entities, or Core rows for ``columns``) and how
    many there are in all."""
    result = session.execute(stmt.limit(limit))
    rows = list(result if columns else result.scalars())
    total = len(rows) if len(rows) < limit else count_rows(session, stmt)
    return Section(rows, total)


def _search_network(session: Session, result: SearchResult, net: IPNetwork, limit: int) -> None:
    low, high = ip_key(net.network_address), ip_key(net.broadcast_address)
    single = str(net.network_address) if net.num_addresses == 1 else None
    # One address: the unique/indexed ``ip`` columns; a network: the sortable key range.
    in_alloc = (
        Allocation.ip == single
        if single
        else (Allocation.ip_key >= low) & (Allocation.ip_key <= high)
    )
    allocations = (
        select(*SHOWN_ALLOCATION)
        .where(in_alloc)
        .order_by(Allocation.active.desc(), Allocation.ip_key, Allocation.id.desc())
    )
    result.allocations = _section(session, allocations, limit, columns=True)
    in_res = (
        Reservation.ip == single
        if single
        else (Reservation.ip_key >= low) & (Reservation.ip_key <= high)
    )
    reservations = select(Reservation).where(in_res).order_by(Reservation.ip_key)
    result.reservations = _section(session, reservations, limit)
    wanted = IPRange(int(net.network_address), int(net.broadcast_address), net.version)
    # A pool holds the network when its ranges overlap it (exclusions do not change what the
    # pool covers), so only the ranges are parsed: building the allocator's ``PoolSpec`` also
    # lazy-loaded each pool's exclusions, one more statement per pool for nothing.
    pools = [
        p
        for p in session.scalars(select(Pool).order_by(Pool.name))
        if parse_ranges(p.ranges)[net.version].overlaps(wanted)
    ]
    result.pools = Section(pools[:limit], len(pools))
    result.services = _services_holding(session, result.allocations.rows, limit)
    if net.num_addresses == 1:
        ip = str(net.network_address)
        result.external_names = _section(
            session,
            select(ExternalNameMapping)
            .where(cast(ExternalNameMapping.dns_addresses, String).contains(f'"{ip}"'))
            .order_by(ExternalNameMapping.namespace, ExternalNameMapping.name),
            limit,
        )


def _services_holding(session: Session, allocations: Sequence[Any], limit: int) -> Section:
    keys = sorted({(a.service_namespace, a.service_name) for a in allocations if a.active})
    if not keys:
        return Section()
    shown = listed(select(ServiceRecord)).where(
        or_(
            *(
                (ServiceRecord.namespace == ns) & (ServiceRecord.name == name)
                for ns, name in keys[:limit]
            )
        )
    )
    rows: list[ServiceLine] = grouped_lines(session.execute(with_held(shown.subquery())))
    known = {(r.namespace, r.name) for r in rows}
    rows += [
        ServiceLine.of(
            ns,
            name,
            None,
            [
                a
                for a in allocations
                if a.active and a.service_namespace == ns and a.service_name == name
            ],
        )
        for ns, name in keys[:limit]
        if (ns, name) not in known
    ]
    return Section(rows, len(keys))


@dataclass(frozen=True)
class _Part:
    """One section of a name search: its rows (limited) and its count, as statements."""

    rows: Select[Any]
    count: Select[Any]
    columns: bool  # Core rows, not entities
    lines: bool = False  # ``with_held`` rows, folded into ``ServiceLine``s
    carries: tuple[str, ...] = ()  # the sections whose counts its rows carry (``_counted``)


@lru_cache(maxsize=32)
def _name_parts(
    kind: QueryKind, limit: int, short: bool, postgresql: bool, plain: bool = False
) -> dict[str, _Part]:
    """The name search's statements for one shape of query, built once per process with
    bound parameters (``word``, ``pattern``; ``namespace``, ``prefix``, ``owner``). Building
    them per request (operators, coercions) and computing their cache keys cost about a third
    of a namespace search's Python time; a reused statement keeps its cache key."""
    word, pattern = bindparam("word", type_=String), bindparam("pattern", type_=String)
    namespace, prefix = bindparam("namespace", type_=String), bindparam("prefix", type_=String)
    owner = bindparam("owner", type_=String)

    def contains(column: Any) -> Any:
        """``column`` contains the word, ignoring case. ``plain`` (SQLite, a word without
        ``/``, ``%`` or ``_``): the pattern has nothing to escape, so this is the bare
        ``LIKE`` that ``name_like`` spells there, without its ``ESCAPE '/'``, which costs
        SQLite 10-15 % of a scan of every name (counting 10,000: 0.67 against 0.77 ms)."""
        if plain:
            return column.like(pattern)
        return name_like(column, pattern, short=short)

    if kind == "word":

        def match(ns_col: Any, name_col: Any) -> Any:
            return or_(ns_col == word, contains(name_col))

    else:

        def match(ns_col: Any, name_col: Any) -> Any:
            return (ns_col == namespace) & name_col.like(prefix, escape="/")

    def part(
        stmt: Select[Any],
        *,
        columns: bool = False,
        rows: Any = None,
        lines: bool = False,
        count: Select[Any] | None = None,
    ) -> _Part:
        """On PostgreSQL the Core-row sections (the large ones) carry their total in every row
        (``queries.total_column``): no second round trip when a section is full, and the
        count uses the same indexes. On SQLite the subquery would also count sections that
        are not full (a scan of every name for nothing); there the count runs only when
        needed."""
        count = count_of(stmt) if count is None else count
        shown = stmt if rows is None else rows
        if columns and postgresql:
            shown = shown.add_columns(total_column(stmt))
        shown = shown.limit(limit)
        if lines:
            shown = with_held(shown.subquery())
        return _Part(shown, count, columns, lines)

    def word_rows(base: Select[Any], ns_col: Any, name_col: Any, *tail: str) -> Any:
        """PostgreSQL, a word: the rows of ``match`` as the two disjoint halves of its OR.
        Given the OR with a LIMIT, the planner walks the (namespace, name) index in order and
        tests every row until it has a page (1,400 rows for "ns-07" among 10,000: 4-11 ms);
        each half alone gets its index (the namespace B-tree, the name trigrams) and the sort
        is over the matches only (<1-2 ms). SQLite walks its covering index faster than it
        would scan for the second half."""
        if kind != "word" or not postgresql:
            return None
        halves = union_all(
            base.where(ns_col == word),
            base.where(ns_col != word, contains(name_col)),
        ).subquery()
        keys = (ns_col.key, name_col.key, *tail)
        return select(halves).order_by(*(halves.c[k] for k in keys))

    def live_count() -> Select[Any]:
        """SQLite: how many live allocations match, the names tested in the covering
        (namespace, name) index and only the matches' rows read for ``active``. Spelled
        directly ("active and a name matches"), SQLite walks the partial index of live rows
        and reads every row for ``active`` (2.2-2.7 ms for 10,000 against 1.2-1.3 ms)."""
        matching = select(Allocation.id).where(
            match(Allocation.service_namespace, Allocation.service_name)
        )
        return select(func.count()).where(live(), Allocation.id.in_(matching))

    records = listed(select(ServiceRecord))
    held = select(*SHOWN_ALLOCATION).where(live())
    ingress = match(IngressRoute.namespace, IngressRoute.backend_service)
    if kind == "word":
        ingress = or_(ingress, contains(IngressRoute.host))
    parts = {
        "services": part(
            records.where(match(ServiceRecord.namespace, ServiceRecord.name)).order_by(
                ServiceRecord.namespace, ServiceRecord.name
            ),
            columns=True,
            rows=word_rows(records, ServiceRecord.namespace, ServiceRecord.name),
            lines=True,
        ),
        "allocations": part(
            held.where(match(Allocation.service_namespace, Allocation.service_name)).order_by(
                Allocation.service_namespace, Allocation.service_name, Allocation.family
            ),
            columns=True,
            rows=word_rows(held, Allocation.service_namespace, Allocation.service_name, "family"),
            count=None if postgresql else live_count(),
        ),
        "reservations": part(
            select(Reservation)
            .where(
                or_(
                    match(Reservation.service_namespace, Reservation.service_name),
                    Reservation.owner == owner,
                )
            )
            .order_by(Reservation.ip_key)
        ),
        "external_names": part(
            select(ExternalNameMapping)
            .where(match(ExternalNameMapping.namespace, ExternalNameMapping.name))
            .order_by(ExternalNameMapping.namespace, ExternalNameMapping.name)
        ),
        "ingress_routes": part(
            select(IngressRoute)
            .where(or_(ingress, match(IngressRoute.namespace, IngressRoute.ingress_name)))
            .order_by(IngressRoute.namespace, IngressRoute.ingress_name)
        ),
    }
    if kind == "word":
        pools = select(Pool).where(or_(Pool.name == word, contains(Pool.name)))
        parts["pools"] = part(pools.order_by(Pool.name))
    if postgresql:
        # The Allocations rows carry the small sections' counts as well as their own total
        # (uncorrelated scalar subqueries, evaluated once): when there are allocations, the
        # search needs no statement of its own for the counts, one round trip less.
        small = tuple(k for k in parts if k not in LARGE)
        held_part = parts["allocations"]
        rows = held_part.rows.add_columns(*_counted(parts, small))
        parts["allocations"] = replace(held_part, rows=rows, carries=small)
    return parts


def _counted(parts: dict[str, _Part], keys: tuple[str, ...]) -> list[Any]:
    """The counts of the sections ``keys`` as columns (a scalar subquery each, labelled by its
    key)."""
    return [parts[k].count.scalar_subquery().label(k) for k in keys]


LARGE = ("services", "allocations")
"""The name search's sections that may hold thousands of rows: their rows are read first."""


@lru_cache(maxsize=64)
def _counts(
    kind: QueryKind, limit: int, short: bool, postgresql: bool, plain: bool, keys: tuple[str, ...]
) -> Select[Any]:
    """One statement counting the name search's sections ``keys`` (a scalar subquery each,
    labelled by its key): the small sections' counts are their totals, and the common answer,
    0 everywhere, then costs one statement instead of one per section; their rows are read
    only where there are some. SQLite also counts its full large sections here (PostgreSQL's
    rows carry their totals, and its Allocations rows the small sections' counts: this
    statement runs there only when there are no allocations)."""
    parts = _name_parts(kind, limit, short, postgresql, plain)
    return select(*_counted(parts, keys))


def _search_names(
    session: Session,
    result: SearchResult,
    limit: int,
    *,
    word: str | None = None,
    namespace: str | None = None,
    name: str | None = None,
) -> None:
    """``namespace/name`` matches exactly (name may be a prefix); a word matches a namespace
    exactly or a name by substring."""
    if word is not None:
        kind: QueryKind = "word"
        params = {"word": word, "pattern": contains_pattern(word), "owner": word}
    else:
        assert namespace is not None and name is not None
        kind = "service"
        params = {
            "namespace": namespace,
            "prefix": f"{like_escaped(name)}%",
            "owner": f"{namespace}/{name}",
        }
    postgresql = session.get_bind().dialect.name == "postgresql"
    short = word is not None and len(word) < 3
    plain = not postgresql and word is not None and not any(c in word for c in "/%_")
    parts = _name_parts(kind, limit, short, postgresql, plain)
    sections: dict[str, Section] = {}
    uncounted: list[str] = []
    counts: dict[str, int] = {}
    for key in LARGE:
        rows = _rows(session, parts[key], params)
        known = len(rows) if len(rows) < limit else total_in(rows)
        sections[key] = Section(rows, known or 0)
        if known is None:
            uncounted.append(key)
        if rows and parts[key].carries:
            counts.update((k, rows[0]._mapping[k]) for k in parts[key].carries)
    keys = (*uncounted, *(k for k in parts if k not in LARGE and k not in counts))
    if keys:
        counted = _counts(kind, limit, short, postgresql, plain, keys)
        counts.update(session.execute(counted, params).one()._mapping)
    for key in (*uncounted, *(k for k in parts if k not in LARGE)):
        total = counts[key] or 0
        if key in LARGE:
            sections[key].total = total
        elif total:
            rows = _rows(session, parts[key], params)
            sections[key] = Section(rows, len(rows) if len(rows) < limit else total)
        else:
            sections[key] = Section()
    for key in parts:
        setattr(result, key, sections[key])


def _rows(session: Session, part: _Part, params: dict[str, str]) -> list[Any]:
    found = session.execute(part.rows, params)
    return grouped_lines(found) if part.lines else list(found if part.columns else found.scalars())
