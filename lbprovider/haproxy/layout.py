"""From a desired model to the concrete HAProxy layout: skeleton, map contents, servers.

Why: render.py (files) and apply.py (runtime commands) must agree exactly on backend names,
map lines and server options; both read them from a :class:`Layout` built here. Slot
assignments (which Local-policy Service owns which pre-declared backend, which allow-list owns
which map) are kept from HAProxy's live state when possible, so a running route never moves
while another one is added.

What it must not do: perform I/O, or let a value through that model.py did not validate.
See render.py for the design of the skeleton.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from lbprovider.haproxy.model import (
    Balance,
    BindMode,
    DesiredState,
    HealthCheck,
    InvalidModel,
    IPAddress,
    Node,
    NodeState,
    ProxyProtocol,
    Route,
    RouteOptions,
    Settings,
)

NODES_BACKEND = "be_nodes"
REJECT_BACKEND = "be_reject"
TABLE_BACKEND = "st_routes"
ROUTES_MAP = "routes.map"
LOCAL_CHECK_PATH = "/healthz"
VALUE_SEP = "|"


@dataclass(frozen=True)
class Profile:
    """Backend-level behaviour shared by every route with the same options.

    In TCP mode HAProxy 2.6 has no per-stream timeout action and ``timeout client`` belongs to
    the (shared) frontend, so a route's client and server timeouts become the backend's
    ``timeout tunnel`` (inactivity once the connection is established, applied to both sides)
    and ``timeout server``; ``timeout connect`` is the backend's.
    """

    proxy_protocol: ProxyProtocol | None
    balance: Balance
    timeout_connect_ms: int
    timeout_server_ms: int
    timeout_tunnel_ms: int

    @property
    def name(self) -> str:
        """A stable short id: equal options give the same backend names on every host."""
        raw = f"{self.proxy_protocol}|{self.balance}|{self.timeout_connect_ms}|"
        raw += f"{self.timeout_server_ms}|{self.timeout_tunnel_ms}"
        return "p" + hashlib.sha256(raw.encode()).hexdigest()[:10]

    @property
    def shared_backend(self) -> str:
        """The backend of ``externalTrafficPolicy: Cluster`` routes with this profile."""
        return f"bs_{self.name}"

    def local_backend(self, slot: int) -> str:
        """The pre-declared backend number ``slot`` for Local-policy routes."""
        return f"bl_{self.name}_{slot}"

    @property
    def server_options(self) -> tuple[str, ...]:
        """Per-server keywords (also needed by ``add server``, which ignores default-server)."""
        if self.proxy_protocol is ProxyProtocol.V1:
            return ("send-proxy",)
        if self.proxy_protocol is ProxyProtocol.V2:
            return ("send-proxy-v2",)
        return ()


def profile_of(options: RouteOptions, settings: Settings) -> Profile:
    """The profile a route's options select."""
    client = options.timeout_client_ms or settings.timeout_client_ms
    server = options.timeout_server_ms or settings.timeout_server_ms
    return Profile(
        proxy_protocol=options.proxy_protocol,
        balance=options.effective_balance,
        timeout_connect_ms=options.timeout_connect_ms or settings.timeout_connect_ms,
        timeout_server_ms=server,
        timeout_tunnel_ms=max(client, server),
    )


@dataclass(frozen=True)
class Skeleton:
    """Everything that needs a reload to change. Its size does not grow with Services."""

    settings: Settings
    binds: tuple[tuple[IPAddress | None, int], ...]  # (address or None = wildcard, port)
    profiles: tuple[Profile, ...]
    local_slots: tuple[tuple[Profile, int], ...]  # slot count per profile with Local routes
    allow_slots: int
    health_check: HealthCheck

    @property
    def digest(self) -> str:
        """Compared with the digest written in the running config to decide on a reload."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]

    def slot_counts(self) -> dict[Profile, int]:
        """Local slot capacity per profile."""
        return dict(self.local_slots)


@dataclass(frozen=True)
class ServerSpec:
    """One server line, the same in the config and in ``add server``."""

    backend: str
    name: str
    address: IPAddress
    options: tuple[str, ...]  # keywords after the address, without check/track
    check_port: int | None  # own health check on this port, None = tracks be_nodes
    maintenance: bool  # free Local slot: held in maintenance
    drain: bool


@dataclass(frozen=True)
class Layout:
    """The resolved layout: skeleton plus the dynamic content maps and servers carry."""

    skeleton: Skeleton
    route_map: Mapping[str, str]
    allow_maps: Mapping[int, tuple[str, ...]]  # slot 1..N -> CIDRs ("" slots are free)
    servers: tuple[ServerSpec, ...]
    nodes: tuple[Node, ...] = field(default=())

    def backends(self) -> list[str]:
        """Every backend that carries servers, in render order."""
        seen: dict[str, None] = {}
        for spec in self.servers:
            seen.setdefault(spec.backend, None)
        return list(seen)


def allow_map_name(slot: int) -> str:
    """File name of allow-list slot ``slot`` (1-based)."""
    return f"allow-{slot}.map"


def _capacity(count: int, minimum: int) -> int:
    size = minimum
    while size < count:
        size *= 2
    return size


def route_value(backend: str, node_port: int, maxconn: int, allow_slot: int) -> str:
    return VALUE_SEP.join((backend, str(node_port), str(maxconn), str(allow_slot)))


def parse_route_value(value: str) -> tuple[str, int, int, int] | None:
    """Split a live map value; ``None`` if it was not written by us."""
    parts = value.split(VALUE_SEP)
    if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
        return None
    return parts[0], int(parts[1]), int(parts[2]), int(parts[3])


def _binds(state: DesiredState, settings: Settings) -> tuple[tuple[IPAddress | None, int], ...]:
    if settings.bind_mode is BindMode.PER_VIP:
        return tuple(sorted({(r.address, r.port) for r in state.routes}, key=_bind_key))
    return tuple(sorted({(None, r.port) for r in state.routes}, key=_bind_key))


def _bind_key(bind: tuple[IPAddress | None, int]) -> tuple[int, str]:
    return (bind[1], str(bind[0]))


def build_skeleton(state: DesiredState, settings: Settings) -> Skeleton:
    """The skeleton ``state`` needs; a change of it is what forces a reload."""
    default = profile_of(RouteOptions(), settings)
    profiles = {default} | {profile_of(r.options, settings) for r in state.routes}
    if len(profiles) > settings.max_profiles:
        raise InvalidModel(f"{len(profiles)} option combinations exceed {settings.max_profiles}")
    local_counts: dict[Profile, int] = {}
    for route in state.routes:
        if route.is_local:
            prof = profile_of(route.options, settings)
            local_counts[prof] = local_counts.get(prof, 0) + 1
    allow_lists = {r.options.source_ranges for r in state.routes if r.options.source_ranges}
    return Skeleton(
        settings=settings,
        binds=_binds(state, settings),
        profiles=tuple(sorted(profiles, key=lambda p: p.name)),
        local_slots=tuple(
            (p, _capacity(n, settings.min_local_slots))
            for p, n in sorted(local_counts.items(), key=lambda i: i[0].name)
        ),
        allow_slots=_capacity(len(allow_lists), settings.min_allow_slots),
        health_check=state.health_check,
    )


@dataclass(frozen=True)
class LiveAssignments:
    """Slot ownership read back from HAProxy (routes map values, allow-list maps)."""

    route_backends: Mapping[str, str] = field(default_factory=dict)  # route key -> backend
    allow_contents: Mapping[int, frozenset[str]] = field(default_factory=dict)


def _assign_local_slots(
    routes: list[Route], skeleton: Skeleton, live: LiveAssignments
) -> dict[str, str]:
    """Route key -> Local slot backend, keeping a route's live slot when it still fits."""
    counts = skeleton.slot_counts()
    taken: set[str] = set()
    result: dict[str, str] = {}
    settings = skeleton.settings
    pending: list[tuple[Route, Profile]] = []
    for route in routes:
        prof = profile_of(route.options, settings)
        current = live.route_backends.get(route.key)
        valid = {prof.local_backend(i) for i in range(counts[prof])}
        if current in valid and current not in taken:
            result[route.key] = current
            taken.add(current)
        else:
            pending.append((route, prof))
    for route, prof in pending:
        free = next(b for i in range(counts[prof]) if (b := prof.local_backend(i)) not in taken)
        result[route.key] = free
        taken.add(free)
    return result


def _assign_allow_slots(
    lists: set[tuple[str, ...]], skeleton: Skeleton, live: LiveAssignments
) -> dict[tuple[str, ...], int]:
    """Allow-list -> slot, keeping a slot whose live content already equals the list."""
    result: dict[tuple[str, ...], int] = {}
    for slot, content in sorted(live.allow_contents.items()):
        match = next((lst for lst in sorted(lists) if frozenset(lst) == content), None)
        if match is not None and match not in result and 1 <= slot <= skeleton.allow_slots:
            result[match] = slot
    used = set(result.values())
    free = (s for s in range(1, skeleton.allow_slots + 1) if s not in used)
    for lst in sorted(lists):
        if lst not in result:
            result[lst] = next(free)
    return result


def build_layout(
    state: DesiredState, settings: Settings, live: LiveAssignments | None = None
) -> Layout:
    """Resolve ``state`` into map contents and servers, reusing live slot assignments."""
    live = live or LiveAssignments()
    skeleton = build_skeleton(state, settings)
    local_routes = [r for r in state.routes if r.is_local]
    local = _assign_local_slots(local_routes, skeleton, live)
    lists = {_cidrs(r.options) for r in state.routes if r.options.source_ranges}
    allow = _assign_allow_slots(lists, skeleton, live)
    route_map: dict[str, str] = {}
    for route in state.routes:
        prof = profile_of(route.options, settings)
        backend = local.get(route.key, prof.shared_backend)
        slot = allow[_cidrs(route.options)] if route.options.source_ranges else 0
        route_map[route.key] = route_value(backend, route.node_port, route.options.maxconn, slot)
    allow_maps = {s: () for s in range(1, skeleton.allow_slots + 1)} | {
        s: lst for lst, s in allow.items()
    }
    local_ports = {local[r.key]: r.health_check_node_port for r in local_routes}
    servers = _servers(state, skeleton, local_ports)
    return Layout(skeleton, route_map, allow_maps, servers, state.nodes)


def _cidrs(options: RouteOptions) -> tuple[str, ...]:
    return tuple(str(n) for n in options.source_ranges)


def _servers(
    state: DesiredState, skeleton: Skeleton, local_ports: Mapping[str, int | None]
) -> tuple[ServerSpec, ...]:
    specs: list[ServerSpec] = []
    hc = skeleton.health_check
    for node in state.nodes:
        specs.append(_spec(NODES_BACKEND, node, (), hc.port, maint=False))
    for prof in skeleton.profiles:
        for node in state.nodes:
            specs.append(_spec(prof.shared_backend, node, prof.server_options, None, False))
    for prof, count in skeleton.local_slots:
        for slot in range(count):
            backend = prof.local_backend(slot)
            port = local_ports.get(backend)
            for node in state.nodes:
                specs.append(
                    _spec(backend, node, prof.server_options, port or hc.port, port is None)
                )
    return tuple(specs)


def _spec(
    backend: str, node: Node, options: tuple[str, ...], check_port: int | None, maint: bool
) -> ServerSpec:
    return ServerSpec(
        backend=backend,
        name=node.name,
        address=node.address,
        options=options,
        check_port=check_port,
        maintenance=maint,
        drain=node.state is NodeState.DRAINING,
    )


def server_address(address: IPAddress) -> str:
    """A port-less server address: the port comes from ``set-dst-port`` per connection."""
    if isinstance(address, ipaddress.IPv6Address):
        return f"[{address}]"
    return str(address)
