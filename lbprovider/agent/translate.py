"""Turn a FleetState from the API into the validated HAProxy model, route by route.

Why: a value that came over the network must pass ``lbprovider.haproxy.model``'s checks
before it can reach a config file, a map or a runtime command. One bad route must not stop
every other Service: it is left out and reported as refused (``route_errors``).

What it must not do: talk to HAProxy or the API.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from lbprovider.fleet.models import FleetState, NodeSpec, RouteSpec
from lbprovider.haproxy.model import (
    Balance,
    DesiredState,
    HealthCheck,
    HealthCheckKind,
    InvalidModel,
    Node,
    NodeState,
    ProxyProtocol,
    Route,
    RouteOptions,
    parse_address,
)


@dataclass
class Translated:
    """The HAProxy model of a state, plus what was refused and why."""

    desired: DesiredState
    refused: dict[str, str] = field(default_factory=dict)  # route_id -> reason
    problems: list[str] = field(default_factory=list)  # nodes, health check
    # id(spec) -> spec of the state's routes, when a Translator made it (its own map, shared:
    # not to be changed)
    specs: dict[int, RouteSpec] | None = None


class Translator:
    """:func:`translate` that remembers each route it translated, by route object: a state
    that shares most routes with the previous one (a delta) costs only its new routes, and an
    unchanged route keeps its ``Route`` object (which the applier recognises by identity)."""

    def __init__(self) -> None:
        self._routes: dict[str, tuple[RouteSpec, Route | str]] = {}
        self._last: tuple[FleetState, Translated] | None = None
        # id(spec) -> spec of the last state's routes (holding them keeps the ids valid)
        self._specs: dict[int, RouteSpec] = {}

    def __call__(self, state: FleetState) -> Translated:
        if self._last is not None and self._last[0] is state:
            return self._last[1]
        specs = dict(zip(map(id, state.routes), state.routes, strict=True))
        translated = self._delta(state, specs)
        if translated is None:
            translated = self._whole(state)
        translated.specs = specs
        self._specs, self._last = specs, (state, translated)
        return translated

    def _delta(self, state: FleetState, specs: dict[int, RouteSpec]) -> Translated | None:
        """The last translation with only the route objects ``state`` does not share with the
        last state translated and validated; ``None`` (translate it whole) when the last one
        refused a route, a new route is refused or collides, or a spec object repeats. Equal
        to :meth:`_whole`'s result then: no route is refused either way, and the routes end
        in the same (sorted) order."""
        if self._last is None or self._last[1].refused or len(specs) != len(state.routes):
            return None
        old_specs, old = self._specs, self._routes
        added_specs = [specs[i] for i in specs.keys() - old_specs.keys()]
        gone_specs = [old_specs[i] for i in old_specs.keys() - specs.keys()]
        cache = dict(old)
        removed: dict[int, Route] = {}
        for spec in gone_specs:
            made = cache.pop(spec.route_id)[1]
            assert isinstance(made, Route)  # the last translation refused nothing
            removed[id(made)] = made
        added: list[Route] = []
        for spec in added_specs:
            hit = old.get(spec.route_id)
            if hit is not None and hit[0] == spec and id(hit[1]) in removed:
                route: Route | str = hit[1]  # equal content: the same Route object
            else:
                route = _translate_route(spec)
                if isinstance(route, str):
                    return None
            cache[spec.route_id] = (spec, route)
            assert isinstance(route, Route)
            if removed.pop(id(route), None) is None:
                added.append(route)
        problems: list[str] = []
        nodes = _nodes(state.nodes, problems)
        hc = _health_check(state, problems)
        try:
            desired = self._last[1].desired.with_changes(
                added, tuple(removed.values()), tuple(nodes), hc
            )
        except InvalidModel:
            return None  # a collision: the whole translation says which route is refused
        self._routes = cache
        return Translated(desired, {}, problems)

    def _whole(self, state: FleetState) -> Translated:
        cache: dict[str, tuple[RouteSpec, Route | str]] = {}
        old = self._routes

        def route_of(spec: RouteSpec) -> Route | str:
            hit = old.get(spec.route_id)
            if hit is not None and (hit[0] is spec or hit[0] == spec):
                cache[spec.route_id] = hit
                return hit[1]
            try:
                made: Route | str = _route(spec)
            except (InvalidModel, ValueError) as e:
                made = f"refused: {e}"
            cache[spec.route_id] = (spec, made)
            return made

        translated = translate(state, route_of)
        self._routes = cache
        return translated


def _translate_route(spec: RouteSpec) -> Route | str:
    try:
        return _route(spec)
    except (InvalidModel, ValueError) as e:
        return f"refused: {e}"


def translate(
    state: FleetState, route_of: Callable[[RouteSpec], Route | str] = _translate_route
) -> Translated:
    """Validate every route and node of ``state``; never raises on bad content."""
    refused: dict[str, str] = {}
    problems: list[str] = []
    routes: list[Route] = []
    keys: set[str] = set()
    ids: set[str] = set()
    for spec in state.routes:
        route = route_of(spec)
        if isinstance(route, str):
            refused[spec.route_id[:300]] = route
            continue
        if route.key in keys or route.route_id in ids:
            refused[spec.route_id] = "refused: duplicate VIP:port or route id"
            continue
        keys.add(route.key)
        ids.add(route.route_id)
        routes.append(route)
    nodes = _nodes(state.nodes, problems)
    hc = _health_check(state, problems)
    return Translated(DesiredState(tuple(routes), tuple(nodes), hc), refused, problems)


def _health_check(state: FleetState, problems: list[str]) -> HealthCheck:
    try:
        return HealthCheck(
            kind=HealthCheckKind(state.health_check.kind),
            port=state.health_check.port,
            path=state.health_check.path,
            interval_ms=state.health_check.interval_ms,
        )
    except (InvalidModel, ValueError) as e:
        problems.append(f"health check refused, default used: {e}")
        return HealthCheck()


def _route(spec: RouteSpec) -> Route:
    o = spec.options
    options = RouteOptions(
        proxy_protocol=ProxyProtocol(o.proxy_protocol) if o.proxy_protocol else None,
        timeout_client_ms=o.timeout_client_ms,
        timeout_server_ms=o.timeout_server_ms,
        timeout_connect_ms=o.timeout_connect_ms,
        balance=Balance(o.balance),
        maxconn=o.maxconn,
        source_ranges=tuple(ipaddress.ip_network(n, strict=True) for n in o.source_ranges),
        source_affinity=o.source_affinity,
    )
    return Route(
        route_id=spec.route_id,
        address=parse_address(spec.address),
        port=spec.port,
        node_port=spec.node_port,
        options=options,
        health_check_node_port=spec.health_check_node_port,
    )


def _nodes(specs: tuple[NodeSpec, ...], problems: list[str]) -> list[Node]:
    nodes: list[Node] = []
    names: set[str] = set()
    addresses: set[str] = set()
    for spec in specs:
        try:
            node = Node(spec.name, parse_address(spec.address), NodeState(spec.state))
        except (InvalidModel, ValueError) as e:
            problems.append(f"node refused: {e}")
            continue
        if node.name in names or str(node.address) in addresses:
            problems.append(f"node refused: duplicate {node.name}")
            continue
        names.add(node.name)
        addresses.add(str(node.address))
        nodes.append(node)
    return nodes
