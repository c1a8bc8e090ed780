"""BGP mode with real daemons: a router namespace running BIRD 2 with ECMP, two fleet hosts each
with HAProxy and the BgpAnnouncer's BIRD, a client and a Service endpoint behind the router.
"""

from __future__ import annotations

import signal
import time

import pytest

from lbprovider.announce import AnnounceState
from tests.announce.conftest import GAPS, VIP4, VIP6, Lab, nexthops
from tests.announce.netlab import ClientLoop, HealthInput, sh, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.haproxy, pytest.mark.slow]


def _curl(lab: Lab, vip: str) -> str:
    host = f"[{vip}]" if ":" in vip else vip
    out = sh(
        "ip",
        "netns",
        "exec",
        lab.client,
        "python3",
        "-c",
        "import sys, urllib.request as u; r = u.urlopen(sys.argv[1], timeout=3); "
        "print(r.headers['X-Host'], r.read().decode().strip())",
        f"http://{host}/",
    )
    return out.stdout.strip()


def test_router_learns_vip_from_both_hosts_and_client_reaches_service(bgp_lab: Lab) -> None:
    assert nexthops(bgp_lab, VIP4) == {"h1", "h2"}
    assert nexthops(bgp_lab, VIP6) == {"h1", "h2"}
    for vip in (VIP4, VIP6):
        assert _curl(bgp_lab, vip).endswith("service ok")
    for host in bgp_lab.hosts.values():
        status = {a.vip: a for a in host.announcer.status()}
        assert {status[VIP4].state, status[VIP6].state} == {AnnounceState.ANNOUNCED}
        assert "2/2" not in status[VIP4].detail  # one IPv4 peer: "1/1 peers established"
        assert status[VIP4].detail == "bgp: 1/1 peers established"


def test_vip_is_withdrawn_before_removal_and_announced_after_add(bgp_lab: Lab) -> None:
    h1 = bgp_lab.hosts["h1"].announcer
    h1.update([VIP6], True)  # the agent is about to remove VIP4 from h1's HAProxy
    wait_for(lambda: nexthops(bgp_lab, VIP4) == {"h2"}, "VIP4 withdrawn by h1 only")
    assert nexthops(bgp_lab, VIP6) == {"h1", "h2"}
    assert {a.vip: a.state for a in h1.status()} == {VIP6: AnnounceState.ANNOUNCED}
    h1.update([VIP4, VIP6], True)  # HAProxy took VIP4 again: announce after add
    wait_for(lambda: nexthops(bgp_lab, VIP4) == {"h1", "h2"}, "VIP4 announced again")


def test_haproxy_stop_withdraws_its_routes_and_client_keeps_reaching_the_vip(
    bgp_lab: Lab,
) -> None:
    h1, h2 = bgp_lab.hosts["h1"], bgp_lab.hosts["h2"]
    health = HealthInput(h1.haproxy, lambda: h1.announcer.update([VIP4, VIP6], False))  # type: ignore[arg-type]
    try:
        loop = ClientLoop(
            bgp_lab.net,
            bgp_lab.client,
            VIP4,
            keep=VIP4,
            keep_count=24,
            duration=4.0,
            interval=0.01,
            timeout=0.3,
        )
        time.sleep(0.8)
        stopped_at = time.time()
        bgp_lab.net.stop(h1.haproxy, signal.SIGTERM)  # type: ignore[arg-type]
        wait_for(lambda: nexthops(bgp_lab, VIP4) == {"h2"}, "h1's route withdrawn")
        result = loop.result()
    finally:
        health.close()
    assert nexthops(bgp_lab, VIP6) == {"h2"}
    assert {a.state for a in h1.announcer.status()} == {AnnounceState.WITHDRAWN}
    assert result.hosts_after(stopped_at + 1.0) == {"h2"}
    survivors = [after for before, after in result.kept if before == "h2"]
    assert survivors and all(a == "h2" for a in survivors), result.kept
    gap = result.gap_ms()
    GAPS.append(("bgp: haproxy stops on h1", gap, len(result.failures), len(result.requests)))
    assert gap <= 1000, gap
    assert h2.announcer.healthy()


def test_vanished_host_is_dropped_by_bfd(bgp_lab: Lab) -> None:
    h1 = bgp_lab.hosts["h1"]
    loop = ClientLoop(
        bgp_lab.net,
        bgp_lab.client,
        VIP4,
        keep=VIP4,
        keep_count=24,
        duration=5.0,
        interval=0.01,
        timeout=0.3,
    )
    time.sleep(0.8)
    cut_at = time.time()
    bgp_lab.cut(h1)
    wait_for(lambda: nexthops(bgp_lab, VIP4) == {"h2"}, "BFD dropped h1", timeout=5)
    detected_ms = (time.time() - cut_at) * 1000
    result = loop.result()
    assert result.hosts_after(cut_at + 3.0) == {"h2"}
    survivors = [after for before, after in result.kept if before == "h2"]
    assert survivors and all(a == "h2" for a in survivors), result.kept
    gap = result.gap_ms()
    GAPS.append(("bgp+bfd: h1 vanishes", gap, len(result.failures), len(result.requests)))
    assert gap <= 3000, (gap, detected_ms)
