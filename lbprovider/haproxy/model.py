"""Desired HAProxy state, independent of Kubernetes, and the rules that refuse unsafe values.

Why: every value that ends up in a config file, a map file or a runtime command passes through
these dataclasses first. Construction validates (``__post_init__``), so an object that exists is
safe to render: names match a strict character set, addresses are ``ipaddress`` objects, ports
and timeouts are ints in range, enums are enums. Callers (the agent) translate their own
records into this model and turn :class:`InvalidModel` into a reported error.

What it must not do: know about Services, annotations, the database or how HAProxy is driven.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
import weakref
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Kubernetes object names (DNS subdomains) fit; nothing HAProxy or its CLI would interpret
# (spaces, '#', quotes, ';', newlines, '%', '\\') can.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_ROUTE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:-]{0,252}")
_PATH_RE = re.compile(r"/[A-Za-z0-9._~/-]{0,200}")

MAX_TIMEOUT_MS = 24 * 3600 * 1000
MAX_MAXCONN = 1_000_000
MAX_SOURCE_RANGES = 1000


class InvalidModel(ValueError):
    """A value that must never reach HAProxy (bad name, address, range or combination)."""


class ProxyProtocol(StrEnum):
    """PROXY protocol header sent to the NodePort (``send-proxy`` / ``send-proxy-v2``)."""

    V1 = "v1"
    V2 = "v2"


class Balance(StrEnum):
    """Balance algorithms that keep working with servers added at runtime.

    ``static-rr`` and map-based hashing refuse ``add server``; ``source`` is rendered with
    ``hash-type consistent`` for that reason.
    """

    ROUNDROBIN = "roundrobin"
    LEASTCONN = "leastconn"
    FIRST = "first"
    RANDOM = "random"
    SOURCE = "source"


class NodeState(StrEnum):
    """A node that is ``draining`` takes no new connections; existing ones finish."""

    READY = "ready"
    DRAINING = "draining"


class HealthCheckKind(StrEnum):
    """How a node is checked for ``externalTrafficPolicy: Cluster`` routes."""

    HTTP = "http"  # GET <path> on <port>: kube-proxy's :10256/healthz by default
    TCP = "tcp"  # a TCP connect to <port> (typically one NodePort)


class BindMode(StrEnum):
    """How entry points become ``bind`` lines.

    ``wildcard``: one bind per distinct port on the settings' bind address; a new VIP on an
    already-bound port is a map change only. ``per-vip``: one bind per VIP:port (with
    ``transparent`` for VIPs that are routed to the host but not configured on it).
    """

    WILDCARD = "wildcard"
    PER_VIP = "per-vip"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidModel(message)


def check_name(value: object, what: str) -> str:
    """Return ``value`` if it is a safe HAProxy/CLI token, else raise :class:`InvalidModel`."""
    _check(isinstance(value, str) and _NAME_RE.fullmatch(value) is not None, f"bad {what}")
    return str(value)


def check_int(value: object, what: str, low: int, high: int) -> int:
    """Return ``value`` if it is an ``int`` (not ``bool``) within ``[low, high]``."""
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    _check(ok, f"{what} must be an integer in [{low}, {high}]")
    assert isinstance(value, int)
    return value


def check_port(value: object, what: str = "port") -> int:
    """A TCP port, 1..65535."""
    return check_int(value, what, 1, 65535)


def check_address(value: object, what: str = "address") -> IPAddress:
    """An ``ipaddress`` object that can carry traffic (not unspecified nor multicast)."""
    _check(isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address), f"bad {what}")
    assert isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address)
    _check(not value.is_unspecified and not value.is_multicast, f"{what} not usable: {value}")
    _check(not isinstance(value, ipaddress.IPv6Address) or value.scope_id is None, what)
    return value


def parse_address(text: str) -> IPAddress:
    """Parse an address from an outside string, raising :class:`InvalidModel`."""
    try:
        return check_address(ipaddress.ip_address(text))
    except ValueError as e:
        raise InvalidModel(f"bad address: {text!r}") from e


def _enum(value: object, kind: type[StrEnum], what: str) -> None:
    _check(isinstance(value, kind), f"{what} must be one of {[m.value for m in kind]}")


@dataclass(frozen=True, order=True)
class RouteOptions:
    """Per-route behaviour. Timeouts in milliseconds; ``None`` means the settings' default.

    ``maxconn`` (0 = unlimited) and ``source_ranges`` are enforced per route through maps;
    the rest selects a backend *profile* (see render.py).
    """

    proxy_protocol: ProxyProtocol | None = None
    timeout_client_ms: int | None = None
    timeout_server_ms: int | None = None
    timeout_connect_ms: int | None = None
    balance: Balance = Balance.ROUNDROBIN
    maxconn: int = 0
    source_ranges: tuple[IPNetwork, ...] = ()
    source_affinity: bool = False

    def __post_init__(self) -> None:
        if self.proxy_protocol is not None:
            _enum(self.proxy_protocol, ProxyProtocol, "proxy_protocol")
        for name in ("timeout_client_ms", "timeout_server_ms", "timeout_connect_ms"):
            value = getattr(self, name)
            if value is not None:
                check_int(value, name, 1, MAX_TIMEOUT_MS)
        _enum(self.balance, Balance, "balance")
        check_int(self.maxconn, "maxconn", 0, MAX_MAXCONN)
        _check(isinstance(self.source_affinity, bool), "source_affinity must be a bool")
        _check(isinstance(self.source_ranges, tuple), "source_ranges must be a tuple")
        _check(len(self.source_ranges) <= MAX_SOURCE_RANGES, "too many source ranges")
        for net in self.source_ranges:
            ok = isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network)
            _check(ok, "source_ranges must hold ipaddress networks")
        # A canonical order so equal allow-lists compare (and share a slot) equal.
        canonical = tuple(sorted(set(self.source_ranges), key=_net_key))
        object.__setattr__(self, "source_ranges", canonical)

    @property
    def effective_balance(self) -> Balance:
        """Source affinity (``sessionAffinity: ClientIP``) means ``balance source``."""
        return Balance.SOURCE if self.source_affinity else self.balance


def _net_key(net: IPNetwork) -> tuple[int, int, int]:
    return (net.version, int(net.network_address), net.prefixlen)


@dataclass(frozen=True, order=True)
class Route:
    """One TCP VIP:port and where it goes.

    ``health_check_node_port`` set means ``externalTrafficPolicy: Local``: the route gets its
    own backend whose servers are checked with ``GET /healthz`` on that port.
    """

    route_id: str
    address: IPAddress
    port: int
    node_port: int
    options: RouteOptions = field(default_factory=RouteOptions)
    health_check_node_port: int | None = None

    def __post_init__(self) -> None:
        _check(isinstance(self.route_id, str), "route_id must be a string")
        _check(_ROUTE_ID_RE.fullmatch(self.route_id) is not None, "bad route_id")
        check_address(self.address, "route address")
        check_port(self.port, "route port")
        check_port(self.node_port, "node_port")
        _check(isinstance(self.options, RouteOptions), "options must be RouteOptions")
        if self.health_check_node_port is not None:
            check_port(self.health_check_node_port, "health_check_node_port")

    @cached_property
    def key(self) -> str:
        """The map key HAProxy builds from ``%[dst]:%[dst_port]`` (computed once: frozen)."""
        return f"{self.address}:{self.port}"

    @property
    def is_local(self) -> bool:
        """``externalTrafficPolicy: Local``."""
        return self.health_check_node_port is not None


@dataclass(frozen=True, order=True)
class Node:
    """A Kubernetes node as a server: its name becomes the HAProxy server name."""

    name: str
    address: IPAddress
    state: NodeState = NodeState.READY

    def __post_init__(self) -> None:
        check_name(self.name, "node name")
        check_address(self.address, "node address")
        _enum(self.state, NodeState, "node state")


@dataclass(frozen=True)
class HealthCheck:
    """The per-node check for Cluster routes: kube-proxy's ``:10256/healthz`` by default."""

    kind: HealthCheckKind = HealthCheckKind.HTTP
    port: int = 10256
    path: str = "/healthz"
    interval_ms: int = 2000

    def __post_init__(self) -> None:
        _enum(self.kind, HealthCheckKind, "health check kind")
        check_port(self.port, "health check port")
        _check(isinstance(self.path, str) and _PATH_RE.fullmatch(self.path) is not None, "path")
        check_int(self.interval_ms, "health check interval", 100, 3_600_000)


@dataclass(frozen=True)
class DesiredState:
    """Everything one HAProxy host should serve. Validated as a whole on construction."""

    routes: tuple[Route, ...] = ()
    nodes: tuple[Node, ...] = ()
    health_check: HealthCheck = field(default_factory=HealthCheck)
    # Not content (not compared, not arguments): the route keys and ids as sets, and for a
    # state made by with_changes, (the state it was made from, routes added, routes removed);
    # that state by weak reference, so a chain of deltas does not keep every state alive.
    _keys: set[object] = field(default_factory=set, init=False, compare=False, repr=False)
    _ids: set[object] = field(default_factory=set, init=False, compare=False, repr=False)
    change: tuple[weakref.ref[DesiredState], tuple[Route, ...], tuple[Route, ...]] | None = field(
        default=None, init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        _check(isinstance(self.routes, tuple) and isinstance(self.nodes, tuple), "tuples")
        _check_members(self.routes, self.nodes, self.health_check)
        keys = _unique([r.key for r in self.routes], "route VIP:port")
        ids = _unique([r.route_id for r in self.routes], "route_id")
        object.__setattr__(self, "nodes", _sorted_nodes(self.nodes))
        object.__setattr__(self, "routes", tuple(sorted(self.routes, key=_route_key)))
        object.__setattr__(self, "_keys", keys)
        object.__setattr__(self, "_ids", ids)

    @property
    def route_keys(self) -> Set[object]:
        """The routes' keys (read-only by convention)."""
        return self._keys

    def with_changes(
        self,
        added: Sequence[Route],
        removed: Sequence[Route],
        nodes: tuple[Node, ...],
        health_check: HealthCheck,
    ) -> DesiredState:
        """This state without ``removed`` (route objects of this state) and with ``added``,
        and the given nodes and health check: equal to the constructor's result for the same
        routes, with the same checks, but only the changed routes are checked against the rest
        and merged into the sorted order (a delta costs its size, not the state's). The result
        remembers the change (``change``: this state, added, removed) for
        ``lbprovider.haproxy.apply.derive_layout``."""
        _check(isinstance(nodes, tuple), "tuples")
        _check_members(added, nodes, health_check)
        routes = list(self.routes)
        keys, ids = set(self._keys), set(self._ids)
        for r in removed:
            at = bisect.bisect_left(routes, r.key, key=_route_key)
            _check(at < len(routes) and routes[at] is r, "removed route not in the state")
            del routes[at]
            keys.discard(r.key)
            ids.discard(r.route_id)
        for r in added:
            _check(r.key not in keys, f"duplicate route VIP:port: {r.key}")
            _check(r.route_id not in ids, f"duplicate route_id: {r.route_id}")
            keys.add(r.key)
            ids.add(r.route_id)
            bisect.insort(routes, r, key=_route_key)
        state = object.__new__(DesiredState)
        for name, value in (
            ("routes", tuple(routes)),
            ("nodes", _sorted_nodes(nodes)),
            ("health_check", health_check),
            ("_keys", keys),
            ("_ids", ids),
            ("change", (weakref.ref(self), tuple(added), tuple(removed))),
        ):
            object.__setattr__(state, name, value)
        return state


def _check_members(
    routes: Sequence[Route], nodes: tuple[Node, ...], health_check: HealthCheck
) -> None:
    _check(all(isinstance(r, Route) for r in routes), "routes must be Route")
    _check(all(isinstance(n, Node) for n in nodes), "nodes must be Node")
    _check(isinstance(health_check, HealthCheck), "health_check")


def _sorted_nodes(nodes: tuple[Node, ...]) -> tuple[Node, ...]:
    """``nodes`` by name, once their names and addresses are checked unique."""
    _unique([n.name for n in nodes], "node name")
    _unique([n.address for n in nodes], "node address")
    return tuple(sorted(nodes, key=lambda n: n.name))


def _route_key(route: Route) -> str:
    return route.key


def _unique(values: list[object], what: str) -> set[object]:
    seen: set[object] = set()
    for value in values:
        _check(value not in seen, f"duplicate {what}: {value}")
        seen.add(value)
    return seen


@dataclass(frozen=True)
class Settings:
    """Host-level knobs of the rendered config (not per Service).

    ``run_dir`` holds the config, maps, sockets and the server-state file; it must be private
    to the agent. Timeouts in milliseconds.
    """

    run_dir: str
    bind_mode: BindMode = BindMode.WILDCARD
    bind_address: IPAddress | None = None  # wildcard mode: None = all IPv4 addresses
    transparent: bool = False  # per-vip mode: bind VIPs not configured on this host
    # HAProxy needs about 2 file descriptors per connection: 8000 fits a 20000 hard limit.
    maxconn: int = 8000
    hard_stop_after_ms: int = 600_000
    timeout_client_ms: int = 60_000
    timeout_server_ms: int = 60_000
    timeout_connect_ms: int = 5_000
    min_local_slots: int = 8
    min_allow_slots: int = 8
    max_profiles: int = 64
    nbthread: int = 2

    def __post_init__(self) -> None:
        ok = isinstance(self.run_dir, str) and _PATH_RE.fullmatch(self.run_dir) is not None
        _check(ok, "run_dir must be an absolute path of safe characters")
        _check(len(self.run_dir) < 80, "run_dir too long for Unix socket paths")
        _enum(self.bind_mode, BindMode, "bind_mode")
        if self.bind_address is not None:
            _check(
                isinstance(self.bind_address, ipaddress.IPv4Address | ipaddress.IPv6Address),
                "bind_address",
            )
        _check(isinstance(self.transparent, bool), "transparent must be a bool")
        check_int(self.maxconn, "maxconn", 1, MAX_MAXCONN)
        check_int(self.hard_stop_after_ms, "hard_stop_after_ms", 1000, MAX_TIMEOUT_MS)
        for name in ("timeout_client_ms", "timeout_server_ms", "timeout_connect_ms"):
            check_int(getattr(self, name), name, 1, MAX_TIMEOUT_MS)
        check_int(self.min_local_slots, "min_local_slots", 1, 4096)
        check_int(self.min_allow_slots, "min_allow_slots", 1, 4096)
        check_int(self.max_profiles, "max_profiles", 1, 1024)
        check_int(self.nbthread, "nbthread", 1, 64)
