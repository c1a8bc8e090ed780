"""Validation and injection: hostile values never add a directive, a map line or a command.

Pure tests (no HAProxy process) except the last, which sends hostile runtime arguments to a
real socket and checks nothing changed.
"""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbprovider.haproxy.layout import build_layout
from lbprovider.haproxy.model import (
    Balance,
    DesiredState,
    HealthCheck,
    InvalidModel,
    Node,
    ProxyProtocol,
    Route,
    RouteOptions,
    Settings,
)
from lbprovider.haproxy.render import render_allow_map, render_config, render_route_map
from lbprovider.haproxy.runtime import (
    RuntimeClient,
    UnsafeArgument,
    add_map,
    add_server,
    del_map,
    set_map,
    set_server_state,
)

from .conftest import free_port, route, vip

HOSTILE = st.text(
    alphabet=st.sampled_from([*list("ab1-._/\n\r#\"' ;\\%{}$\t\x00>"), "\u2028", "é"]),
    min_size=1,
    max_size=40,
).filter(lambda s: any(c in s for c in "\n\r#\"' ;\\%{}$\t\x00>\u2028é"))

RUN = Settings(run_dir="/tmp/lbp-safety")
A = ip_address("127.1.0.1")
N1 = ip_address("127.0.0.2")


@pytest.mark.parametrize(
    ("build", "why"),
    [
        (lambda: Route("ns/a:80", A, 0, 30000), "port 0"),
        (lambda: Route("ns/a:80", A, 80, 70000), "node port over 65535"),
        (lambda: Route("ns/a:80", A, True, 30000), "bool is not a port"),  # type: ignore[arg-type]
        (lambda: Route("ns/a:80", "127.0.0.1", 80, 30000), "address as text"),  # type: ignore[arg-type]
        (lambda: Route("ns/a:80", ip_address("0.0.0.0"), 80, 30000), "unspecified VIP"),
        (lambda: Route("ns/a:80", ip_address("224.0.0.1"), 80, 30000), "multicast VIP"),
        (lambda: RouteOptions(balance="static-rr"), "balance outside the set"),  # type: ignore[arg-type]
        (lambda: RouteOptions(proxy_protocol="v3"), "proxy protocol v3"),  # type: ignore[arg-type]
        (lambda: RouteOptions(timeout_client_ms=0), "zero timeout"),
        (lambda: RouteOptions(maxconn=-1), "negative maxconn"),
        (lambda: RouteOptions(source_ranges=("10.0.0.0/8",)), "range as text"),  # type: ignore[arg-type]
        (lambda: Node("node 1", N1), "space in node name"),
        (lambda: HealthCheck(path="/healthz x"), "space in check path"),
        (lambda: Settings(run_dir="relative/dir"), "relative run dir"),
        (
            lambda: DesiredState(routes=(Route("a", A, 80, 30000), Route("b", A, 80, 30001))),
            "two routes on one VIP:port",
        ),
        (lambda: DesiredState(nodes=(Node("n", N1), Node("n", A))), "duplicate node name"),
    ],
)
def test_unsafe_values_are_refused(build, why) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidModel):
        build()


@given(HOSTILE)
def test_hostile_names_never_reach_a_model(value: str) -> None:
    with pytest.raises(InvalidModel):
        Node(value, N1)
    with pytest.raises(InvalidModel):
        Route(value, A, 80, 30000)
    with pytest.raises(InvalidModel):
        HealthCheck(path="/" + value)


@given(HOSTILE)
def test_hostile_runtime_arguments_never_become_commands(value: str) -> None:
    for build in (
        lambda: add_map("/m", value, "v"),
        lambda: add_map("/m", "k", value),
        lambda: set_map("/m", "k", value),
        lambda: del_map(value, "k"),
        lambda: set_server_state("b", value, "ready"),
        lambda: set_server_state("b", "s", value),
        lambda: add_server(value, "s", "127.0.0.1"),
        lambda: add_server("b", value, "127.0.0.1"),
    ):
        with pytest.raises(UnsafeArgument):
            build()


names = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True)


@st.composite
def states(draw: st.DrawFn) -> DesiredState:
    node_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    nodes = tuple(Node(n, ip_address("10.0.0.1") + i) for i, n in enumerate(node_names))
    count = draw(st.integers(1, 12))
    routes = []
    for i in range(count):
        options = RouteOptions(
            proxy_protocol=draw(st.sampled_from([None, *ProxyProtocol])),
            timeout_client_ms=draw(st.none() | st.integers(1, 10**6)),
            balance=draw(st.sampled_from(list(Balance))),
            maxconn=draw(st.integers(0, 10**6)),
            source_ranges=tuple(
                ip_network(f"10.{b}.0.0/16") for b in draw(st.lists(st.integers(0, 255)))
            ),
            source_affinity=draw(st.booleans()),
        )
        local = draw(st.none() | st.integers(1, 65535))
        routes.append(
            Route(
                f"ns/{draw(names)}-{i}", A + i, 80, 30000 + i, options, health_check_node_port=local
            )
        )
    return DesiredState(routes=tuple(routes), nodes=nodes)


DIRECTIVE_PREFIXES = (
    "global", "defaults", "frontend ", "backend ", "#", "    ",
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(states())
def test_rendered_files_have_exactly_the_expected_lines(state: DesiredState) -> None:
    layout = build_layout(state, RUN)
    config = render_config(layout)
    for line in config.splitlines():
        assert line == "" or line.startswith(DIRECTIVE_PREFIXES), line
    assert config.count("\nfrontend ") == 1
    servers = [ln for ln in config.splitlines() if ln.startswith("    server ")]
    assert len(servers) == len(layout.servers)
    route_lines = render_route_map(layout).splitlines()
    assert len(route_lines) == len(state.routes)
    assert all(len(ln.split(" ")) == 2 for ln in route_lines)
    for cidrs in layout.allow_maps.values():
        assert len(render_allow_map(cidrs).splitlines()) == len(cidrs)


def test_skeleton_does_not_grow_with_services() -> None:
    def size(n: int) -> int:
        routes = tuple(Route(f"ns/s{i}", A + i, 80 + i % 3, 30000 + i % 2000) for i in range(n))
        state = DesiredState(routes=routes, nodes=(Node("n1", N1),))
        return len(render_config(build_layout(state, RUN)))

    assert size(10) == size(10_000)


@pytest.mark.haproxy
def test_hostile_text_at_a_real_socket_changes_nothing(lab_factory, backends) -> None:  # type: ignore[no-untyped-def]
    lab = lab_factory([route(1, free_port(), backends.node_port())])
    run = lab.settings.run_dir
    hostile = ["x\nadd map m k v", "x;clear map m", "x #c", "a b", "v\\", '"q"', "x\rshow info"]
    with RuntimeClient(f"{run}/admin.sock") as client:
        before = (client.show_map(f"{run}/routes.map"), client.show_servers_state())
        for value in hostile:
            with pytest.raises(UnsafeArgument):
                client.execute([add_map(f"{run}/routes.map", f"{vip(1)}:1", value)])
            with pytest.raises(UnsafeArgument):
                client.execute([set_server_state("be_nodes", value, "maint")])
        after = (client.show_map(f"{run}/routes.map"), client.show_servers_state())
    assert after == before
