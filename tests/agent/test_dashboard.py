"""The dashboard renders what a real agent reports: the fleet page and a Service's per-node
backend health come from a heartbeat of an agent driving real HAProxy, not from a hand-written
status, so the shape the agent writes and the shape the dashboard reads cannot drift apart."""

from __future__ import annotations

import re

import pytest

from lbprovider.fleet.models import HostStatus
from tests.fleet.helpers import add_service, make_pool, service_data, set_node
from tests.haproxy.conftest import Backends, free_port

from .conftest import HOST, Fleet, try_get, wait_until
from .dashboard import signed_in
from .test_story import host_status

pytestmark = pytest.mark.haproxy


def test_fleet_page_and_service_health_render_a_real_heartbeat(
    fleet: Fleet, backends: Backends
) -> None:
    make_pool(fleet.sessions, "127.31.0.1-127.31.0.20")
    set_node(fleet.sessions, "node-1", "127.0.0.2")
    set_node(fleet.sessions, "node-2", "127.0.0.3", draining=True)
    np, port = backends.node_port(), free_port()
    fleet.start_agent()
    (ip,) = add_service(fleet.sessions, service_data("web", [(port, np)]))
    wait_until(lambda: try_get(ip, port), what="VIP answers")

    def reported() -> HostStatus | None:
        status = HostStatus.model_validate(host_status(fleet))  # the stored shape IS HostStatus
        ok = status.route_backends and any(s.state.startswith("UP") for s in status.servers)
        return status if ok else None

    status = wait_until(reported, what="heartbeat with servers and route backends")
    backend = status.route_backends[f"shop/web/{ip}:{port}"]  # type: ignore[index]
    mine = {s.server: s.state for s in status.servers if s.backend == backend}
    assert set(mine) == {"node-1", "node-2"}

    web = signed_in(fleet.server.url, fleet.sessions)
    try:
        page = web.get("/fleet").text
        assert HOST in page and re.search(r">\d+ s ago<", page)
        assert f"{backend}<" in page and ">node-1<" in page and ">node-2<" in page
        assert "No backend servers reported." not in page
        detail = web.get("/services/shop/web").text
        assert "Per-node backend health appears here" not in detail
        rows = re.findall(r"<tr><td>([^<]+)</td><td[^>]*>([^<]+)</td><td[^>]*>([^<]+)</td>", detail)
        assert (HOST, f"{ip}:{port}", "node-1") in rows and (HOST, f"{ip}:{port}", "node-2") in rows
        assert ">UP<" in detail and (">DRAIN<" in detail or ">NOLB<" in detail)
    finally:
        web.close()
