"""Bytes through a real HAProxy: routing by VIP:port, nodes, options, no-reload changes."""

from __future__ import annotations

import socket
import time
from collections import Counter
from ipaddress import ip_network

import pytest

from lbprovider.haproxy.model import NodeState, RouteOptions

from .conftest import Backends, free_port, get, nodes, route, try_get, vip

pytestmark = pytest.mark.haproxy


def wait_for(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_vip_port_reaches_its_nodeport_on_both_nodes(lab_factory, backends: Backends) -> None:
    port, np_a, np_b = free_port(), backends.node_port(), backends.node_port()
    lab = lab_factory([route(1, port, np_a), route(2, port, np_b)])
    seen_a = Counter(get(vip(1), port).split(":")[1] for _ in range(20))
    seen_b = {get(vip(2), port) for _ in range(20)}
    assert seen_a == Counter({str(np_a): 20})
    assert seen_b == {f"n1:{np_b}", f"n2:{np_b}"}
    assert try_get(vip(3), port) is None  # no route: refused, never another Service
    assert lab.worker_pid()


def test_new_service_on_bound_port_goes_live_without_reload(lab_factory, backends) -> None:
    port, np_a, np_b = free_port(), backends.node_port(), backends.node_port()
    lab = lab_factory([route(1, port, np_a)])
    pid = lab.worker_pid()
    result = lab.applier.apply(lab.state([route(1, port, np_a), route(2, port, np_b)]))
    assert result.applied and not result.reloaded and not result.errors
    assert get(vip(2), port).endswith(f":{np_b}")
    assert lab.worker_pid() == pid


def test_drained_node_takes_no_new_connections_and_comes_back(lab_factory, backends) -> None:
    port, np = free_port(), backends.node_port()
    routes = [route(1, port, np)]
    lab = lab_factory(routes)
    result = lab.applier.apply(lab.state(routes, nodes(NodeState.DRAINING, NodeState.READY)))
    assert result.applied and not result.reloaded
    assert {get(vip(1), port) for _ in range(20)} == {f"n2:{np}"}
    lab.applier.apply(lab.state(routes))
    assert {get(vip(1), port) for _ in range(20)} == {f"n1:{np}", f"n2:{np}"}


def test_node_removed_and_added_live(lab_factory, backends) -> None:
    port, np = free_port(), backends.node_port()
    routes = [route(1, port, np)]
    lab = lab_factory(routes)
    pid = lab.worker_pid()
    result = lab.applier.apply(lab.state(routes, nodes()[1:]))
    assert result.applied and not result.reloaded, result.errors
    assert {get(vip(1), port) for _ in range(10)} == {f"n2:{np}"}
    result = lab.applier.apply(lab.state(routes))
    assert result.applied and not result.reloaded, result.errors
    wait_for(lambda: {get(vip(1), port) for _ in range(10)} == {f"n1:{np}", f"n2:{np}"})
    assert lab.worker_pid() == pid


def test_thousand_routes_added_and_removed_without_reload(lab_factory, backends) -> None:
    port, np = free_port(), backends.node_port()
    base = [route(0, port, np)]
    lab = lab_factory(base)
    pid = lab.worker_pid()
    many = base + [route(i, port, np) for i in range(1, 1001)]
    result = lab.applier.apply(lab.state(many))
    assert result.applied and not result.reloaded, result.errors
    assert lab.worker_pid() == pid
    assert all(get(vip(i), port).endswith(f":{np}") for i in range(1001))
    result = lab.applier.apply(lab.state(base + many[500:]))
    assert result.applied and not result.reloaded, result.errors
    assert lab.worker_pid() == pid
    assert try_get(vip(250), port) is None
    assert all(get(vip(i), port).endswith(f":{np}") for i in [0, *range(500, 1001)])


def test_source_ranges_are_enforced(lab_factory, backends) -> None:
    port, np = free_port(), backends.node_port()
    elsewhere = RouteOptions(source_ranges=(ip_network("10.0.0.0/8"),))
    here = RouteOptions(source_ranges=(ip_network("127.0.0.0/8"), ip_network("10.0.0.0/8")))
    lab = lab_factory([route(1, port, np, options=elsewhere), route(2, port, np, options=here)])
    assert try_get(vip(1), port) is None
    assert get(vip(2), port).endswith(f":{np}")
    # Opening the first Service to loopback is a map change, not a reload.
    pid = lab.worker_pid()
    lab.applier.apply(lab.state([route(1, port, np, options=here), route(2, port, np)]))
    assert get(vip(1), port).endswith(f":{np}") and lab.worker_pid() == pid


def test_maxconn_refuses_connections_over_the_limit(lab_factory, backends) -> None:
    port, np = free_port(), backends.node_port()
    lab = lab_factory([route(1, port, np, options=RouteOptions(maxconn=1))])
    assert lab.worker_pid()
    with socket.create_connection((vip(1), port)) as held:
        held.sendall(b"GET / HTTP/1.0\r\n")  # incomplete: the connection stays open
        time.sleep(0.2)
        assert try_get(vip(1), port) is None
    wait_for(lambda: try_get(vip(1), port) is not None)


def _proxy_header_server(backends: Backends) -> tuple[int, list[bytes]]:
    import threading

    port = free_port()
    seen: list[bytes] = []
    listeners = []
    for addr in ("127.0.0.2", "127.0.0.3"):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(8)
        listeners.append(s)

    def serve(sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                seen.append(conn.recv(200))
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")

    for s in listeners:
        threading.Thread(target=serve, args=(s,), daemon=True).start()
    backends.raw_listeners = listeners  # type: ignore[attr-defined]
    return port, seen


def test_proxy_protocol_v1_and_v2_headers_reach_the_nodeport(lab_factory, backends) -> None:
    port, (np, seen) = free_port(), _proxy_header_server(backends)
    try:
        v1 = RouteOptions(proxy_protocol="v1")  # type: ignore[arg-type]
    except ValueError:
        v1 = None
    from lbprovider.haproxy.model import ProxyProtocol

    assert v1 is None  # a plain string is refused: only the enum passes
    opts1 = RouteOptions(proxy_protocol=ProxyProtocol.V1)
    opts2 = RouteOptions(proxy_protocol=ProxyProtocol.V2)
    lab = lab_factory([route(1, port, np, options=opts1), route(2, port, np, options=opts2)])
    try:
        assert get(vip(1), port) == "ok"
        assert seen[-1].startswith(f"PROXY TCP4 127.0.0.1 {vip(1)} ".encode())
        assert get(vip(2), port) == "ok"
        assert seen[-1].startswith(b"\r\n\r\n\x00\r\nQUIT\n")
    finally:
        for s in backends.raw_listeners:  # type: ignore[attr-defined]
            s.close()
    assert lab.worker_pid()


def test_local_policy_route_uses_its_health_check_port(lab_factory, backends) -> None:
    port, np = free_port(), backends.node_port()
    hc = free_port()
    backends.serve("127.0.0.3", hc, "healthy")  # only n2 has local endpoints
    lab = lab_factory([route(1, port, np)])
    pid = lab.worker_pid()
    local = route(2, port, np, health_check_node_port=hc)
    result = lab.applier.apply(lab.state([route(1, port, np), local]))
    assert result.applied, result.errors
    # n1's check on the healthCheckNodePort fails: all traffic goes to n2.
    wait_for(lambda: {get(vip(2), port) for _ in range(10)} == {f"n2:{np}"}, timeout=8)
    assert {get(vip(1), port) for _ in range(20)} == {f"n1:{np}", f"n2:{np}"}
    assert result.reloaded or lab.worker_pid() == pid
