"""Keep the fleet's compilation current by recompiling only the Services that changed.

Why: at 10,000 Services a full :func:`~lbprovider.fleet.compile.compile_fleet` costs seconds
(every record loaded and checked), and it ran on every change. This compiler keeps, per
Service, the routes (or the problem) compiled from its record and its live addresses, and on a
change reads only what is new: records updated or inserted since the last look, allocations
inserted or released since then, nodes when they changed. Deletions and anything the
high-water marks cannot explain (a row committed out of order, a deleted allocation) are caught
by comparing counts, and by a light reconciliation (ids and update stamps, no records) at most
every ``RECONCILE_SECONDS``; what it finds is recompiled. The result is the same
:class:`~lbprovider.fleet.compile.Compiled` a full compile gives (the tests compare them), and
unchanged routes stay the same objects, so their digests are not computed again.

What it must not do: write to the database, or be used from two threads at once (the
:class:`~lbprovider.fleet.compile.StateCache` serialises it).
"""

from __future__ import annotations

import time
from bisect import bisect_left, insort
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from lbprovider.config import Settings
from lbprovider.db.models import Allocation, ServiceRecord
from lbprovider.fleet.compile import (
    Compiled,
    Unservable,
    _nodes,
    _why_no_routes,
    health_check_of,
    service_routes,
)
from lbprovider.fleet.models import NodeSpec, RouteSpec, address_order

RECONCILE_SECONDS = 10.0
CLASH = "another Service claims the same VIP:port"
ServiceKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class _Entry:
    """One Service as compiled: its routes, or why it has none."""

    record_id: int
    updated_at: datetime
    routes: tuple[RouteSpec, ...] | None  # None: unservable (see problem)
    problem: str = ""
    no_routes: str = ""
    inputs: tuple[Any, ...] = ()  # the record's values the compile read (see _INPUTS)


# Every column of a record that compile_fleet's per-Service rules read: a record updated in
# other columns only (its serving flag, its condition) keeps its compiled routes.
_INPUTS = (
    ServiceRecord.namespace,
    ServiceRecord.name,
    ServiceRecord.ports,
    ServiceRecord.external_traffic_policy,
    ServiceRecord.health_check_node_port,
    ServiceRecord.source_ranges,
    ServiceRecord.session_affinity,
    ServiceRecord.options,
)


def _inputs_of(rec: ServiceRecord) -> tuple[Any, ...]:
    return tuple(getattr(rec, col.key) for col in _INPUTS)


def _position(route: RouteSpec) -> tuple[tuple[int, int, int], str]:
    return (route.order, route.route_id)


class IncrementalCompiler:
    """The compiled fleet, brought up to date with :meth:`refresh`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._entries: dict[ServiceKey, _Entry] = {}
        self._ips: dict[ServiceKey, tuple[str, ...]] = {}
        self._allocs: dict[int, tuple[ServiceKey, str]] = {}  # active allocation id -> (svc, ip)
        self._alloc_ids: dict[ServiceKey, set[int]] = {}  # per Service: its allocation ids
        self._owners: dict[str, set[str]] = {}  # VIP:port -> services routing it
        self._clashes: set[str] = set()  # VIP:port with more than one owner
        self._sorted: list[RouteSpec] = []  # every route, by (address, port, route_id)
        # the parts of Compiled, kept per "namespace/name" (clashes are applied when read)
        self._by_service: dict[str, tuple[RouteSpec, ...]] = {}
        self._problems: dict[str, str] = {}
        self._no_routes: dict[str, str] = {}
        self._nodes: tuple[NodeSpec, ...] = ()
        self._max_updated: datetime | None = None
        self._max_record_id = 0
        self._max_alloc_id = 0
        self._released: Any = None
        self._node_stamp: Any = None
        self._reconciled = float("-inf")
        # the last Compiled, handed out again while nothing it holds changed (a record whose
        # serving flag or condition alone was written): the states built from it stay cached
        self._last: Compiled | None = None
        self._dirty = True
        self.full_loads = 0  # for tests and profiling: how often everything was read

    # -- refresh -----------------------------------------------------------------------------

    def refresh(self, session: Session, stamp: tuple[Any, ...]) -> Compiled:
        """The compilation of the database as ``session`` sees it; ``stamp`` is its
        :func:`~lbprovider.fleet.compile.change_stamp` (read first, in the same session)."""
        _, _, released, nodes = stamp
        if self._max_updated is None:
            self._load_all(session)
        else:
            changed = self._new_allocations(session)
            if released != self._released or self._alloc_count(session) != len(self._allocs):
                changed |= self._reconcile_allocations(session)
            done = self._changed_records(session)
            if self._reconcile_due():  # also allocations edited in place (a corrupt row)
                changed |= self._reconcile_allocations(session)
            if self._record_count(session) != len(self._entries) or self._reconcile_due():
                changed |= self._reconcile_records(session)
            self._recompile(session, changed - done)
        self._released = released
        if nodes != self._node_stamp:
            self._nodes = _nodes(session)
            self._node_stamp = nodes
            self._dirty = True
        return self._compiled()

    def _reconcile_due(self) -> bool:
        return time.monotonic() - self._reconciled >= RECONCILE_SECONDS

    def _load_all(self, session: Session) -> None:
        self.full_loads += 1
        self._reconcile_allocations(session)
        self._entries, self._owners, self._clashes, self._sorted = {}, {}, set(), []
        self._by_service, self._problems, self._no_routes = {}, {}, {}
        self._dirty = True
        for rec in session.scalars(select(ServiceRecord)):
            self._put(rec)
        self._reconciled = time.monotonic()

    def _changed_records(self, session: Session) -> set[ServiceKey]:
        """Recompile the records inserted, or updated in a column the compile reads, since the
        last look (with their allocations read again); return them. A record updated in other
        columns only (``serving``, conditions) just has its stamp noted."""
        query = select(ServiceRecord.id, ServiceRecord.updated_at, *_INPUTS).where(
            or_(
                ServiceRecord.updated_at > self._max_updated,
                ServiceRecord.id > self._max_record_id,
            )
        )
        stale: set[ServiceKey] = set()
        for rec_id, updated, *inputs in session.execute(query):
            key = (inputs[0], inputs[1])
            entry = self._entries.get(key)
            self._note_marks(rec_id, updated)
            if entry is not None and entry.record_id == rec_id and entry.inputs == tuple(inputs):
                self._entries[key] = replace(entry, updated_at=updated)
            else:
                stale.add(key)
        self._reload_allocations(session, stale)
        self._recompile(session, stale)
        return stale

    def _note_marks(self, rec_id: int, updated: datetime) -> None:
        if self._max_updated is None or updated > self._max_updated:
            self._max_updated = updated
        self._max_record_id = max(self._max_record_id, rec_id)

    def _reload_allocations(self, session: Session, services: set[ServiceKey]) -> None:
        """Read the active allocations of ``services`` again (an in-place edit of one is
        invisible to the marks)."""
        if not services:
            return
        for svc in services:
            for alloc_id in self._alloc_ids.pop(svc, set()):
                self._allocs.pop(alloc_id, None)
        keys = sorted(services)
        for start in range(0, len(keys), 500):
            # ``active`` is tested here, not in SQL: with it there SQLite walks the index on
            # (active, ip_key), every live allocation, instead of the Service's own rows
            rows = session.execute(
                select(
                    Allocation.id,
                    Allocation.service_namespace,
                    Allocation.service_name,
                    Allocation.ip,
                    Allocation.active,
                ).where(_services_in(Allocation, keys[start : start + 500]))
            )
            for alloc_id, ns, name, ip, active in rows:
                if not active:
                    continue
                self._allocs[alloc_id] = ((ns, name), ip)
                self._alloc_ids.setdefault((ns, name), set()).add(alloc_id)
                self._max_alloc_id = max(self._max_alloc_id, alloc_id)
        self._rebuild_ips(services)

    def _new_allocations(self, session: Session) -> set[ServiceKey]:
        # by primary key range; ``active`` tested here (in SQL, SQLite would walk every live
        # allocation of its (active, ip_key) index instead)
        rows = session.execute(
            select(
                Allocation.id,
                Allocation.service_namespace,
                Allocation.service_name,
                Allocation.ip,
                Allocation.active,
            ).where(Allocation.id > self._max_alloc_id)
        )
        changed = set()
        for alloc_id, ns, name, ip, active in rows:
            # past released rows too: one made live again in place changes the live count,
            # which refresh compares every time (then every allocation is read again)
            self._max_alloc_id = max(self._max_alloc_id, alloc_id)
            if not active:
                continue
            self._allocs[alloc_id] = ((ns, name), ip)
            self._alloc_ids.setdefault((ns, name), set()).add(alloc_id)
            changed.add((ns, name))
        self._rebuild_ips(changed)
        return changed

    def _reconcile_allocations(self, session: Session) -> set[ServiceKey]:
        """Every active allocation (ids, Service, address): the Services whose addresses
        differ from what was compiled."""
        rows = session.execute(
            select(
                Allocation.id, Allocation.service_namespace, Allocation.service_name, Allocation.ip
            ).where(Allocation.active)
        )
        fresh = {alloc_id: ((ns, name), ip) for alloc_id, ns, name, ip in rows}
        changed = {svc for k, (svc, _) in fresh.items() if self._allocs.get(k) != fresh[k]}
        changed |= {svc for k, (svc, _) in self._allocs.items() if k not in fresh}
        self._allocs = fresh
        self._alloc_ids = {}
        for alloc_id, (svc, _) in fresh.items():
            self._alloc_ids.setdefault(svc, set()).add(alloc_id)
        self._max_alloc_id = max(fresh, default=self._max_alloc_id)
        if self._max_updated is None:  # first load: every Service's addresses
            self._ips = {}
            changed = {svc for svc, _ in fresh.values()}
        self._rebuild_ips(changed)
        return changed

    def _rebuild_ips(self, services: Iterable[ServiceKey]) -> None:
        wanted = set(services)
        if not wanted:
            return
        by_service: dict[ServiceKey, list[str]] = {}
        if len(wanted) > 64:  # many: one pass over every allocation
            for svc, ip in self._allocs.values():
                if svc in wanted:
                    by_service.setdefault(svc, []).append(ip)
        else:
            for svc in wanted:
                ids = self._alloc_ids.get(svc, ())
                by_service[svc] = [self._allocs[i][1] for i in ids if i in self._allocs]
        for svc in wanted:
            ips = by_service.get(svc)
            if ips:
                self._ips[svc] = tuple(sorted(ips, key=address_order))
            else:
                self._ips.pop(svc, None)

    def _reconcile_records(self, session: Session) -> set[ServiceKey]:
        """Ids and update stamps of every record: drop the deleted ones, return the ones
        whose stamp differs from the compiled one (committed out of order)."""
        self._reconciled = time.monotonic()
        rows = session.execute(
            select(
                ServiceRecord.id,
                ServiceRecord.namespace,
                ServiceRecord.name,
                ServiceRecord.updated_at,
            )
        )
        seen: dict[ServiceKey, tuple[int, datetime]] = {(ns, n): (i, u) for i, ns, n, u in rows}
        for key in [k for k in self._entries if k not in seen]:
            self._drop(key)
        return {
            key
            for key, (rid, updated) in seen.items()
            if (e := self._entries.get(key)) is None
            or e.record_id != rid
            or e.updated_at != updated
        }

    def _alloc_count(self, session: Session) -> int:
        query = select(func.count()).select_from(Allocation).where(Allocation.active)
        return int(session.scalar(query) or 0)

    def _record_count(self, session: Session) -> int:
        return int(session.scalar(select(func.count()).select_from(ServiceRecord)) or 0)

    def _recompile(self, session: Session, services: set[ServiceKey]) -> None:
        """Recompile ``services`` from their current records (a missing one is dropped)."""
        if not services:
            return
        found: set[ServiceKey] = set()
        keys = sorted(services)
        for start in range(0, len(keys), 500):
            cond = _services_in(ServiceRecord, keys[start : start + 500])
            for rec in session.scalars(select(ServiceRecord).where(cond)):
                self._put(rec)
                found.add((rec.namespace, rec.name))
        for key in services - found:
            self._drop(key)

    # -- per Service -------------------------------------------------------------------------

    def _put(self, rec: ServiceRecord) -> None:
        key = (rec.namespace, rec.name)
        self._note_marks(rec.id, rec.updated_at)
        ips = self._ips.get(key, ())
        try:
            routes: tuple[RouteSpec, ...] | None = service_routes(rec, ips)
            problem, none = "", ""
        except Unservable as e:
            routes, problem, none = None, str(e), ""
        if routes == ():
            none = _why_no_routes(rec, ips)
        old = self._entries.get(key)
        if old is not None and routes is not None and old.routes is not None:
            routes = _reuse(old.routes, routes)
        self._unlink(key, old)
        entry = _Entry(rec.id, rec.updated_at, routes, problem, none, _inputs_of(rec))
        self._entries[key] = entry
        self._link(key, entry)

    def _drop(self, key: ServiceKey) -> None:
        self._unlink(key, self._entries.pop(key, None))

    def _link(self, key: ServiceKey, entry: _Entry) -> None:
        self._dirty = True
        name = f"{key[0]}/{key[1]}"
        if entry.routes is None:
            self._problems[name] = entry.problem
        else:
            self._by_service[name] = entry.routes
        if entry.no_routes:
            self._no_routes[name] = entry.no_routes
        for route in entry.routes or ():
            owners = self._owners.setdefault(route.key, set())
            owners.add(route.service)
            if len(owners) > 1:
                self._clashes.add(route.key)
            insort(self._sorted, route, key=_position)

    def _unlink(self, key: ServiceKey, entry: _Entry | None) -> None:
        self._dirty = True
        name = f"{key[0]}/{key[1]}"
        for part in (self._by_service, self._problems, self._no_routes):
            part.pop(name, None)
        for route in entry.routes or () if entry is not None else ():
            owners = self._owners.get(route.key, set())
            owners.discard(route.service)
            if len(owners) <= 1:
                self._clashes.discard(route.key)
            if not owners:
                self._owners.pop(route.key, None)
            i = bisect_left(self._sorted, _position(route), key=_position)
            if i < len(self._sorted) and self._sorted[i].route_id == route.route_id:
                del self._sorted[i]

    # -- the result --------------------------------------------------------------------------

    def _compiled(self) -> Compiled:
        if not self._dirty and self._last is not None:
            return self._last
        by_service, problems = dict(self._by_service), dict(self._problems)
        bad = {svc for key in self._clashes for svc in self._owners.get(key, ())}
        for svc in bad:  # two Services on one VIP:port (a corrupt record): serve neither
            by_service.pop(svc, None)
            problems[svc] = CLASH
        routes = [r for r in self._sorted if r.service not in bad] if bad else self._sorted
        self._last = Compiled(
            routes=tuple(routes),
            nodes=self._nodes,
            health_check=health_check_of(self.settings),
            by_service=by_service,
            problems=problems,
            no_routes=dict(self._no_routes),
        )
        self._dirty = False
        return self._last


def _services_in(table: type[ServiceRecord] | type[Allocation], keys: list[ServiceKey]) -> Any:
    """``(namespace, name) IN keys`` on a table with those columns."""
    if table is ServiceRecord:
        ns, name = ServiceRecord.namespace, ServiceRecord.name
    else:
        ns, name = Allocation.service_namespace, Allocation.service_name
    return or_(*(and_(ns == k[0], name == k[1]) for k in keys))


def _reuse(old: tuple[RouteSpec, ...], new: tuple[RouteSpec, ...]) -> tuple[RouteSpec, ...]:
    """``new``, with each route equal to an old one replaced by that old object (whose digest
    is already computed, and which a delta then recognises as unchanged by identity)."""
    by_id = {r.route_id: r for r in old}
    return tuple(o if (o := by_id.get(r.route_id)) is not None and o == r else r for r in new)
