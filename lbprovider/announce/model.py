"""Plain values of VIP announcement: what is announced, errors, and the checks on every value.

Why: BIRD and keepalived configs are text; one unchecked value (a password with a quote, an
interface name with a newline) could add a directive to a routing daemon running as root. Every
value that reaches a rendered file passes one of the ``check_*`` functions here first, and the
renderers only interpolate their results.

What it must not do: touch processes, files or the network.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_PATH_RE = re.compile(r"/[A-Za-z0-9_./-]{0,200}")
# printable ASCII except the quote and backslash: BIRD strings have no escapes.
_PASSWORD_RE = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]{1,80}")


class AnnounceError(Exception):
    """Base of every error of lbprovider.announce."""


class InvalidValue(AnnounceError, ValueError):
    """A setting or VIP that cannot be rendered safely; the message names the field."""


class DaemonFailed(AnnounceError):
    """BIRD or keepalived refused a config, did not start, or is not answering."""


class AnnounceState(enum.StrEnum):
    """What this host does for one VIP."""

    ANNOUNCED = "announced"  # BGP: route exported to an established peer; VRRP: MASTER
    STANDBY = "standby"  # VRRP: BACKUP, takes over when the master fails
    WITHDRAWN = "withdrawn"  # not announced: HAProxy down, no peer up, or VRRP FAULT


@dataclass(frozen=True)
class Announcement:
    """Who announces which VIP, and since when (for the dashboard and the fleet status)."""

    vip: str
    state: AnnounceState
    since: datetime  # UTC, when this state began as far as this host knows
    detail: str  # e.g. "bgp: 2/2 peers established", "vrrp: lbp_g3 MASTER"


def check_ip(value: object, field: str) -> IPAddress:
    """An IPv4/IPv6 host address (no prefix, no scope)."""
    if not isinstance(value, str | ipaddress.IPv4Address | ipaddress.IPv6Address):
        raise InvalidValue(f"{field}: not an IP address: {value!r}")
    try:
        addr = ipaddress.ip_address(value)
    except ValueError as e:
        raise InvalidValue(f"{field}: not an IP address: {value!r}") from e
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        raise InvalidValue(f"{field}: scoped IPv6 addresses are not supported: {value!r}")
    return addr


def check_ipv4(value: object, field: str) -> ipaddress.IPv4Address:
    addr = check_ip(value, field)
    if not isinstance(addr, ipaddress.IPv4Address):
        raise InvalidValue(f"{field}: must be an IPv4 address: {value!r}")
    return addr


def check_vips(values: object, field: str = "vip") -> frozenset[IPAddress]:
    """A set of unicast VIPs (strings or addresses)."""
    if isinstance(values, str) or not hasattr(values, "__iter__"):
        raise InvalidValue(f"{field}: expected a collection of addresses, got {values!r}")
    out = set()
    for v in values:
        addr = check_ip(v, field)
        if addr.is_multicast or addr.is_unspecified or addr.is_loopback:
            raise InvalidValue(f"{field}: {addr} cannot be a VIP")
        out.add(addr)
    return frozenset(out)


def check_asn(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4294967295:
        raise InvalidValue(f"{field}: AS number must be 1..4294967295, got {value!r}")
    return value


def check_int(value: object, field: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidValue(f"{field}: must be an integer {low}..{high}, got {value!r}")
    return value


def check_ifname(value: object, field: str) -> str:
    if not isinstance(value, str) or not _IFNAME_RE.fullmatch(value) or value in (".", ".."):
        raise InvalidValue(f"{field}: not an interface name: {value!r}")
    return value


def check_path(value: object, field: str) -> str:
    """An absolute path of plain characters (it is quoted in configs and shell-free)."""
    if not isinstance(value, str) or not _PATH_RE.fullmatch(value) or "/../" in value + "/":
        raise InvalidValue(f"{field}: must be an absolute path of [A-Za-z0-9_./-]: {value!r}")
    return value


def check_password(value: object, field: str) -> str:
    if not isinstance(value, str) or not _PASSWORD_RE.fullmatch(value):
        raise InvalidValue(
            f"{field}: 1-80 printable ASCII characters without quote or backslash required"
        )
    return value


def vip_key(addr: IPAddress) -> tuple[int, int]:
    """Sort key: IPv4 before IPv6, then numerically."""
    return (addr.version, int(addr))


def utc_now() -> datetime:
    return datetime.now(UTC)
