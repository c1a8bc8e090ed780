"""Rendering of BIRD and keepalived configs: what the daemons accept, what hostile values can't
do, how VIPs group, and settings turned into configs. Checked by the daemons' own parsers.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbprovider.announce import (
    BgpConfig,
    BgpPeer,
    InvalidValue,
    NullAnnouncer,
    VrrpAnnouncer,
    VrrpConfig,
    announcer_from_settings,
    bgp_config_from_settings,
)
from lbprovider.announce.bird import render_bird
from lbprovider.announce.keepalived import group_vips, render_keepalived
from lbprovider.announce.model import check_ip
from lbprovider.config import Settings
from tests.announce.netlab import NetLab

V4 = ipaddress.IPv4Address


def bgp(**kw: object) -> BgpConfig:
    peers = kw.pop("peers", (BgpPeer(check_ip("192.0.2.1", "p"), 65000, "pw", True),))
    return BgpConfig(local_asn=65001, router_id=V4("192.0.2.11"), peers=peers, **kw)  # type: ignore[arg-type]


def vrrp(run_dir: str = "/run/lbp-test", **kw: object) -> VrrpConfig:
    return VrrpConfig(  # type: ignore[arg-type]
        interface=kw.pop("interface", "eth0"),
        address=check_ip("192.0.2.11", "a"),
        peers=kw.pop("peers", (check_ip("192.0.2.12", "p"),)),
        run_dir=run_dir,
        **kw,
    )


def vips(n: int, base: str = "198.51.100.0") -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    start = ipaddress.ip_address(base)
    return [start + i for i in range(n)]  # type: ignore[misc]


def bird_accepts(text: str) -> subprocess.CompletedProcess[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".conf", dir="/tmp") as f:
        f.write(text)
        f.flush()
        return subprocess.run(["bird", "-p", "-c", f.name], capture_output=True, text=True)


# -- BIRD ------------------------------------------------------------------------------------
def test_bird_accepts_dual_stack_with_bfd_password_and_backup_paths() -> None:
    cfg = bgp(
        peers=(
            BgpPeer(check_ip("192.0.2.1", "p"), 65000, "s3cr#t x", True),
            BgpPeer(check_ip("2001:db8:1::1", "p"), 4200000000, None, False),
        ),
        backup_prepend=2,
    )
    text = render_bird(
        cfg, [V4("198.51.100.1"), check_ip("2001:db8:100::1", "v")], [V4("198.51.100.2")]
    )
    assert bird_accepts(text).returncode == 0, bird_accepts(text).stderr
    assert "route 198.51.100.1/32 blackhole;" in text
    assert "route 2001:db8:100::1/128 blackhole;" in text
    assert text.count("bgp_path.prepend(65001);") == 4  # two per family filter
    assert 'password "s3cr#t x";' in text and "bfd on;" in text


def test_bird_accepts_thousands_of_vips() -> None:
    text = render_bird(bgp(), vips(3000))
    assert bird_accepts(text).returncode == 0
    assert text.count("blackhole;") == 3000


@pytest.mark.parametrize(
    "password",
    [
        'x"; import all; #',
        "a\nprotocol kernel { ipv4 { export all; }; }",
        "back\\slash",
        "",
        "é",
        "x" * 81,
    ],
    ids=["quote", "newline", "backslash", "empty", "non-ascii", "too long"],
)
def test_hostile_password_is_refused(password: str) -> None:
    with pytest.raises(InvalidValue, match="password"):
        BgpPeer(check_ip("192.0.2.1", "p"), 65000, password)


@pytest.mark.parametrize(
    ("field", "value"),
    [("asn", 0), ("asn", 2**32), ("asn", True), ("port", 0), ("multihop", 256)],
)
def test_out_of_range_numbers_are_refused(field: str, value: object) -> None:
    kw: dict[str, object] = {"address": check_ip("192.0.2.1", "p"), "asn": 65000, field: value}
    with pytest.raises(InvalidValue):
        BgpPeer(**kw)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=80))
def test_any_accepted_password_stays_inside_its_string(password: str) -> None:
    try:
        peer = BgpPeer(check_ip("192.0.2.1", "p"), 65000, password)
    except InvalidValue:
        return
    text = render_bird(bgp(peers=(peer,)), [])
    lines = [line for line in text.splitlines() if "password" in line]
    assert lines == [f'    password "{password}";']
    assert len(text.splitlines()) == len(
        render_bird(bgp(peers=(BgpPeer(check_ip("192.0.2.1", "p"), 65000, "x"),)), []).splitlines()
    )


@pytest.mark.parametrize(
    "vip",
    [
        "198.51.100.1/32",
        "198.51.100.1; route 0.0.0.0/0",
        "fe80::1%eth0",
        "224.0.0.1",
        "127.0.0.1",
        "0.0.0.0",
        "",
    ],
)
def test_hostile_or_impossible_vips_are_refused(vip: str) -> None:
    with pytest.raises(InvalidValue):
        NullAnnouncer().update([vip], True)


def test_router_id_must_be_ipv4_and_peers_unique() -> None:
    with pytest.raises(InvalidValue, match="router id"):
        BgpConfig(65001, check_ip("2001:db8::1", "r"), (BgpPeer(check_ip("192.0.2.1", "p"), 1),))  # type: ignore[arg-type]
    peer = BgpPeer(check_ip("192.0.2.1", "p"), 1)
    with pytest.raises(InvalidValue, match="duplicate"):
        bgp(peers=(peer, peer))
    with pytest.raises(InvalidValue, match="source"):
        BgpPeer(check_ip("192.0.2.1", "p"), 1, bfd=True, multihop=2)


# -- keepalived ------------------------------------------------------------------------------
def test_more_than_255_vips_group_stably_into_few_instances() -> None:
    many = vips(600) + [check_ip(f"2001:db8:100::{i:x}", "v") for i in range(1, 101)]
    groups = group_vips(many, 4)
    assert sum(len(g) for g in groups) == 700 and all(100 < len(g) < 250 for g in groups)
    fewer = group_vips(many[::2], 4)  # half the VIPs gone: none of the others moved
    for g, members in enumerate(fewer):
        assert set(members) <= set(groups[g])
    text = render_keepalived(vrrp(groups=4), many)
    instances = re.findall(r"vrrp_instance (\S+) \{", text)
    vrids = re.findall(r"virtual_router_id (\d+)", text)
    assert instances == ["lbp_g0", "lbp_g1", "lbp_g2", "lbp_g3"]
    assert sorted(map(int, vrids)) == [50, 51, 52, 53]
    for vip in many:
        assert text.count(f" {vip}/") == 1


def test_priorities_rotate_so_each_host_prefers_its_share() -> None:
    hosts = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
    prefs = {}
    for me in hosts:
        cfg = VrrpConfig(
            interface="eth0",
            address=check_ip(me, "a"),
            peers=tuple(check_ip(h, "p") for h in hosts if h != me),
            run_dir="/run/x",
            priority=200,
        )
        prefs[me] = [cfg.priority_of(g) for g in range(cfg.group_count)]
    for g in range(3):
        column = sorted((prefs[h][g] for h in hosts), reverse=True)
        assert column == [200, 190, 180]
    assert {max(range(3), key=lambda g, h=h: prefs[h][g]) for h in hosts} == {0, 1, 2}


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"interface": "eth0\n}\nvrrp_script x {"}, "interface"),
        ({"interface": "a" * 16}, "interface"),
        ({"run_dir": '/run/x" y'}, "run dir"),
        ({"run_dir": "relative"}, "run dir"),
        ({"check_socket": '/run/s\nscript "/bin/sh"'}, "haproxy socket"),
        ({"peers": ()}, "peers"),
        ({"groups": 250, "router_id_base": 50}, "exceeds 255"),
        ({"priority": 255}, "priority"),
    ],
    ids=[
        "newline in interface",
        "long interface",
        "quote in run dir",
        "relative run dir",
        "newline in socket",
        "no peers",
        "vrid overflow",
        "priority 255",
    ],
)
def test_hostile_or_impossible_vrrp_settings_are_refused(kw: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidValue, match=match):
        vrrp(**kw)


@pytest.mark.netns
def test_keepalived_accepts_the_rendered_config() -> None:
    net = NetLab()
    try:
        ns = net.ns("kt")
        subprocess.run(
            ["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
            check=True,
        )
        run = net.tmp / "k"
        run.mkdir()
        cfg = vrrp(str(run), groups=8, check_socket=f"{run}/haproxy.sock")
        (run / "check-haproxy").write_text("#!/bin/sh\nexit 0\n")
        (run / "check-haproxy").chmod(0o700)
        conf = run / "keepalived.conf"
        conf.write_text(render_keepalived(cfg, [*vips(300), check_ip("2001:db8::5", "v")]))
        out = subprocess.run(
            ["ip", "netns", "exec", ns, "keepalived", "-t", "-f", str(conf)],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        conf.write_text(render_keepalived(cfg, []) + "\nvrrp_instance broken {\n")
        out = subprocess.run(
            ["ip", "netns", "exec", ns, "keepalived", "-t", "-f", str(conf)],
            capture_output=True,
            text=True,
        )
        assert out.returncode != 0
    finally:
        net.close()


# -- settings --------------------------------------------------------------------------------
def test_settings_build_each_mode() -> None:
    assert isinstance(announcer_from_settings(Settings()), NullAnnouncer)
    s = Settings.model_validate(
        {
            "announce_mode": "bgp",
            "announce_bgp_local_asn": 65001,
            "announce_bgp_router_id": "192.0.2.11",
            "announce_bgp_password": "fleet",
            "announce_bgp_bfd": True,
            "announce_bgp_peers": [
                {"address": "192.0.2.1", "asn": 65000},
                {"address": "2001:db8:1::1", "asn": 65000, "bfd": False, "password": "own"},
            ],
        }
    )
    cfg = bgp_config_from_settings(s)
    assert [(p.password, p.bfd) for p in cfg.peers] == [("fleet", True), ("own", False)]
    assert bird_accepts(render_bird(cfg, vips(3))).returncode == 0
    v = Settings.model_validate(
        {
            "announce_mode": "vrrp",
            "announce_vrrp_interface": "eth0",
            "announce_vrrp_address": "192.0.2.11",
            "announce_vrrp_peers": ["192.0.2.12"],
            "announce_vrrp_advert_seconds": 0.2,
            "announce_run_dir": "/run/lbp-x",
        }
    )
    announcer = announcer_from_settings(v)
    assert isinstance(announcer, VrrpAnnouncer) and announcer.config.advert_centis == 20


def test_incomplete_mode_settings_are_refused_with_the_setting_name() -> None:
    with pytest.raises(InvalidValue, match="LBP_ANNOUNCE_BGP_LOCAL_ASN"):
        announcer_from_settings(Settings(announce_mode="bgp"))
    with pytest.raises(InvalidValue, match="LBP_ANNOUNCE_VRRP_INTERFACE"):
        announcer_from_settings(Settings(announce_mode="vrrp"))
    bad = Settings.model_validate(
        {
            "announce_mode": "bgp",
            "announce_bgp_local_asn": 65001,
            "announce_bgp_router_id": "192.0.2.11",
            "announce_bgp_peers": [{"address": "192.0.2.1; export all", "asn": 65000}],
        }
    )
    with pytest.raises(InvalidValue, match="LBP_ANNOUNCE_BGP_PEERS"):
        announcer_from_settings(bad)
