"""Fixtures of the announcement tests: a BGP lab (router + two hosts) and a VRRP lab (switch +
two hosts), each in network namespaces of its own, torn down by name and PID.

Measured gaps are collected and shown in the terminal summary (they go to bench/RESULTS.md).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from lbprovider.announce import BgpAnnouncer, BgpConfig, BgpPeer, VrrpAnnouncer, VrrpConfig
from lbprovider.announce.model import check_ip
from tests.announce.netlab import NetLab, sh, wait_for

GAPS: list[tuple[str, float, int, int]] = []

PASSWORD = "lab s3cret#1"
VIP4 = "198.51.100.10"
VIP6 = "2001:db8:100::10"

ROUTER_BIRD = """
router id 192.0.2.1;
timeformat protocol iso long;
protocol device { scan time 10; }
protocol kernel k4 { ipv4 { import none; export all; }; merge paths on; }
protocol kernel k6 { ipv6 { import none; export all; }; merge paths on; }
protocol bfd { interface "*" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }
template bgp fleet { local as 65000; hold time 9; keepalive time 3; connect retry time 1;
  bfd on; password "PASSWORD"; }
protocol bgp h1v4 from fleet { neighbor 192.0.2.11 as 65001; ipv4 { import all; export none; }; }
protocol bgp h2v4 from fleet { neighbor 192.0.2.12 as 65001; ipv4 { import all; export none; }; }
protocol bgp h1v6 from fleet { neighbor 2001:db8:1::11 as 65001;
  ipv6 { import all; export none; }; }
protocol bgp h2v6 from fleet { neighbor 2001:db8:1::12 as 65001;
  ipv6 { import all; export none; }; }
""".replace("PASSWORD", PASSWORD)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if GAPS:
        terminalreporter.section("announce: measured gaps")
        for name, ms, failed, total in GAPS:
            terminalreporter.write_line(
                f"{name}: gap {ms:.0f} ms ({failed}/{total} requests failed)"
            )


@pytest.fixture(autouse=True)
def _daemons_installed() -> None:
    for binary in ("bird", "birdc", "keepalived", "haproxy", "ip"):
        assert shutil.which(binary), f"{binary} missing: apt-get install -y bird2 keepalived"


@dataclass
class Host:
    name: str
    ns: str
    address: str
    announcer: BgpAnnouncer | VrrpAnnouncer
    haproxy: object = None
    port: str = ""  # its port on the switch


@dataclass
class Lab:
    net: NetLab
    client: str
    router: str
    switch: str
    hosts: dict[str, Host] = field(default_factory=dict)

    def cut(self, host: Host) -> None:
        """The host vanishes: its switch port goes dark, no goodbye on any protocol."""
        sh("ip", "-n", self.switch, "link", "set", host.port, "down")


def _switch_lab(net: NetLab, with_router: bool) -> Lab:
    sw = net.ns("sw")
    net.bridge(sw)
    client = net.ns("cl")
    router = net.ns("r") if with_router else ""
    node = net.ns("nd")
    if with_router:
        net.port(sw, router, "lan", "p-r")
        net.addr(router, "lan", "192.0.2.1/26")
        net.addr(router, "lan", "2001:db8:1::1/64")
        net.link(router, "cl", client, "eth0")
        net.addr(router, "cl", "192.0.2.65/30")
        net.addr(client, "eth0", "192.0.2.66/30")
        net.addr(router, "cl", "2001:db8:2::1/64")
        net.addr(client, "eth0", "2001:db8:2::2/64")
        net.route(client, "default", "via", "192.0.2.65")
        sh("ip", "-n", client, "-6", "route", "add", "default", "via", "2001:db8:2::1")
        net.link(router, "nd", node, "eth0")
        net.addr(router, "nd", "192.0.2.69/30")
        net.addr(node, "eth0", "192.0.2.70/30")
        net.route(node, "default", "via", "192.0.2.69")
        net.sysctl(
            router,
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.fib_multipath_hash_policy=1",
            "net.ipv6.fib_multipath_hash_policy=1",
        )
        net.node(node, "192.0.2.70")
    else:
        net.port(sw, client, "eth0", "p-cl")
        net.addr(client, "eth0", "192.0.2.100/24")
        net.port(sw, node, "eth0", "p-nd")
        net.addr(node, "eth0", "192.0.2.200/24")
        net.node(node, "192.0.2.200")
    return Lab(net, client, router, sw)


def _bgp_host(lab: Lab, name: str, last: int, vips: list[str]) -> Host:
    net = lab.net
    ns = net.ns(name)
    net.port(lab.switch, ns, "eth0", f"p-{name}")
    net.addr(ns, "eth0", f"192.0.2.{last}/26")
    net.addr(ns, "eth0", f"2001:db8:1::{last}/64")
    net.route(ns, "default", "via", "192.0.2.1")
    sh("ip", "-n", ns, "-6", "route", "add", "default", "via", "2001:db8:1::1")
    peers = tuple(
        BgpPeer(address=check_ip(a, "peer"), asn=65000, password=PASSWORD, bfd=True)
        for a in ("192.0.2.1", "2001:db8:1::1")
    )
    cfg = BgpConfig(
        local_asn=65001,
        router_id=check_ip(f"192.0.2.{last}", "id"),  # type: ignore[arg-type]
        peers=peers,
        hold_seconds=9,
        bfd_interval_ms=100,
        bfd_multiplier=3,
    )
    announcer = BgpAnnouncer(cfg, run_dir=f"{net.tmp}/{name}", netns=ns)
    announcer.start()
    announcer.hold_addresses(vips)  # HAProxy binds the VIPs on lo...
    host = Host(name, ns, f"192.0.2.{last}", announcer, port=f"p-{name}")
    host.haproxy = net.haproxy(ns, name, vips, "192.0.2.70")
    announcer.update(vips, True)  # ...and only then are they announced
    return host


def routes(lab: Lab, vip: str) -> str:
    family = "-6" if ":" in vip else "-4"
    return sh("ip", "-n", lab.router, family, "route", "show", vip).stdout


def nexthops(lab: Lab, vip: str) -> set[str]:
    """Hosts the router's FIB sends ``vip`` to (by the hosts' LAN addresses' last byte)."""
    out = routes(lab, vip)
    found = set()
    for last, name in (("11", "h1"), ("12", "h2")):
        if f"192.0.2.{last} " in out or f"2001:db8:1::{last} " in out:
            found.add(name)
    return found


@pytest.fixture
def bgp_lab() -> Iterator[Lab]:
    net = NetLab()
    lab = None
    try:
        lab = _switch_lab(net, with_router=True)
        conf = net.tmp / "router-bird.conf"
        conf.write_text(ROUTER_BIRD)
        net.spawn(lab.router, "bird", "-f", "-c", str(conf), "-s", str(net.tmp / "router.ctl"))
        for name, last in (("h1", 11), ("h2", 12)):
            lab.hosts[name] = _bgp_host(lab, name, last, [VIP4, VIP6])
        wait_for(
            lambda: nexthops(lab, VIP4) == {"h1", "h2"} and nexthops(lab, VIP6) == {"h1", "h2"},
            "router ECMP route from both hosts",
        )
        yield lab
    finally:
        if lab is not None:
            for host in lab.hosts.values():
                host.announcer.close()
        net.close()


def _vrrp_host(lab: Lab, name: str, last: int, peer: int, vips: list[str], run: str) -> Host:
    net = lab.net
    ns = net.ns(name)
    net.port(lab.switch, ns, "eth0", f"p-{name}")
    net.addr(ns, "eth0", f"192.0.2.{last}/24")
    cfg = VrrpConfig(
        interface="eth0",
        address=check_ip(f"192.0.2.{last}", "address"),
        peers=(check_ip(f"192.0.2.{peer}", "peer"),),
        run_dir=run,
        advert_centis=20,
        check_socket=f"{run}/haproxy.sock",
    )
    announcer = VrrpAnnouncer(cfg, netns=ns)
    announcer.start()  # sets ip_nonlocal_bind: HAProxy binds VIPs it does not hold
    host = Host(name, ns, f"192.0.2.{last}", announcer, port=f"p-{name}")
    host.haproxy = net.haproxy(ns, name, vips, "192.0.2.200", stats_socket=f"{run}/haproxy.sock")
    announcer.update(vips, True)
    return host


@pytest.fixture
def vrrp_lab() -> Iterator[Lab]:
    net = NetLab()
    lab = None
    vips = [VIP4_A, VIP4_B]
    try:
        lab = _switch_lab(net, with_router=False)
        lab.hosts["h1"] = _vrrp_host(lab, "h1", 11, 12, vips, f"{net.tmp}/h1")
        lab.hosts["h2"] = _vrrp_host(lab, "h2", 12, 11, vips, f"{net.tmp}/h2")
        yield lab
    finally:
        if lab is not None:
            for host in lab.hosts.values():
                host.announcer.close()
        net.close()


VIP4_A = "192.0.2.50"
VIP4_B = "192.0.2.52"  # hashes into the other group than VIP4_A
