"""Render the BIRD 2 configuration of one fleet host (bgp mode).

Why: the routes a host announces are the only thing that steers traffic to it, so the config is
small and fully derived: a static protocol per address family holds exactly the VIPs to
announce (``blackhole`` — BIRD never writes them to the kernel; the VIPs themselves sit on
``lo``), one BGP protocol per peer exports them, optional BFD shortens failure detection. In the
``owners`` policy, non-owned VIPs may go out with AS-path prepends as ready backup paths.

What it must not do: run BIRD or interpolate an unchecked value — every value comes from
``BgpConfig`` (checked on construction) or is a number or address rendered by Python.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from lbprovider.announce.model import (
    InvalidValue,
    IPAddress,
    check_asn,
    check_int,
    check_ip,
    check_ipv4,
    check_password,
    vip_key,
)

STATIC_OWN = {4: "lbp_vips4", 6: "lbp_vips6"}
STATIC_BACKUP = {4: "lbp_backup4", 6: "lbp_backup6"}


@dataclass(frozen=True)
class BgpPeer:
    """One neighbour; ``password`` and ``bfd`` are already resolved against the defaults."""

    address: IPAddress
    asn: int
    password: str | None = None
    bfd: bool = False
    port: int = 179
    multihop: int | None = None
    source: IPAddress | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", check_ip(self.address, "peer address"))
        if self.source is not None:
            src = check_ip(self.source, "peer source")
            if src.version != self.address.version:
                raise InvalidValue("peer source: must be of the neighbour's address family")
            object.__setattr__(self, "source", src)
        if self.multihop is not None and self.bfd and self.source is None:
            raise InvalidValue("peer source: a multihop peer with BFD needs a source address")
        check_asn(self.asn, "peer asn")
        check_int(self.port, "peer port", 1, 65535)
        if self.password is not None:
            check_password(self.password, "peer password")
        if self.multihop is not None:
            check_int(self.multihop, "peer multihop", 1, 255)
        if not isinstance(self.bfd, bool):
            raise InvalidValue(f"peer bfd: must be a boolean, got {self.bfd!r}")


@dataclass(frozen=True)
class BgpConfig:
    """Everything of a host's BIRD config except the VIPs."""

    local_asn: int
    router_id: ipaddress.IPv4Address
    peers: tuple[BgpPeer, ...]
    hold_seconds: int = 9
    bfd_interval_ms: int = 100
    bfd_multiplier: int = 3
    backup_prepend: int = 0

    def __post_init__(self) -> None:
        check_asn(self.local_asn, "local asn")
        object.__setattr__(self, "router_id", check_ipv4(self.router_id, "router id"))
        if not self.peers or not all(isinstance(p, BgpPeer) for p in self.peers):
            raise InvalidValue("peers: at least one BgpPeer is required")
        if len({(p.address, p.port) for p in self.peers}) != len(self.peers):
            raise InvalidValue("peers: duplicate neighbour address")
        check_int(self.hold_seconds, "hold seconds", 3, 65535)
        check_int(self.bfd_interval_ms, "bfd interval", 10, 10000)
        check_int(self.bfd_multiplier, "bfd multiplier", 1, 255)
        check_int(self.backup_prepend, "backup prepend", 0, 8)


def _static(name: str, version: int, vips: Iterable[IPAddress]) -> list[str]:
    lines = [f"protocol static {name} {{", f"    ipv{version};"]
    plen = 32 if version == 4 else 128
    lines += [f"    route {v}/{plen} blackhole;" for v in sorted(vips, key=vip_key)]
    return [*lines, "}", ""]


def _bfd(cfg: BgpConfig) -> list[str]:
    if not any(p.bfd for p in cfg.peers):
        return []
    ms = cfg.bfd_interval_ms
    timers = (
        f"min rx interval {ms} ms; min tx interval {ms} ms; "
        f"idle tx interval {max(ms, 1000)} ms; multiplier {cfg.bfd_multiplier};"
    )
    return [
        "protocol bfd lbp_bfd {",
        f'    interface "*" {{ {timers} }};',
        f"    multihop {{ {timers} }};",
        "}",
        "",
    ]


def _export_filter(cfg: BgpConfig, version: int) -> str:
    own, backup = STATIC_OWN[version], STATIC_BACKUP[version]
    prepend = " ".join(f"bgp_path.prepend({cfg.local_asn});" for _ in range(cfg.backup_prepend))
    if not prepend:
        return f'export where proto = "{own}";'
    return (
        f'export filter {{ if proto = "{own}" then accept; '
        f'if proto = "{backup}" then {{ {prepend} accept; }} reject; }};'
    )


def _peer(cfg: BgpConfig, index: int, peer: BgpPeer) -> list[str]:
    version = peer.address.version
    local = f"local {peer.source} as" if peer.source is not None else "local as"
    lines = [
        f"protocol bgp lbp_peer{index} {{",
        f"    {local} {cfg.local_asn};",
        f"    neighbor {peer.address} port {peer.port} as {peer.asn};",
        f"    hold time {cfg.hold_seconds};",
        f"    keepalive time {max(1, cfg.hold_seconds // 3)};",
        "    connect retry time 2;",
        "    error wait time 1, 10;",
    ]
    if peer.multihop is not None:
        lines.append(f"    multihop {peer.multihop};")
    if peer.password is not None:
        lines.append(f'    password "{peer.password}";')
    if peer.bfd:
        lines.append("    bfd on;")
    lines += [
        f"    ipv{version} {{",
        "        import none;",
        f"        {_export_filter(cfg, version)}",
        "        next hop self;",
        "    };",
        "}",
        "",
    ]
    return lines


def render_bird(
    cfg: BgpConfig,
    announce: Iterable[IPAddress],
    backup: Iterable[IPAddress] = (),
) -> str:
    """The whole bird.conf: ``announce`` goes out plainly, ``backup`` with prepends (if any)."""
    own = {4: [], 6: []}  # type: dict[int, list[IPAddress]]
    spare = {4: [], 6: []}  # type: dict[int, list[IPAddress]]
    for vip in announce:
        own[check_ip(vip, "vip").version].append(vip)
    for vip in backup:
        if cfg.backup_prepend:
            spare[check_ip(vip, "vip").version].append(vip)
    lines = [
        "# Rendered by lbprovider.announce; rewritten on every change.",
        f"router id {cfg.router_id};",
        "timeformat protocol iso long;",
        "log stderr { info, remote, warning, error, auth, fatal, bug };",
        "",
        "protocol device { scan time 10; }",
        "",
    ]
    for version in (4, 6):
        lines += _static(STATIC_OWN[version], version, own[version])
        lines += _static(STATIC_BACKUP[version], version, spare[version])
    lines += _bfd(cfg)
    for i, peer in enumerate(cfg.peers, start=1):
        lines += _peer(cfg, i, peer)
    return "\n".join(lines)
