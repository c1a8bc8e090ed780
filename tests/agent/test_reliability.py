"""The fleet under change and failure, through the API and a real agent: 1,000 Services
without a reload, hitless changes under load, a refused or failed reload never replaces what
serves, a restarted agent and hand edits converge, the API going away changes nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from lbprovider.db.models import FleetHost
from lbprovider.db.session import transaction
from lbprovider.haproxy.layout import ROUTES_MAP
from lbprovider.haproxy.runtime import HAProxyError, RuntimeClient, del_map, set_server_state
from tests.fleet.helpers import (
    add_service,
    make_pool,
    put_service,
    remove_service,
    service_data,
    set_node,
)
from tests.haproxy.conftest import free_port

from .conftest import HOST, Fleet, WrkResult, get, run_wrk, serve_on, serving, try_get, wait_until

pytestmark = pytest.mark.haproxy

LOAD_ROUND_SECONDS = 5
MIN_LOAD_ROUNDS = 8


def setup(fleet: Fleet, pool: str = "127.40.0.0/22") -> None:
    make_pool(fleet.sessions, pool)
    set_node(fleet.sessions, "node-1", "127.0.0.2")
    set_node(fleet.sessions, "node-2", "127.0.0.3")


def host_row(fleet: Fleet) -> FleetHost:
    """The host's row (an empty one until its first report)."""
    with transaction(fleet.sessions) as s:
        host = s.scalar(select(FleetHost).where(FleetHost.name == HOST))
        return host if host is not None else FleetHost(name=HOST, error="", status={})


def worker(fleet: Fleet) -> int:
    """The current worker PID (the master CLI is briefly away while it re-executes)."""
    agent = fleet.agents[0][0]
    assert agent.process is not None
    process = agent.process

    def pid() -> int:
        try:
            return process.show_proc().workers[-1]
        except HAProxyError:
            return 0

    return int(wait_until(pid, what="master answers"))


@pytest.mark.slow
def test_thousand_services_come_and_go_without_a_reload(
    fleet: Fleet, fast_backend: Callable[[], int]
) -> None:
    setup(fleet)
    np, port = fast_backend(), free_port()
    (base,) = add_service(fleet.sessions, service_data("base", [(port, np)]))
    fleet.start_agent()
    wait_until(lambda: try_get(base, port), what="base answers")
    pid = worker(fleet)
    process = fleet.agents[0][0].process
    assert process is not None
    reloads = process.show_proc().reloads
    with transaction(fleet.sessions) as s:
        ips = [put_service(s, service_data(f"s{i}", [(port, np)]))[0] for i in range(1000)]
    wait_until(lambda: try_get(ips[-1], port), timeout=30, what="last VIP answers")
    assert [ip for ip in [base, *ips] if try_get(ip, port) is None] == []
    assert worker(fleet) == pid
    wait_until(lambda: serving(fleet, "s999")[0], timeout=30, what="Serving")
    with transaction(fleet.sessions) as s:
        from lbprovider.services.loadbalancers import retire_service
        from tests.fleet.helpers import ACTOR

        for i in range(1000):
            retire_service(session=s, namespace="shop", name=f"s{i}", actor=ACTOR, reason="t")
    wait_until(lambda: try_get(ips[0], port) is None, timeout=30, what="VIPs gone")
    assert [ip for ip in ips if try_get(ip, port) is not None] == []
    assert get(base, port).startswith("n")
    assert worker(fleet) == pid
    assert process.show_proc().reloads == reloads


@pytest.mark.slow
def test_no_request_fails_while_100_changes_and_reloads_are_applied(
    fleet: Fleet, fast_backend: Callable[[], int]
) -> None:
    setup(fleet)
    np, port = fast_backend(), free_port()
    (base,) = add_service(fleet.sessions, service_data("base", [(port, np)]))
    config = fleet.config(hard_stop_after_seconds=120.0, check_timeout_seconds=0.05)
    agent = fleet.start_agent(config)
    wait_until(lambda: try_get(base, port), what="base answers")
    url = f"http://{base}:{port}/"
    results: dict[str, list[WrkResult]] = {"kept": [], "fresh": []}
    changing = threading.Event()
    changing.set()

    def load(name: str, **wrk: Any) -> None:
        # Rounds of wrk until the changes are done (and at least one full round after the
        # first change), so every change lands under load however slow the machine is; and
        # at least MIN_LOAD_ROUNDS, so the volume checked below does not depend on how fast
        # the agent applies the changes.
        while changing.is_set() or len(results[name]) < MIN_LOAD_ROUNDS:
            results[name].append(run_wrk(url, LOAD_ROUND_SECONDS, **wrk))

    # Keep-alive connections carry the volume; "Connection: close" ones open a new TCP
    # connection per request, so they cross every reload and every map change.
    loads = [
        threading.Thread(target=load, args=("kept",), kwargs={"close": False, "connections": 8}),
        threading.Thread(target=load, args=("fresh",), kwargs={"connections": 2, "threads": 1}),
    ]
    for t in loads:
        t.start()
    try:
        time.sleep(1.0)  # the load is running before the first change
        apply_changes(fleet, port, np)
    finally:
        changing.clear()
        for t in loads:
            t.join()
    for name, rounds in results.items():
        for res in rounds:
            assert res.socket_errors == 0 and res.non_2xx == 0, (name, res.text)
    total = sum(r.requests for rounds in results.values() for r in rounds)
    assert total >= 100_000, {k: [r.requests for r in v] for k, v in results.items()}
    assert sum(r.requests for r in results["fresh"]) > 1000
    assert agent.process is not None
    proc = agent.process.show_proc()
    assert proc.reloads >= 5 and proc.failed_reloads == 0


def apply_changes(fleet: Fleet, port: int, np: int) -> None:
    """100 changes: Services added and removed on the bound port, and every 10th on a new
    port (a skeleton change: a reload)."""
    for i in range(100):
        if i % 10 == 9:
            new_port = free_port()
            (ip,) = add_service(fleet.sessions, service_data(f"p{i}", [(new_port, np)]))
            wait_until(lambda ip=ip, p=new_port: try_get(ip, p), what=f"change {i}")
        elif i % 2 == 0:
            (ip,) = add_service(fleet.sessions, service_data(f"c{i}", [(port, np)]))
            wait_until(lambda ip=ip: try_get(ip, port), what=f"change {i}")
        else:
            remove_service(fleet.sessions, f"c{i - 1}")
            wait_until(lambda ip=ip: try_get(ip, port) is None, what=f"change {i}")


def test_failed_bind_keeps_the_old_worker_and_is_reported(
    fleet: Fleet, fast_backend: Callable[[], int]
) -> None:
    import socket

    setup(fleet)
    np, port, taken = fast_backend(), free_port(), free_port()
    (a,) = add_service(fleet.sessions, service_data("a", [(port, np)]))
    fleet.start_agent()
    wait_until(lambda: try_get(a, port), what="a answers")
    pid = worker(fleet)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", taken))
    squatter.listen()
    try:
        (b,) = add_service(fleet.sessions, service_data("b", [(taken, np)]))
        wait_until(lambda: "reload failed" in host_row(fleet).error, what="error reported")
        assert worker(fleet) == pid and get(a, port).startswith("n")
        ok, why = serving(fleet, "b")
        assert not ok and "reload failed" in why, why
        assert serving(fleet, "a")[0]
    finally:
        squatter.close()
    wait_until(lambda: try_get(b, taken), timeout=20, what="b served once the port is free")
    wait_until(lambda: serving(fleet, "b")[0] and host_row(fleet).error == "", what="healed")


def test_too_many_option_combinations_are_refused_and_the_old_state_serves(
    fleet: Fleet, fast_backend: Callable[[], int]
) -> None:
    setup(fleet)
    np, port = fast_backend(), free_port()
    (a,) = add_service(fleet.sessions, service_data("a", [(port, np)]))
    agent = fleet.start_agent()
    wait_until(lambda: serving(fleet, "a")[0], what="a serving")
    applied = agent.progress.applied
    with transaction(fleet.sessions) as s:
        for i in range(70):  # 70 distinct timeouts: 70 backend profiles > 64
            opts = {"timeout_server_ms": 1000 + i}
            put_service(s, service_data(f"t{i}", [(port, np)], options=opts))
    wait_until(lambda: "refused" in host_row(fleet).error, what="refusal reported")
    assert agent.progress.applied is applied and get(a, port).startswith("n")
    assert "option combinations" in host_row(fleet).error


def test_restarted_agent_attaches_and_converges(
    fleet: Fleet, fast_backend: Callable[[], int]
) -> None:
    setup(fleet)
    np, port = fast_backend(), free_port()
    (a,) = add_service(fleet.sessions, service_data("a", [(port, np)]))
    first = fleet.start_agent()
    wait_until(lambda: try_get(a, port), what="a answers")
    process = first.process
    assert process is not None
    # the new worker answers while the re-executed master may not yet take CLI connections
    wait_until(lambda: first.progress.applied is not None, what="first apply confirmed")
    pid = process.show_proc().workers[-1]
    fleet.stop_agent(first, stop_haproxy=False)
    try:
        (b,) = add_service(fleet.sessions, service_data("b", [(port, np)]))
        remove_service(fleet.sessions, "a")
        assert get(a, port).startswith("n")  # nobody applies while no agent runs
        second = fleet.start_agent(fleet.config(state_dir=str(first.config.state_dir)))
        assert second.process is not None and not second.process.owned  # attached
        wait_until(lambda: try_get(b, port) and try_get(a, port) is None, what="converged")
        assert process.show_proc().workers[-1] == pid
        fleet.stop_agent(second, stop_haproxy=False)
    finally:
        process.stop(timeout=5)


def test_hand_edits_through_the_socket_are_undone(
    fleet: Fleet, fast_backend: Callable[[], int]
) -> None:
    setup(fleet)
    np, port = fast_backend(), free_port()
    (a,) = add_service(fleet.sessions, service_data("a", [(port, np)]))
    agent = fleet.start_agent()
    wait_until(lambda: try_get(a, port), what="a answers")
    run = agent.hsettings.run_dir
    with RuntimeClient(f"{run}/admin.sock") as client:
        client.execute([del_map(f"{run}/{ROUTES_MAP}", f"{a}:{port}")])
        client.execute([set_server_state("be_nodes", "node-1", "maint")])
    wait_until(lambda: try_get(a, port), timeout=5, what="route restored")
    with RuntimeClient(f"{run}/admin.sock") as client:
        wait_until(
            lambda: all(
                s.admin_state & 0x01 == 0 for s in client.show_servers_state() if s.name == "node-1"
            ),
            what="node-1 out of maintenance",
        )


def test_api_away_keeps_serving_across_an_agent_restart_and_is_reported(
    fleet: Fleet, fast_backend: Callable[[], int]
) -> None:
    setup(fleet)
    np, port = fast_backend(), free_port()
    (a,) = add_service(fleet.sessions, service_data("a", [(port, np)]))
    first = fleet.start_agent()
    wait_until(lambda: serving(fleet, "a")[0], what="a serving")
    process = first.process
    assert process is not None
    old_port, app = fleet.server.port, fleet.server.server.config.app
    fleet.server.stop()
    try:
        time.sleep(1.0)
        assert get(a, port).startswith("n")
        fleet.stop_agent(first, stop_haproxy=False)
        second = fleet.start_agent(fleet.config(state_dir=str(first.config.state_dir)))
        time.sleep(0.5)
        assert get(a, port).startswith("n")
        assert second.progress.applied is not None  # the last good state, from disk
        fleet.server = serve_on(app, old_port)
        wait_until(
            lambda: host_row(fleet).status.get("api_outage_seconds", 0) > 0,
            what="outage reported",
        )
        fleet.stop_agent(second, stop_haproxy=False)
    finally:
        process.stop(timeout=5)
