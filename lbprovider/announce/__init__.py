"""VIP announcement: tell the network which fleet host holds a VIP (BGP via BIRD 2, or VRRP via
keepalived), and report who announces which VIP since when.

Why a package of its own: the agent decides *what* serves (HAProxy); this package only turns
"these VIPs serve here, HAProxy is healthy" into routes or VRRP state, and supervises the daemon
that carries them. One object per host, built from settings by ``announcer_from_settings``.

Wiring (the agent): ``a = announcer_from_settings(settings)``; ``a.start()``; before HAProxy
binds new VIPs ``a.hold_addresses(desired_vips)``; after every apply and whenever HAProxy's
health changes ``a.update(serving_vips, haproxy_healthy, owned=owned_vips)`` — called *before*
removing a VIP from HAProxy (with the VIP left out) and *after* adding one; ``a.status()`` for
the heartbeat; ``a.close()`` on exit.

What it must not do: import any project layer but ``lbprovider.config`` (import-linter
contract), talk to HAProxy, or stop a process it did not start.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from lbprovider.announce.bgp import BgpAnnouncer
from lbprovider.announce.bird import BgpConfig, BgpPeer
from lbprovider.announce.keepalived import VrrpConfig
from lbprovider.announce.model import (
    AnnounceError,
    Announcement,
    AnnounceState,
    DaemonFailed,
    InvalidValue,
    check_ip,
    check_ipv4,
    check_vips,
)
from lbprovider.announce.vrrp import VrrpAnnouncer
from lbprovider.config import Settings

__all__ = [
    "AnnounceError",
    "AnnounceState",
    "Announcement",
    "Announcer",
    "BgpAnnouncer",
    "BgpConfig",
    "BgpPeer",
    "DaemonFailed",
    "InvalidValue",
    "NullAnnouncer",
    "VrrpAnnouncer",
    "VrrpConfig",
    "announcer_from_settings",
    "bgp_config_from_settings",
    "vrrp_config_from_settings",
]


class Announcer(Protocol):
    """What the agent needs from any announcement mode."""

    def start(self) -> None: ...

    def hold_addresses(self, vips: Collection[str]) -> None: ...

    def update(
        self,
        vips_serving: Collection[str],
        haproxy_healthy: bool,
        *,
        owned: Collection[str] | None = None,
    ) -> None: ...

    def status(self) -> list[Announcement]: ...

    def healthy(self) -> bool: ...

    def close(self) -> None: ...


class NullAnnouncer:
    """Mode ``none``: nothing is announced; the agent's own VIP handling is all there is."""

    def start(self) -> None:
        return None

    def hold_addresses(self, vips: Collection[str]) -> None:
        check_vips(vips)

    def update(
        self,
        vips_serving: Collection[str],
        haproxy_healthy: bool,
        *,
        owned: Collection[str] | None = None,
    ) -> None:
        check_vips(vips_serving)

    def status(self) -> list[Announcement]:
        return []

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        return None


def bgp_config_from_settings(settings: Settings) -> BgpConfig:
    """BgpConfig from ``LBP_ANNOUNCE_BGP_*``; InvalidValue names the setting at fault."""
    if settings.announce_bgp_local_asn is None or settings.announce_bgp_router_id is None:
        raise InvalidValue("LBP_ANNOUNCE_BGP_LOCAL_ASN and _ROUTER_ID are required in bgp mode")
    if not settings.announce_bgp_peers:
        raise InvalidValue("LBP_ANNOUNCE_BGP_PEERS: at least one peer is required in bgp mode")
    peers = tuple(
        BgpPeer(
            address=check_ip(p.address, "LBP_ANNOUNCE_BGP_PEERS address"),
            asn=p.asn,
            password=p.password if p.password is not None else settings.announce_bgp_password,
            bfd=p.bfd if p.bfd is not None else settings.announce_bgp_bfd,
            port=p.port,
            multihop=p.multihop,
            source=check_ip(p.source, "LBP_ANNOUNCE_BGP_PEERS source") if p.source else None,
        )
        for p in settings.announce_bgp_peers
    )
    return BgpConfig(
        local_asn=settings.announce_bgp_local_asn,
        router_id=check_ipv4(settings.announce_bgp_router_id, "LBP_ANNOUNCE_BGP_ROUTER_ID"),
        peers=peers,
        hold_seconds=settings.announce_bgp_hold_seconds,
        bfd_interval_ms=settings.announce_bgp_bfd_interval_ms,
        bfd_multiplier=settings.announce_bgp_bfd_multiplier,
        backup_prepend=settings.announce_bgp_backup_prepend,
    )


def vrrp_config_from_settings(settings: Settings) -> VrrpConfig:
    """VrrpConfig from ``LBP_ANNOUNCE_VRRP_*``; InvalidValue names the setting at fault."""
    if settings.announce_vrrp_interface is None or settings.announce_vrrp_address is None:
        raise InvalidValue("LBP_ANNOUNCE_VRRP_INTERFACE and _ADDRESS are required in vrrp mode")
    return VrrpConfig(
        interface=settings.announce_vrrp_interface,
        address=check_ip(settings.announce_vrrp_address, "LBP_ANNOUNCE_VRRP_ADDRESS"),
        peers=tuple(check_ip(p, "LBP_ANNOUNCE_VRRP_PEERS") for p in settings.announce_vrrp_peers),
        run_dir=settings.announce_run_dir,
        priority=settings.announce_vrrp_priority,
        router_id_base=settings.announce_vrrp_router_id_base,
        groups=settings.announce_vrrp_groups,
        advert_centis=round(settings.announce_vrrp_advert_seconds * 100),
        check_socket=settings.announce_haproxy_socket,
    )


def announcer_from_settings(settings: Settings, *, netns: str | None = None) -> Announcer:
    """The announcer of this host's mode (not started). ``netns`` is for tests and labs."""
    if settings.announce_mode == "bgp":
        return BgpAnnouncer(
            bgp_config_from_settings(settings),
            run_dir=settings.announce_run_dir,
            policy=settings.announce_bgp_policy,
            bird_bin=settings.announce_bird_bin,
            birdc_bin=settings.announce_birdc_bin,
            netns=netns,
        )
    if settings.announce_mode == "vrrp":
        return VrrpAnnouncer(
            vrrp_config_from_settings(settings),
            keepalived_bin=settings.announce_keepalived_bin,
            netns=netns,
        )
    return NullAnnouncer()
