"""What a Service asks of us, read from its annotations and spec, validated.

Our annotations (``lbprovider.io/...``) win; the aliases other providers use are read so a
cluster moving from MetalLB, Cilium LB-IPAM, kube-vip or PureLB keeps its addresses and
sharing. A bad value never raises: it becomes a ``problems`` line that the reconciler turns into
an ``AnnotationInvalid`` Event and an ``InvalidRequest`` condition on that Service.

Pure: no I/O, no Kubernetes client, no database. It must not decide allocations.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PREFIX = "lbprovider.io/"

IPS_KEYS = (
    PREFIX + "ips",
    "metallb.io/loadBalancerIPs",
    "metallb.universe.tf/loadBalancerIPs",
    "lbipam.cilium.io/ips",
    "kube-vip.io/loadbalancerIPs",
    "purelb.io/addresses",
)
POOL_KEYS = (PREFIX + "pool", "metallb.io/address-pool", "metallb.universe.tf/address-pool")
SHARING_KEYS = (
    PREFIX + "sharing-key",
    "metallb.io/allow-shared-ip",
    "metallb.universe.tf/allow-shared-ip",
    "lbipam.cilium.io/sharing-key",
)
# IPs written by other providers: adopted at start-up before anything new is allocated.
FOREIGN_IPS_KEYS = IPS_KEYS[1:]

PROXY_PROTOCOLS = ("v1", "v2")
BALANCES = ("roundrobin", "leastconn", "first", "random", "source")
TIMEOUT_KEYS = {
    "timeout-client": "client",
    "timeout-server": "server",
    "timeout-connect": "connect",
}
MAX_TIMEOUT_MS = 24 * 3600 * 1000
MAX_MAXCONN = 1_000_000

_POOL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SHARING_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,252}$")
_TIME_RE = re.compile(r"^(\d+)(us|ms|s|m|h|d)?$")
_UNIT_MS = {"us": 0.001, "ms": 1, "": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


@dataclass
class Options:
    """The parsed request of one Service; ``problems`` lists every invalid value found."""

    ips: tuple[str, ...] = ()
    ips_source: str = ""
    pool: str | None = None
    sharing_key: str | None = None
    proxy_protocol: str | None = None
    timeouts_ms: dict[str, int] = field(default_factory=dict)
    balance: str | None = None
    maxconn: int | None = None
    problems: list[str] = field(default_factory=list)

    def as_record(self, namespace_labels: Mapping[str, str]) -> dict[str, Any]:
        """The ``options`` column of the Service's DB record (keys the fleet reads)."""
        out: dict[str, Any] = {
            "ips": list(self.ips),
            "pool": self.pool,
            "sharing_key": self.sharing_key,
            "namespace_labels": dict(namespace_labels),
            "proxy_protocol": self.proxy_protocol,
            "balance": self.balance,
            "maxconn": self.maxconn,
        }
        for which in ("client", "server", "connect"):
            out[f"timeout_{which}_ms"] = self.timeouts_ms.get(which)
        return out


def annotations_of(svc: Mapping[str, Any]) -> dict[str, str]:
    return {
        str(k): str(v) for k, v in ((svc.get("metadata") or {}).get("annotations") or {}).items()
    }


def first_present(annotations: Mapping[str, str], keys: tuple[str, ...]) -> tuple[str, str] | None:
    """(key, value) of the first of ``keys`` that is set, or None."""
    for key in keys:
        if key in annotations:
            return key, annotations[key]
    return None


def parse_options(svc: Mapping[str, Any]) -> Options:
    """Everything a Service asks for; never raises on user input."""
    annotations = annotations_of(svc)
    opts = Options()
    _parse_ips(opts, annotations, svc)
    _parse_pool(opts, annotations)
    _parse_sharing(opts, annotations)
    _parse_fleet(opts, annotations)
    return opts


def split_ips(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"[,\s]+", text) if part.strip()]


def parse_ip_list(text: str, where: str, problems: list[str]) -> tuple[str, ...]:
    """Canonical addresses in ``text`` (comma or space separated); bad ones go to ``problems``."""
    ips: list[str] = []
    for part in split_ips(text):
        try:
            ips.append(str(ipaddress.ip_address(part)))
        except ValueError:
            problems.append(f"{where}: {part!r} is not an IP address")
    families = [6 if ":" in ip else 4 for ip in ips]
    if len(set(families)) != len(families):
        problems.append(f"{where}: at most one address per family, got {', '.join(ips)}")
    return tuple(ips)


def _parse_ips(opts: Options, annotations: Mapping[str, str], svc: Mapping[str, Any]) -> None:
    found = first_present(annotations, IPS_KEYS)
    if found is None:
        spec_ip = str((svc.get("spec") or {}).get("loadBalancerIP") or "")
        if spec_ip:
            found = ("spec.loadBalancerIP", spec_ip)
    if found is None:
        return
    key, value = found
    opts.ips = parse_ip_list(value, key, opts.problems)
    opts.ips_source = key
    if not opts.ips and not any(p.startswith(key) for p in opts.problems):
        opts.problems.append(f"{key}: no address given")


def _parse_pool(opts: Options, annotations: Mapping[str, str]) -> None:
    found = first_present(annotations, POOL_KEYS)
    if found is None:
        return
    key, value = found
    if _POOL_RE.match(value.strip()):
        opts.pool = value.strip()
    else:
        opts.problems.append(f"{key}: {value!r} is not a pool name (a DNS label)")


def _parse_sharing(opts: Options, annotations: Mapping[str, str]) -> None:
    found = first_present(annotations, SHARING_KEYS)
    if found is None:
        return
    key, value = found
    if _SHARING_RE.match(value.strip()):
        opts.sharing_key = value.strip()
    else:
        opts.problems.append(f"{key}: {value!r} is not a valid sharing key")


def _parse_fleet(opts: Options, annotations: Mapping[str, str]) -> None:
    proxy = annotations.get(PREFIX + "proxy-protocol")
    if proxy is not None:
        if proxy.strip().lower() in PROXY_PROTOCOLS:
            opts.proxy_protocol = proxy.strip().lower()
        else:
            opts.problems.append(f"{PREFIX}proxy-protocol: {proxy!r} is not one of v1, v2")
    for suffix, which in TIMEOUT_KEYS.items():
        value = annotations.get(PREFIX + suffix)
        if value is not None:
            ms = parse_timeout_ms(value)
            if ms is None:
                opts.problems.append(
                    f"{PREFIX}{suffix}: {value!r} is not a duration like 30s, 500ms or 5m "
                    "(at most 24h)"
                )
            else:
                opts.timeouts_ms[which] = ms
    _parse_balance(opts, annotations.get(PREFIX + "balance"))
    _parse_maxconn(opts, annotations.get(PREFIX + "maxconn"))


def _parse_balance(opts: Options, value: str | None) -> None:
    if value is None:
        return
    if value.strip() in BALANCES:
        opts.balance = value.strip()
    else:
        opts.problems.append(f"{PREFIX}balance: {value!r} is not one of {', '.join(BALANCES)}")


def _parse_maxconn(opts: Options, value: str | None) -> None:
    if value is None:
        return
    text = value.strip()
    if text.isdigit() and int(text) <= MAX_MAXCONN:
        opts.maxconn = int(text)
    else:
        opts.problems.append(f"{PREFIX}maxconn: {value!r} is not a number from 0 to {MAX_MAXCONN}")


def parse_timeout_ms(value: str) -> int | None:
    """HAProxy-style duration (``30s``, ``500ms``, ``5m``; bare = ms) in ms, or None if bad."""
    match = _TIME_RE.match(value.strip())
    if not match:
        return None
    ms = int(int(match.group(1)) * _UNIT_MS[match.group(2) or ""])
    return ms if 1 <= ms <= MAX_TIMEOUT_MS else None


def foreign_ips(svc: Mapping[str, Any]) -> tuple[str, ...]:
    """Valid addresses other providers (or spec.loadBalancerIP) recorded on the Service."""
    annotations = annotations_of(svc)
    found = first_present(annotations, FOREIGN_IPS_KEYS)
    text = found[1] if found else str((svc.get("spec") or {}).get("loadBalancerIP") or "")
    ips: list[str] = []
    for part in split_ips(text):
        try:
            ips.append(str(ipaddress.ip_address(part)))
        except ValueError:
            continue
    return tuple(ips)
