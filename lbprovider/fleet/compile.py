"""Compile the database into the FleetState each fleet host must serve.

Why: the agents never read the database; the API hands each one a :class:`FleetState` built
here from Service records, live allocations, nodes and fleet hosts. The output is
deterministic (sorted, canonical values), so its digest — the state's version — changes only
when what a host must serve changes. Values that could not be served safely (a name outside
Kubernetes' rules, an option out of range, a Local Service without a health-check port) are
left out and named in ``problems``, which becomes the Service's ``Serving`` reason.

Every enabled host serves every VIP for now (announcement and failover is its own issue):
:func:`hosts_for_vip` is the one place that rule lives.

What it must not do: write to the database, or reach Kubernetes or HAProxy.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Pool, func, select
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.config import Settings
from lbprovider.db.models import Allocation, FleetHost, Node, ServiceRecord
from lbprovider.db.session import engine_of, read_only_engine, read_only_factory
from lbprovider.fleet.models import (
    FleetState,
    HealthCheckSpec,
    NodeSpec,
    RouteOptionsSpec,
    RouteSpec,
)

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
PROXY_PROTOCOLS = ("v1", "v2")
BALANCES = ("roundrobin", "leastconn", "first", "random", "source")
MAX_TIMEOUT_MS = 24 * 3600 * 1000
MAX_MAXCONN = 1_000_000
MAX_SOURCE_RANGES = 1000


class Unservable(ValueError):
    """A Service value the fleet refuses to program (the message is shown to its owner)."""


@dataclass(frozen=True)
class Compiled:
    """The fleet-wide result: routes per Service, the nodes, and what could not be served."""

    routes: tuple[RouteSpec, ...]  # sorted by address (family, value), then port
    nodes: tuple[NodeSpec, ...]
    health_check: HealthCheckSpec
    by_service: Mapping[str, tuple[RouteSpec, ...]]
    problems: Mapping[str, str]
    no_routes: Mapping[str, str] = field(default_factory=dict)  # why a Service has none

    def state_for(self, host: str, *, enabled: bool) -> FleetState:
        """The versioned state of one host (a disabled host serves nothing)."""
        if not enabled:
            return FleetState(host=host, enabled=False).with_version()
        routes = self.routes  # every enabled host serves every VIP: see hosts_for_vip
        vips = tuple(dict.fromkeys(r.address for r in routes))  # routes are sorted by address
        # Constructed without re-validating: every part is a model this module built.
        return FleetState.model_construct(
            host=host,
            routes=routes,
            nodes=self.nodes,
            health_check=self.health_check,
            vips=vips,
        ).with_version()


def hosts_for_vip(address: str, enabled_hosts: Iterable[str]) -> list[str]:
    """The fleet hosts that must serve ``address``: every enabled host, for now."""
    del address
    return sorted(enabled_hosts)


def health_check_of(settings: Settings) -> HealthCheckSpec:
    return HealthCheckSpec(
        kind=settings.fleet_health_check_kind,
        port=settings.fleet_health_check_port,
        path=settings.fleet_health_check_path,
        interval_ms=settings.fleet_health_check_interval_ms,
    )


def compile_fleet(session: Session, settings: Settings) -> Compiled:
    """Read every record the fleet needs and compile it (one query per table)."""
    ips = _service_ips(session)
    routes: list[RouteSpec] = []
    by_service: dict[str, tuple[RouteSpec, ...]] = {}
    problems: dict[str, str] = {}
    no_routes: dict[str, str] = {}
    for rec in session.scalars(select(ServiceRecord)):
        key = f"{rec.namespace}/{rec.name}"
        try:
            found = service_routes(rec, ips.get((rec.namespace, rec.name), ()))
        except Unservable as e:
            problems[key] = str(e)
            continue
        if not found:
            no_routes[key] = _why_no_routes(rec, ips.get((rec.namespace, rec.name), ()))
        by_service[key] = found
        routes.extend(found)
    routes = _without_clashes(routes, by_service, problems)
    return Compiled(
        routes=tuple(sorted(routes, key=lambda r: (_addr_key(r.address), r.port))),
        nodes=_nodes(session),
        health_check=health_check_of(settings),
        by_service=by_service,
        problems=problems,
        no_routes=no_routes,
    )


def _service_ips(session: Session) -> dict[tuple[str, str], tuple[str, ...]]:
    rows = session.execute(
        select(Allocation.service_namespace, Allocation.service_name, Allocation.ip).where(
            Allocation.active
        )
    )
    out: dict[tuple[str, str], list[str]] = {}
    for ns, name, ip in rows:
        out.setdefault((ns, name), []).append(ip)
    return {k: tuple(sorted(v, key=_addr_key)) for k, v in out.items()}


def _why_no_routes(rec: ServiceRecord, ips: tuple[str, ...]) -> str:
    if not ips:
        return "no address allocated"
    return "no TCP port to serve (the fleet serves TCP only; UDP and SCTP are not supported)"


def _without_clashes(
    routes: list[RouteSpec],
    by_service: dict[str, tuple[RouteSpec, ...]],
    problems: dict[str, str],
) -> list[RouteSpec]:
    """Two Services on one VIP:port (only possible through a corrupt record): serve neither."""
    owners: dict[str, set[str]] = {}
    for r in routes:
        owners.setdefault(r.key, set()).add(r.service)
    bad = {svc for keys in owners.values() if len(keys) > 1 for svc in keys}
    for svc in sorted(bad):
        by_service.pop(svc, None)
        problems[svc] = "another Service claims the same VIP:port"
    return [r for r in routes if r.service not in bad]


def service_routes(rec: ServiceRecord, ips: Iterable[str]) -> tuple[RouteSpec, ...]:
    """The TCP routes of one Service record; raises :class:`Unservable` on a bad value."""
    _check_name(rec.namespace, "namespace")
    _check_name(rec.name, "name")
    options = route_options(rec)
    local = rec.external_traffic_policy == "Local"
    hc_port = _port(rec.health_check_node_port, "healthCheckNodePort") if local else None
    if local and hc_port is None:
        raise Unservable("externalTrafficPolicy Local without spec.healthCheckNodePort")
    addresses = [_address(ip) for ip in ips]
    routes = []
    for port in _tcp_ports(rec.ports):
        for address in addresses:
            routes.append(
                RouteSpec(
                    route_id=f"{rec.namespace}/{rec.name}/{address}:{port[0]}",
                    service=f"{rec.namespace}/{rec.name}",
                    address=address,
                    port=port[0],
                    node_port=port[1],
                    health_check_node_port=hc_port,
                    options=options,
                )
            )
    return tuple(routes)


def _check_name(value: object, what: str) -> None:
    if not isinstance(value, str) or not _DNS_LABEL.fullmatch(value):
        raise Unservable(f"{what} {str(value)[:80]!r} is not a Kubernetes name (DNS label)")


def _port(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise Unservable(f"{what} {str(value)[:20]!r} is not a port")
    return value


def _address(text: object) -> str:
    try:
        addr = ipaddress.ip_address(str(text))
    except ValueError:
        raise Unservable(f"allocated address {str(text)[:60]!r} is not an IP address") from None
    if addr.is_unspecified or addr.is_multicast:
        raise Unservable(f"allocated address {addr} cannot carry traffic")
    return str(addr)


def _tcp_ports(ports: object) -> list[tuple[int, int]]:
    """(port, nodePort) of every TCP port; a TCP port without a nodePort is refused."""
    out: list[tuple[int, int]] = []
    for entry in ports if isinstance(ports, list) else []:
        if not isinstance(entry, dict) or str(entry.get("protocol") or "TCP") != "TCP":
            continue
        port = _port(entry.get("port"), "port")
        node_port = _port(entry.get("nodePort"), "nodePort")
        if port is None or node_port is None:
            raise Unservable(f"TCP port {entry.get('port')!r} has no nodePort to send traffic to")
        out.append((port, node_port))
    return sorted(set(out))


def route_options(rec: ServiceRecord) -> RouteOptionsSpec:
    """Annotations (as parsed by the controller) and spec fields, checked again."""
    opts: Mapping[str, Any] = rec.options if isinstance(rec.options, dict) else {}
    proxy = opts.get("proxy_protocol")
    if proxy is not None and proxy not in PROXY_PROTOCOLS:
        raise Unservable(f"proxy-protocol {str(proxy)[:40]!r} is not one of v1, v2")
    balance = opts.get("balance") or "roundrobin"
    if balance not in BALANCES:
        raise Unservable(f"balance {str(balance)[:40]!r} is not one of {', '.join(BALANCES)}")
    maxconn = opts.get("maxconn") or 0
    if isinstance(maxconn, bool) or not isinstance(maxconn, int) or not 0 <= maxconn <= MAX_MAXCONN:
        raise Unservable(f"maxconn {str(maxconn)[:40]!r} is not a number from 0 to {MAX_MAXCONN}")
    return RouteOptionsSpec(
        proxy_protocol=proxy,
        timeout_client_ms=_timeout(opts.get("timeout_client_ms"), "timeout-client"),
        timeout_server_ms=_timeout(opts.get("timeout_server_ms"), "timeout-server"),
        timeout_connect_ms=_timeout(opts.get("timeout_connect_ms"), "timeout-connect"),
        balance=balance,
        maxconn=maxconn,
        source_ranges=_source_ranges(rec.source_ranges),
        source_affinity=rec.session_affinity == "ClientIP",
    )


def _timeout(value: object, what: str) -> int | None:
    if value is None:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_TIMEOUT_MS
    if not ok:
        raise Unservable(f"{what} {str(value)[:40]!r} is not a duration from 1 ms to 24 h")
    assert isinstance(value, int)
    return value


def _source_ranges(values: object) -> tuple[str, ...]:
    items = values if isinstance(values, list) else []
    if len(items) > MAX_SOURCE_RANGES:
        raise Unservable(f"more than {MAX_SOURCE_RANGES} loadBalancerSourceRanges")
    nets = set()
    for item in items:
        try:
            nets.add(ipaddress.ip_network(str(item).strip(), strict=False))
        except ValueError:
            raise Unservable(
                f"loadBalancerSourceRanges entry {str(item)[:60]!r} is not a CIDR"
            ) from None
    ordered = sorted(nets, key=lambda n: (n.version, int(n.network_address), n.prefixlen))
    return tuple(str(n) for n in ordered)


def _nodes(session: Session) -> tuple[NodeSpec, ...]:
    """Eligible nodes with an address; a cordoned one is ``draining``. A node that is leaving
    (not eligible) or gone is left out: the agent drains it, then deletes it when idle."""
    out: list[NodeSpec] = []
    seen: set[str] = set()
    rows = session.scalars(select(Node).where(Node.eligible).order_by(Node.name))
    for row in rows:
        if not _NODE_NAME.fullmatch(row.name) or not row.address:
            continue
        try:
            address = _address(row.address)
        except Unservable:
            continue
        if address in seen:
            continue
        seen.add(address)
        state = "draining" if row.draining else "ready"
        out.append(NodeSpec(name=row.name, address=address, state=state))
    return tuple(out)


def _addr_key(text: str) -> tuple[int, int]:
    addr = ipaddress.ip_address(text)
    return (addr.version, int(addr))


def change_stamp(session: Session) -> tuple[Any, ...]:
    """A cheap fingerprint of everything :func:`compile_fleet` reads: equal stamps, equal
    compilation. (Counts catch deletions; maxima catch inserts and updates.)"""
    active = select(Allocation.id).where(Allocation.active).subquery()
    row = session.execute(
        select(
            select(func.count()).select_from(ServiceRecord).scalar_subquery(),
            select(func.max(ServiceRecord.updated_at)).scalar_subquery(),
            select(func.max(ServiceRecord.id)).scalar_subquery(),
            select(func.count()).select_from(active).scalar_subquery(),
            select(func.max(active.c.id)).scalar_subquery(),
            select(func.max(Allocation.released_at))
            .where(Allocation.released_at.is_not(None))  # ix_allocations_released_at is partial
            .scalar_subquery(),
            select(func.count()).select_from(Node).scalar_subquery(),
            select(func.max(Node.updated_at)).scalar_subquery(),
        )
    ).one()  # one round trip: a long-poll runs this every fleet_state_poll_seconds
    return (tuple(row[0:3]), tuple(row[3:5]), row[5], tuple(row[6:8]))


def host_enabled(session: Session, host: str) -> bool:
    """An unknown host is enabled (it registers with its first report)."""
    enabled = session.scalar(select(FleetHost.enabled).where(FleetHost.name == host))
    return True if enabled is None else bool(enabled)


class CommitWatch:
    """Whether anything was committed to a SQLite database file since a given moment, without
    a query: ``PRAGMA data_version`` on a read-only connection of its own, whose value changes
    whenever any other connection (of any process) commits a change, and costs microseconds
    (the change stamp reads every record's ``updated_at``: milliseconds at 10,000 Services).
    :meth:`version` is ``None`` for any other database (PostgreSQL, in-memory SQLite), or when
    the file cannot be opened: then the caller reads the stamp."""

    def __init__(self, engine: Engine) -> None:
        url = engine.url
        database = url.database or ""
        self._path: Path | None = None
        on_file = database not in ("", ":memory:") and not database.startswith("file:")
        if url.get_backend_name() == "sqlite" and on_file and "mode=memory" not in str(url.query):
            self._path = Path(database).resolve()
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        # wait_moved's shared reader (event-loop side only): how many wait, the counter it
        # read last, the event it sets when that moves, and its task
        self._waiting = 0
        self._latest: int | None = None
        self._moved: asyncio.Event | None = None
        self._reader: asyncio.Task[None] | None = None

    def version(self) -> int | None:
        """The database's commit counter as seen now (compare two: equal, nothing committed
        in between), ``None`` when not known."""
        if self._path is None:
            return None
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = sqlite3.connect(
                        f"{self._path.as_uri()}?mode=ro",
                        uri=True,
                        check_same_thread=False,
                        isolation_level=None,
                    )
                row = self._conn.execute("PRAGMA data_version").fetchone()
            except sqlite3.Error:
                self._close()
                return None
        return int(row[0])

    async def wait_moved(self, seen: int, until: float) -> None:
        """Return once the counter differs from ``seen``, or at ``until`` (monotonic time).

        The waiters of an event loop share one reader, which reads the counter every
        :data:`COMMIT_CHECK_SECONDS` while any of them waits and wakes them all when it
        moves: a waiting long-poll costs no wake-up and no read of its own until a commit."""
        loop = asyncio.get_running_loop()
        self._waiting += 1
        try:
            if self._reader is None or self._reader.get_loop() is not loop:
                self._latest, self._moved = seen, asyncio.Event()
                self._reader = loop.create_task(self._read_while_waited())
            while self._latest == seen and self._moved is not None:
                rest = until - time.monotonic()
                if rest <= 0:
                    return
                try:
                    await asyncio.wait_for(self._moved.wait(), rest)
                except TimeoutError:
                    return
        finally:
            self._waiting -= 1

    async def _read_while_waited(self) -> None:
        try:
            while self._waiting:
                await asyncio.sleep(COMMIT_CHECK_SECONDS)
                now = self.version()
                if now != self._latest and self._moved is not None:
                    self._latest, moved, self._moved = now, self._moved, asyncio.Event()
                    moved.set()
        finally:
            self._reader = None

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close()


STAMP_AT_LEAST_EVERY = 1.0  # seconds: the change stamp is read this often even when unmoved
COMMIT_CHECK_SECONDS = 0.002  # how often CommitWatch's reader reads the counter while waited on


class StateCache:
    """The compiled fleet and each host's state, kept current by change stamp, so a long-poll
    check costs one stamp query and a change costs what changed (an incremental compile, see
    ``lbprovider.fleet.incremental``). It also keeps each host's last few states, so an agent
    that holds one of them can be sent a :class:`~lbprovider.fleet.models.FleetDelta`.

    One per API app; safe to share between request threads (compiles are serialised).
    """

    def __init__(self, settings: Settings) -> None:
        # imported here: the incremental compiler builds on this module's per-Service rules
        from lbprovider.fleet.incremental import IncrementalCompiler

        self.settings = settings
        self._lock = threading.Lock()
        self._compile_lock = threading.Lock()
        self._state_lock = threading.Lock()  # held while a host's state is built
        self._compiler = IncrementalCompiler(settings)
        self._stamp: tuple[Any, ...] | None = None
        self._compiled: Compiled | None = None
        self._states: dict[tuple[str, bool], FleetState] = {}
        self._history: dict[str, dict[str, FleetState]] = {}  # host -> version -> state
        self._bodies: dict[tuple[str, str], bytes] = {}  # (host, version) -> JSON
        self._read_engine: tuple[Engine, Engine] | None = None
        self._readers: tuple[sessionmaker[Session], sessionmaker[Session]] | None = None
        self._serving: ServingBasis | None = None
        self._reports: dict[str, dict[str, Any]] = {}  # host -> its status as this API stored it
        self._watch: tuple[Pool, CommitWatch] | None = None
        # the commit counter read before the current compilation's snapshot, and until when
        # it alone may vouch for that compilation (see _unmoved)
        self._seen: int | None = None
        self._seen_until = 0.0

    @property
    def serving_basis(self) -> ServingBasis | None:
        """What serving was last written from (see ``lbprovider.fleet.protocol``)."""
        with self._lock:
            return self._serving

    def stored_report(self, host: str) -> dict[str, Any] | None:
        """``host``'s status as this API last stored it (committed), if it did (read-only by
        convention: callers compare its ``report_id`` with the row's before trusting it)."""
        with self._lock:
            return self._reports.get(host)

    def note_report(self, host: str, status: dict[str, Any]) -> None:
        """``status`` was stored (committed) as ``host``'s."""
        with self._lock:
            self._reports[host] = status

    def note_serving(self, basis: ServingBasis) -> None:
        """Serving was written (committed) from ``basis``."""
        with self._lock:
            self._serving = basis

    def compiled(self, session: Session) -> Compiled:
        """The compilation of the database as ``session`` sees it now, or newer.

        A change is compiled in a read-only transaction of its own, begun under the compile
        lock: compiles see the database in commit order (an incremental compile must never
        step back to an older snapshot), and no thread waits for the database while it holds
        the lock (a caller's transaction may hold SQLite's write lock).

        On a SQLite file nothing is read when nothing was committed anywhere since the current
        compilation's snapshot (:class:`CommitWatch`; the stamp is still read at least every
        :data:`STAMP_AT_LEAST_EVERY` seconds), and a commit goes straight to :meth:`refresh`,
        whose own transaction reads the stamp: a long-poll check costs no query."""
        unmoved = self._unmoved(session)
        if unmoved is not None:
            return unmoved
        if self._watcher(session).version() is not None:
            return self.refresh(session)
        stamp = change_stamp(session)
        with self._lock:
            if stamp == self._stamp and self._compiled is not None:
                return self._compiled
        return self.refresh(session)

    def refresh(self, session: Session) -> Compiled:
        """Compile the database's latest committed state; ``session`` only names the database
        (no statement runs in it, so a writer can call this before it takes the write lock,
        and not wait for a compile while holding it)."""
        unmoved = self._unmoved(session)
        if unmoved is not None:
            return unmoved
        with self._compile_lock, Session(self._reader(session)) as own, own.begin():
            # read before the transaction's snapshot (its first statement): a commit after
            # this moment moves the counter, whether or not the snapshot has it
            seen = self._watcher(session).version()
            fresh = change_stamp(own)
            with self._lock:
                if fresh == self._stamp and self._compiled is not None:
                    self._note_seen(seen)
                    return self._compiled
            compiled = self._compiler.refresh(own, fresh)
            with self._lock:
                if compiled is not self._compiled:  # the same one: nothing it holds changed
                    self._compiled, self._states = compiled, {}
                self._stamp = fresh
                self._note_seen(seen)
            return compiled

    def _unmoved(self, session: Session) -> Compiled | None:
        """The current compilation when nothing was committed since the commit counter was
        read before its snapshot (and that was less than STAMP_AT_LEAST_EVERY ago)."""
        with self._lock:
            seen, until, compiled = self._seen, self._seen_until, self._compiled
        if seen is None or compiled is None or time.monotonic() >= until:
            return None
        if self._watcher(session).version() != seen:
            return None
        with self._lock:
            return compiled if self._compiled is compiled else None

    def _note_seen(self, seen: int | None) -> None:
        """(under ``_lock``) ``seen`` was read before the current compilation's snapshot."""
        self._seen = seen
        self._seen_until = time.monotonic() + STAMP_AT_LEAST_EVERY

    def commit_watch(self, sessions: sessionmaker[Session]) -> CommitWatch:
        """The commit counter of ``sessions``' database (see :class:`CommitWatch`)."""
        bind = sessions.kw["bind"]
        return self._watch_of(bind if isinstance(bind, Engine) else bind.engine)

    def _watcher(self, session: Session) -> CommitWatch:
        return self._watch_of(engine_of(session))

    def _watch_of(self, engine: Engine) -> CommitWatch:
        with self._lock:  # by pool: the read-only engine of a SQLite engine shares its pool
            if self._watch is None or self._watch[0] is not engine.pool:
                if self._watch is not None:
                    self._watch[1].close()
                self._watch = (engine.pool, CommitWatch(engine))
                self._seen = None
            return self._watch[1]

    def readers(self, sessions: sessionmaker[Session]) -> sessionmaker[Session]:
        """Read-only sessions like ``sessions``' (made once per factory and kept here)."""
        with self._lock:
            if self._readers is None or self._readers[0] is not sessions:
                self._readers = (sessions, read_only_factory(sessions))
            return self._readers[1]

    def _reader(self, session: Session) -> Engine:
        bind = session.get_bind()
        engine = bind if isinstance(bind, Engine) else bind.engine
        with self._lock:
            if self._read_engine is None or self._read_engine[0] is not engine:
                self._read_engine = (engine, read_only_engine(engine))
            return self._read_engine[1]

    def state(self, session: Session, host: str) -> FleetState:
        """The current state of ``host``."""
        return self._state_of(self.compiled(session), host, host_enabled(session, host))

    def current(
        self, session: Session, host: str
    ) -> tuple[tuple[Any, ...] | None, Compiled, FleetState]:
        """The change stamp the current compilation is of (None: it was replaced meanwhile),
        that compilation, and ``host``'s state in it: all three of one compilation, so a
        writer can check later, by stamp, that they still hold."""
        compiled = self.compiled(session)
        with self._lock:
            stamp = self._stamp if self._compiled is compiled else None
        return stamp, compiled, self._state_of(compiled, host, host_enabled(session, host))

    def _state_of(self, compiled: Compiled, host: str, enabled: bool) -> FleetState:
        key = (host, enabled)
        with self._lock:
            cached = self._states.get(key)
            if cached is not None and self._compiled is compiled:
                return cached
        # one thread builds it (a long-poll and a report often ask for the same state of a
        # new compilation at once: at 10,000 routes that is milliseconds of CPU each)
        with self._state_lock:
            with self._lock:
                cached = self._states.get(key)
                if cached is not None and self._compiled is compiled:
                    return cached
            return self._build_state(compiled, host, key)

    def _build_state(self, compiled: Compiled, host: str, key: tuple[str, bool]) -> FleetState:
        state = compiled.state_for(host, enabled=key[1])
        with self._lock:
            history = self._history.setdefault(host, {})
            state = history.get(state.version, state)  # equal content: the same object
            history.pop(state.version, None)
            history[state.version] = state
            while len(history) > HISTORY:
                old = next(iter(history))
                del history[old]
                self._bodies.pop((host, old), None)
            if self._compiled is compiled:
                self._states[key] = state
        return state

    def known(self, host: str, version: str) -> FleetState | None:
        """One of ``host``'s last :data:`HISTORY` states, by version (None if not kept)."""
        with self._lock:
            return self._history.get(host, {}).get(version)

    def body(self, state: FleetState) -> bytes:
        """``state`` as JSON, serialised once per version."""
        key = (state.host, state.version)
        with self._lock:
            cached = self._bodies.get(key)
        if cached is None:
            cached = state.model_dump_json().encode()
            with self._lock:
                if state.version in self._history.get(state.host, {}):
                    self._bodies[key] = cached
        return cached


@dataclass(frozen=True)
class ServingBasis:
    """What this API last wrote every Service's ``serving`` from (committed): the compilation,
    the live hosts, and when it last recomputed them all (monotonic)."""

    compiled: Compiled
    live: frozenset[str]
    full_at: float


HISTORY = 16  # states kept per host for deltas: an agent lagging more gets the whole state
