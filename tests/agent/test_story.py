"""The end-to-end story through records: a pool in 127.x, a Service, two nodes' NodePorts →
VIP:port answers from both; a cordoned node takes no new connections; back → both. And the
Serving flag follows what the agent reports."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select

from lbprovider.db.models import FleetHost
from lbprovider.db.session import transaction
from tests.fleet.helpers import add_service, make_pool, service_data, set_node
from tests.haproxy.conftest import Backends, free_port
from tests.metrics.conftest import scrape, value

from .conftest import HOST, Fleet, get, serving, try_get, wait_until

pytestmark = pytest.mark.haproxy


def nodes_up(fleet: Fleet) -> None:
    set_node(fleet.sessions, "node-1", "127.0.0.2")
    set_node(fleet.sessions, "node-2", "127.0.0.3")


def spread(ip: str, port: int, n: int = 30) -> Counter[str]:
    return Counter(get(ip, port).split(":")[0] for _ in range(n))


def test_vip_answers_from_both_nodes_drains_and_comes_back(
    fleet: Fleet, backends: Backends
) -> None:
    make_pool(fleet.sessions, "127.30.0.1-127.30.0.20")
    nodes_up(fleet)
    np, port = backends.node_port(), free_port()
    fleet.start_agent()
    (ip,) = add_service(fleet.sessions, service_data("web", [(port, np)]))
    wait_until(lambda: try_get(ip, port), what="VIP answers")
    wait_until(lambda: set(spread(ip, port)) == {"n1", "n2"}, what="both nodes")
    wait_until(lambda: serving(fleet, "web")[0], what="Serving")
    assert serving(fleet, "web")[1] == "served by 1 fleet host"

    set_node(fleet.sessions, "node-1", "127.0.0.2", draining=True)
    wait_until(lambda: set(spread(ip, port)) == {"n2"}, what="node-1 drained")
    set_node(fleet.sessions, "node-1", "127.0.0.2", draining=False)
    wait_until(lambda: set(spread(ip, port)) == {"n1", "n2"}, what="node-1 back")

    def counted() -> int:
        return int(host_status(fleet)["counters"].get(f"{ip}:{port}", {}).get("conn_cnt", 0))

    wait_until(lambda: counted() >= 90, what="connections counted in the heartbeat")
    with transaction(fleet.sessions) as s:
        host = s.scalar(select(FleetHost).where(FleetHost.name == HOST))
        assert host is not None and host.error == ""
        assert host.applied_version and host.status["vips"] == [ip]
        servers = {(x["backend"], x["server"]) for x in host.status["servers"]}
        assert ("be_nodes", "node-1") in servers and ("be_nodes", "node-2") in servers
    reported_apply_counters(fleet)


def reported_apply_counters(fleet: Fleet) -> None:
    """The new port took a reload and the drain and return runtime commands; the agent's
    heartbeat counts both, and /metrics shows them for the host, in sync with the served state."""
    wait_until(lambda: host_status(fleet).get("runtime_commands_total"), what="commands counted")
    status = host_status(fleet)
    assert status["reloads_timed"] >= 1
    assert 0 < status["reload_seconds_last"] <= status["reload_seconds_total"] < 30
    samples = scrape(fleet.server.url + "/metrics")
    commands = value(samples, "lbprovider_fleet_runtime_commands_total", host=HOST)
    assert commands is not None and commands >= status["runtime_commands_total"] >= 2
    total = value(samples, "lbprovider_fleet_reload_seconds_total", host=HOST)
    assert total is not None and total >= status["reload_seconds_total"]
    timed = value(samples, "lbprovider_fleet_timed_reloads_total", host=HOST)
    assert timed is not None and timed >= status["reloads_timed"]
    assert value(samples, "lbprovider_fleet_host_in_sync", host=HOST) == 1.0
    assert value(samples, "lbprovider_fleet_host_version_lag_seconds", host=HOST) == 0.0


def host_status(fleet: Fleet, name: str = HOST) -> dict[str, Any]:
    with transaction(fleet.sessions) as s:
        host = s.scalar(select(FleetHost).where(FleetHost.name == name))
        return dict(host.status) if host is not None else {}
