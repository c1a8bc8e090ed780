"""The real agent in BGP mode inside a network namespace: its BIRD announces a Service's VIP to
a router (BIRD 2 with ECMP) only while its HAProxy serves it, withdraws a VIP before removing it,
withdraws everything when HAProxy dies and when the agent stops, and reports who announces which
VIP since when in its heartbeat.

The lab: a router namespace, a switch, the fleet host ``h1`` (agent + HAProxy + BIRD), a client
and a node behind the router. The API runs in the test process on loopback and also listens
inside ``h1`` (a socket made there), so the agent reaches it without leaving its namespace.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from lbprovider.agent.loop import Agent
from lbprovider.api.app import create_app
from lbprovider.config import Settings
from lbprovider.db.models import Base, FleetHost
from lbprovider.db.session import make_engine, session_factory, transaction
from tests.announce.conftest import PASSWORD, ROUTER_BIRD, Lab, _switch_lab, routes
from tests.announce.netlab import NetLab, sh, wait_for
from tests.api.conftest import LiveServer, api_settings
from tests.fleet.helpers import add_service, make_pool, remove_service, service_data, set_node

from . import netns
from .conftest import Fleet
from .dashboard import signed_in

pytestmark = [pytest.mark.netns, pytest.mark.haproxy, pytest.mark.slow]

HOST = "h1"
NODE = "192.0.2.70"  # the node behind the router, answering "service ok" on :8080


@dataclass
class BgpFleet:
    lab: Lab
    fleet: Fleet
    host_ns: str
    run_dir: Path
    dashboard: str  # the app's URL outside the namespaces


def _bgp_host(lab: Lab) -> str:
    net = lab.net
    ns = net.ns(HOST)
    net.port(lab.switch, ns, "eth0", f"p-{HOST}")
    net.addr(ns, "eth0", "192.0.2.11/26")
    net.route(ns, "default", "via", "192.0.2.1")
    return ns


@pytest.fixture
def bgp_fleet(tmp_path: Path) -> Iterator[BgpFleet]:
    net = NetLab()
    server: LiveServer | None = None
    engine = None
    try:
        lab = _switch_lab(net, with_router=True)
        conf = net.tmp / "router-bird.conf"
        conf.write_text(ROUTER_BIRD)
        net.spawn(lab.router, "bird", "-f", "-c", str(conf), "-s", str(net.tmp / "router.ctl"))
        host_ns = _bgp_host(lab)
        engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
        Base.metadata.create_all(engine)
        sessions = session_factory(engine)
        settings = api_settings(
            engine.url.render_as_string(hide_password=False),
            fleet_health_check_kind="tcp",
            fleet_health_check_port=8080,
            fleet_health_check_interval_ms=300,
            fleet_long_poll_max_seconds=5.0,
            fleet_state_poll_seconds=0.05,
        )
        server = LiveServer(create_app(settings, engine=engine))
        inside = netns.listen_in(host_ns)  # the same API, reachable from inside h1
        server.thread = threading.Thread(
            target=server.server.run, kwargs={"sockets": [server.sock, inside]}, daemon=True
        )
        server.start()
        fleet = Fleet(engine, sessions, server, 8080, {})
        dashboard = server.url
        fleet.server.port = inside.getsockname()[1]  # the agent's API URL
        yield BgpFleet(lab, fleet, host_ns, net.tmp / "h1", dashboard)
    finally:
        if server is not None:
            server.stop()
        if engine is not None:
            engine.dispose()
        net.close()


class NetnsAgent:
    """The real Agent, started, run and closed by one thread inside the host namespace."""

    def __init__(self, bf: BgpFleet) -> None:
        announce = Settings(
            _env_file=None,  # type: ignore[call-arg]
            announce_mode="bgp",
            announce_run_dir=str(bf.run_dir),
            announce_bgp_local_asn=65001,
            announce_bgp_router_id="192.0.2.11",
            announce_bgp_peers=[
                {"address": "192.0.2.1", "asn": 65000, "password": PASSWORD, "bfd": True}
            ],
        )
        state_dir = tempfile.mkdtemp(prefix="lbp-ag-", dir="/tmp")
        self.state_dir = state_dir
        config = bf.fleet.config(HOST, state_dir=state_dir, settings=announce)
        self.agent = Agent(config)
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.thread = netns.thread_in(bf.host_ns, self._life, "agent-h1")
        assert self.started.wait(30), "agent did not start"
        if self.error is not None:
            raise self.error

    def _life(self) -> None:
        try:
            self.agent.start()
        except BaseException as e:
            self.error = e
            self.started.set()
            return
        self.started.set()
        try:
            self.agent.run()
        finally:
            self.agent.close()  # withdraws everything, stops BIRD

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(timeout=20)
        if self.agent.process is not None:
            self.agent.process.stop(timeout=5)  # our HAProxy master, by its own handle
        shutil.rmtree(self.state_dir, ignore_errors=True)


def status(bf: BgpFleet) -> dict[str, Any]:
    with transaction(bf.fleet.sessions) as s:
        host = s.scalar(select(FleetHost).where(FleetHost.name == HOST))
        return dict(host.status) if host is not None and host.status else {}


def announced(bf: BgpFleet, vip: str) -> bool:
    return "192.0.2.11" in routes(bf.lab, vip)


def client_get(bf: BgpFleet, vip: str) -> str:
    out = sh(
        "ip",
        "netns",
        "exec",
        bf.lab.client,
        "python3",
        "-c",
        "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=3).read().decode())",
        f"http://{vip}/",
        check=False,
    )
    return out.stdout.strip()


def test_agent_announces_served_vips_and_withdraws_them(bgp_fleet: BgpFleet) -> None:
    bf = bgp_fleet
    make_pool(bf.fleet.sessions, "198.51.100.20-198.51.100.29")
    set_node(bf.fleet.sessions, "node-1", NODE)
    a, b = (add_service(bf.fleet.sessions, service_data(n, [(80, 8080)]))[0] for n in "ab")
    agent = NetnsAgent(bf)
    try:
        wait_for(lambda: announced(bf, a) and announced(bf, b), "router learns both VIPs")
        assert client_get(bf, a) == "service ok"
        wait_for(
            lambda: (
                {x["vip"]: x["state"] for x in status(bf).get("announcements", [])}
                == {a: "announced", b: "announced"}
            ),
            "heartbeat reports both VIPs announced",
        )
        since = {x["vip"]: x["since"] for x in status(bf)["announcements"]}
        assert all(since.values())
        web = signed_in(bf.dashboard, bf.fleet.sessions)
        try:
            page = web.get("/fleet").text  # rendered from the agent's own heartbeat
        finally:
            web.close()
        for vip in (a, b):
            assert re.search(rf">{re.escape(vip)}</td><td><span[^>]*>announced</span>", page)
        assert "bgp: 1/1 peers established" in page and re.search(r">\d+ s ago</td>", page)

        remove_service(bf.fleet.sessions, "b")  # withdrawn before HAProxy unmaps it
        wait_for(lambda: not announced(bf, b), "router forgets the removed VIP")
        assert announced(bf, a) and client_get(bf, a) == "service ok"
        wait_for(
            lambda: [x["vip"] for x in status(bf)["announcements"]] == [a],
            "heartbeat: only a",
        )
        assert status(bf)["announcements"][0]["since"] == since[a]  # a never moved

        process = agent.agent.process
        assert process is not None
        died = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)  # our master (own PID) hard-stops: HAProxy is down
        wait_for(lambda: not announced(bf, a), "route withdrawn when HAProxy is down")
        gap = time.monotonic() - died
        assert gap < 2.0, f"withdrawal took {gap:.2f}s"
        wait_for(
            lambda: [x["state"] for x in status(bf)["announcements"]] == ["withdrawn"],
            "heartbeat: withdrawn",
        )
    finally:
        agent.stop()
    assert not announced(bf, a)
    assert not (bf.run_dir / "bird.pid").exists() or not _bird_alive(bf.run_dir)


def test_stopping_the_agent_withdraws_its_routes(bgp_fleet: BgpFleet) -> None:
    bf = bgp_fleet
    make_pool(bf.fleet.sessions, "198.51.100.20-198.51.100.29")
    set_node(bf.fleet.sessions, "node-1", NODE)
    (a,) = add_service(bf.fleet.sessions, service_data("a", [(80, 8080)]))
    agent = NetnsAgent(bf)
    try:
        wait_for(lambda: announced(bf, a), "router learns the VIP")
        assert client_get(bf, a) == "service ok"
    finally:
        agent.stop()
    wait_for(lambda: not announced(bf, a), "route withdrawn when the agent stops")
    assert not _bird_alive(bf.run_dir)


def _bird_alive(run_dir: Path) -> bool:
    try:
        pid = int((run_dir / "bird.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return Path(f"/proc/{pid}").exists()
