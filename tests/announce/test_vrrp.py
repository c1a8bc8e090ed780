"""VRRP mode with real daemons: two fleet hosts on a switch (a bridge), each with HAProxy and the
VrrpAnnouncer's keepalived, a client and the Service endpoint on the same segment. VIP A's group
prefers one host and VIP B's the other, so each host holds a VIP while both are healthy.
"""

from __future__ import annotations

import signal
import time
from ipaddress import ip_address

import pytest

from lbprovider.announce import AnnounceState
from lbprovider.announce.keepalived import group_of
from tests.announce.conftest import GAPS, VIP4_A, VIP4_B, Host, Lab
from tests.announce.netlab import ClientLoop, HealthInput, sh, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.haproxy, pytest.mark.slow]


def holder(lab: Lab, vip: str) -> set[str]:
    """Hosts that have ``vip`` on their interface right now."""
    return {
        name
        for name, host in lab.hosts.items()
        if f" {vip}/" in sh("ip", "-n", host.ns, "-4", "addr", "show", "dev", "eth0").stdout
    }


def state_of(host: Host, vip: str) -> AnnounceState | None:
    return {a.vip: a.state for a in host.announcer.status()}.get(vip)


def _settled(lab: Lab) -> tuple[Host, Host]:
    """Wait until each VIP has one holder, each its preferred one; return (A's, B's holder)."""
    wait_for(
        lambda: (
            len(holder(lab, VIP4_A)) == 1
            and len(holder(lab, VIP4_B)) == 1
            and holder(lab, VIP4_A) != holder(lab, VIP4_B)
        ),
        "one master per VIP group",
    )
    a = lab.hosts[holder(lab, VIP4_A).pop()]
    b = lab.hosts[holder(lab, VIP4_B).pop()]
    return a, b


def test_vip_groups_are_spread_and_status_says_who_holds_them(vrrp_lab: Lab) -> None:
    assert group_of(ip_address(VIP4_A), 2) != group_of(ip_address(VIP4_B), 2)
    a, b = _settled(vrrp_lab)
    wait_for(lambda: state_of(a, VIP4_A) == AnnounceState.ANNOUNCED, "status: A announced")
    wait_for(lambda: state_of(b, VIP4_A) == AnnounceState.STANDBY, "status: A standby on b")
    assert state_of(b, VIP4_B) == AnnounceState.ANNOUNCED
    loop = ClientLoop(vrrp_lab.net, vrrp_lab.client, VIP4_A, duration=0.3)
    assert loop.result().hosts_after(0) == {a.name}
    # a new VIP served by both (a keepalived reload on each) leaves the holders where they are
    for host in vrrp_lab.hosts.values():
        host.announcer.update([VIP4_A, VIP4_B, "192.0.2.53"], True)
    wait_for(lambda: len(holder(vrrp_lab, "192.0.2.53")) == 1, "new VIP held once")
    time.sleep(1.0)
    assert (holder(vrrp_lab, VIP4_A), holder(vrrp_lab, VIP4_B)) == ({a.name}, {b.name})


def test_fault_is_reported_when_the_check_script_fails(vrrp_lab: Lab) -> None:
    owner, _ = _settled(vrrp_lab)
    vrrp_lab.net.stop(owner.haproxy, signal.SIGKILL)  # type: ignore[arg-type]
    wait_for(
        lambda: state_of(owner, VIP4_A) == AnnounceState.WITHDRAWN, "owner reports FAULT", timeout=6
    )


def test_owner_haproxy_stop_moves_the_vip_and_spares_the_other_hosts_connections(
    vrrp_lab: Lab,
) -> None:
    owner, other = _settled(vrrp_lab)
    health = HealthInput(
        owner.haproxy,
        lambda: owner.announcer.update(  # type: ignore[arg-type]
            [VIP4_A, VIP4_B], False
        ),
    )
    try:
        loop = ClientLoop(
            vrrp_lab.net,
            vrrp_lab.client,
            VIP4_A,
            keep=VIP4_B,
            keep_count=4,
            duration=4.0,
            interval=0.01,
            timeout=0.25,
        )
        time.sleep(0.8)
        stopped_at = time.time()
        vrrp_lab.net.stop(owner.haproxy, signal.SIGTERM)  # type: ignore[arg-type]
        wait_for(lambda: holder(vrrp_lab, VIP4_A) == {other.name}, "VIP A moved")
        result = loop.result()
    finally:
        health.close()
    assert result.hosts_after(stopped_at + 1.0) == {other.name}  # same IP, other host
    assert result.kept and all(after == other.name for _, after in result.kept), result.kept
    wait_for(lambda: state_of(owner, VIP4_A) == AnnounceState.WITHDRAWN, "owner in FAULT")
    gap = result.gap_ms()
    GAPS.append(("vrrp: owner's haproxy stops", gap, len(result.failures), len(result.requests)))
    assert gap <= 1000, gap


def test_vanished_owner_is_replaced(vrrp_lab: Lab) -> None:
    owner, other = _settled(vrrp_lab)
    loop = ClientLoop(
        vrrp_lab.net,
        vrrp_lab.client,
        VIP4_A,
        keep=VIP4_B,
        keep_count=4,
        duration=4.0,
        interval=0.01,
        timeout=0.25,
    )
    time.sleep(0.8)
    cut_at = time.time()
    vrrp_lab.cut(owner)
    wait_for(lambda: other.name in holder(vrrp_lab, VIP4_A), "VIP A taken over", timeout=5)
    result = loop.result()
    assert result.hosts_after(cut_at + 3.0) == {other.name}
    assert result.kept and all(after == other.name for _, after in result.kept), result.kept
    gap = result.gap_ms()
    GAPS.append(("vrrp: owner vanishes", gap, len(result.failures), len(result.requests)))
    assert gap <= 3000, gap


def test_check_script_drops_a_host_whose_haproxy_died_without_the_agent(vrrp_lab: Lab) -> None:
    owner, other = _settled(vrrp_lab)
    vrrp_lab.net.stop(owner.haproxy, signal.SIGKILL)  # type: ignore[arg-type]
    started = time.monotonic()
    wait_for(lambda: holder(vrrp_lab, VIP4_A) == {other.name}, "script moved VIP A", timeout=6)
    assert time.monotonic() - started < 4.0
