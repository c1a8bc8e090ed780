"""Render the keepalived configuration of one fleet host (vrrp mode), and group VIPs.

Why: VRRP moves addresses between hosts on one L2 segment. VIPs are hashed into groups (one VRRP
instance each, virtual router id ``base + g``) so a VIP keeps its group while others come and
go; each host's priority for group ``g`` follows a rotation over the sorted host addresses, so
every host is the preferred master of a share of the groups. All VIPs sit in
``virtual_ipaddress_excluded``: adverts carry only the group's *anchor* — a link-local address
derived from the virtual router id, the same on every host (keepalived needs one address per
instance) — hence no 255-address limit and no advert mismatch while hosts briefly disagree
about which VIPs serve. A ``track_file`` written by the
agent (HAProxy down → ``1``) puts every instance in FAULT at once (priority-0 advert, the backup
takes over after its skew time); an optional check script probes HAProxy's master socket in
case the agent is gone too. On takeover keepalived sends gratuitous ARP / unsolicited NA.

What it must not do: run keepalived or interpolate an unchecked value.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from lbprovider.announce.model import (
    InvalidValue,
    IPAddress,
    check_ifname,
    check_int,
    check_ip,
    check_path,
    vip_key,
)

PRIORITY_STEP = 10
INSTANCE_PREFIX = "lbp_g"


@dataclass(frozen=True)
class VrrpConfig:
    """Everything of a host's keepalived config except the VIPs."""

    interface: str
    address: IPAddress  # this host's unicast source
    peers: tuple[IPAddress, ...]  # every other host on the segment
    run_dir: str
    priority: int = 200
    router_id_base: int = 50
    groups: int = 0  # 0: one per host
    advert_centis: int = 50  # VRRPv3 advert interval in 1/100 s
    check_socket: str | None = None

    def __post_init__(self) -> None:
        check_ifname(self.interface, "vrrp interface")
        object.__setattr__(self, "address", check_ip(self.address, "vrrp address"))
        peers = tuple(check_ip(p, "vrrp peer") for p in self.peers)
        object.__setattr__(self, "peers", peers)
        if not peers or self.address in peers or len(set(peers)) != len(peers):
            raise InvalidValue("vrrp peers: list every other host once, not this host")
        if any(p.version != self.address.version for p in peers):
            raise InvalidValue("vrrp peers: must be of the same family as the vrrp address")
        check_path(self.run_dir, "run dir")
        if self.check_socket is not None:
            check_path(self.check_socket, "haproxy socket")
        check_int(self.priority, "vrrp priority", 2, 254)
        check_int(self.groups, "vrrp groups", 0, 255)
        check_int(self.router_id_base, "vrrp router id base", 1, 255)
        check_int(self.advert_centis, "vrrp advert interval", 1, 4095)
        if self.router_id_base + self.group_count - 1 > 255:
            raise InvalidValue("vrrp router id base + groups exceeds 255")
        if self.priority - PRIORITY_STEP * (len(self.hosts) - 1) < 1:
            raise InvalidValue("vrrp priority too low for this many hosts (step 10 per host)")

    @property
    def hosts(self) -> tuple[IPAddress, ...]:
        """Every host of the segment, sorted: the same list on every host."""
        return tuple(sorted((self.address, *self.peers), key=vip_key))

    @property
    def group_count(self) -> int:
        return self.groups or len(self.peers) + 1

    def priority_of(self, group: int) -> int:
        """This host's priority in ``group``: the rotation puts host ``g mod n`` first."""
        hosts = self.hosts
        rank = (hosts.index(self.address) - group) % len(hosts)
        return self.priority - PRIORITY_STEP * rank


def group_of(vip: IPAddress, groups: int) -> int:
    """Stable group of a VIP: a hash, so adding or removing other VIPs never moves it."""
    digest = hashlib.sha256(vip.packed).digest()
    return int.from_bytes(digest[:8], "big") % groups


def group_vips(vips: Iterable[IPAddress], groups: int) -> list[list[IPAddress]]:
    out: list[list[IPAddress]] = [[] for _ in range(groups)]
    for vip in sorted(vips, key=vip_key):
        out[group_of(vip, groups)].append(vip)
    return out


def instance_name(group: int) -> str:
    return f"{INSTANCE_PREFIX}{group}"


def paths(run_dir: str) -> dict[str, str]:
    """Files keepalived reads or writes, all in the announcer's run dir."""
    return {
        "config": f"{run_dir}/keepalived.conf",
        "health": f"{run_dir}/haproxy-health",
        "fifo": f"{run_dir}/keepalived.fifo",
        "check": f"{run_dir}/check-haproxy",
    }


def _global(cfg: VrrpConfig) -> list[str]:
    files = paths(cfg.run_dir)
    lines = [
        "# Rendered by lbprovider.announce; rewritten on every change.",
        "global_defs {",
        f"    router_id lbp_{str(cfg.address).replace(':', '_').replace('.', '_')}",
        "    vrrp_version 3",
        "    vrrp_garp_master_delay 1",
        "    vrrp_garp_master_repeat 3",
        "    vrrp_garp_lower_prio_repeat 1",
        "    vrrp_skip_check_adv_addr",
        f'    notify_fifo "{files["fifo"]}"',
        "    enable_script_security",
        "}",
        "",
        "track_file lbp_haproxy_down {",
        f'    file "{files["health"]}"',
        "    weight 0",
        "    init_file 1",
        "}",
        "",
    ]
    if cfg.check_socket is not None:
        lines += [
            "vrrp_script lbp_haproxy_alive {",
            f'    script "{files["check"]}"',
            "    user root",
            "    interval 1",
            "    timeout 1",
            "    fall 2",
            "    rise 1",
            "}",
            "",
        ]
    return lines


def anchor(cfg: VrrpConfig, group: int) -> IPAddress:
    """The group's advertised address: link-local, derived from the virtual router id."""
    vrid = cfg.router_id_base + group
    if cfg.address.version == 4:
        return ipaddress.IPv4Address(f"169.254.253.{vrid}")
    return ipaddress.IPv6Address(f"fe80::fd:{vrid:x}")


def _addresses(cfg: VrrpConfig, group: int, vips: list[IPAddress]) -> list[str]:
    lines = [
        "    virtual_ipaddress {",
        f"        {anchor(cfg, group)}/{anchor(cfg, group).max_prefixlen} dev {cfg.interface}"
        " scope link",
        "    }",
        "    virtual_ipaddress_excluded {",
    ]
    for vip in vips:
        if vip.version == 4:
            lines.append(f"        {vip}/32 dev {cfg.interface}")
        else:
            lines.append(f"        {vip}/128 dev {cfg.interface} -nodad preferred_lft forever")
    return [*lines, "    }"]


def _instance(cfg: VrrpConfig, group: int, vips: list[IPAddress]) -> list[str]:
    advert = f"{cfg.advert_centis / 100:.2f}"
    lines = [
        f"vrrp_instance {instance_name(group)} {{",
        "    state BACKUP",
        f"    interface {cfg.interface}",
        f"    virtual_router_id {cfg.router_id_base + group}",
        f"    priority {cfg.priority_of(group)}",
        f"    advert_int {advert}",
        f"    unicast_src_ip {cfg.address}",
        "    unicast_peer {",
        *(f"        {p}" for p in sorted(cfg.peers, key=vip_key)),
        "    }",
        "    track_file {",
        "        lbp_haproxy_down",
        "    }",
    ]
    if cfg.check_socket is not None:
        lines += ["    track_script {", "        lbp_haproxy_alive", "    }"]
    return [*lines, *_addresses(cfg, group, vips), "}", ""]


def render_keepalived(cfg: VrrpConfig, vips: Iterable[IPAddress]) -> str:
    """The whole keepalived.conf holding ``vips`` (the VIPs this host serves)."""
    checked = [check_ip(v, "vip") for v in vips]
    lines = _global(cfg)
    for group, members in enumerate(group_vips(checked, cfg.group_count)):
        lines += _instance(cfg, group, members)
    return "\n".join(lines)


def render_check_script(cfg: VrrpConfig, python: str) -> str:
    """The check script: exit 0 when HAProxy's master socket accepts a connection."""
    check_path(python, "python interpreter")
    sock = check_path(cfg.check_socket, "haproxy socket")
    return "\n".join(
        [
            f"#!{python} -I",
            "# Rendered by lbprovider.announce: keepalived runs it each second (vrrp_script).",
            "import socket, sys",
            "s = socket.socket(socket.AF_UNIX)",
            "s.settimeout(0.5)",
            "try:",
            f"    s.connect({sock!r})",
            "except OSError:",
            "    sys.exit(1)",
            "",
        ]
    )
