"""Which Services are ours, and what their status should say: pure functions on plain dicts.

The reconciler computes the desired ``status.loadBalancer.ingress`` and our two conditions here
and compares them with what the server holds, so that at steady state nothing is written. The
comparison ignores ``ipMode`` when the server did not keep it (Kubernetes before 1.30 drops the
field): otherwise the controller would rewrite the status forever.

No I/O here, and nothing about other providers' fields: only what this controller writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from lbprovider.config import Settings
from lbprovider.kube.writers import find_condition, set_condition

Obj = dict[str, Any]

FINALIZER = "service.kubernetes.io/load-balancer-cleanup"
COND_ALLOCATED = "lbprovider.io/IPAllocated"
COND_SERVING = "lbprovider.io/Serving"
OUR_CONDITIONS = (COND_ALLOCATED, COND_SERVING)
IP_MODE = "Proxy"
SERVED_PROTOCOLS = ("TCP",)
PORT_ERROR = "lbprovider.io/UnsupportedProtocol"

Status = Literal["True", "False", "Unknown"]


def meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("spec") or {}


def key_of(obj: Mapping[str, Any]) -> str:
    return f"{meta(obj).get('namespace')}/{meta(obj).get('name')}"


def is_load_balancer(svc: Mapping[str, Any]) -> bool:
    return spec(svc).get("type") == "LoadBalancer"


def is_our_class(svc: Mapping[str, Any], settings: Settings) -> bool:
    cls = spec(svc).get("loadBalancerClass")
    if cls:
        return bool(cls == settings.loadbalancer_class)
    return settings.handle_default_class


def is_ours(svc: Mapping[str, Any], settings: Settings) -> bool:
    """A LoadBalancer Service of our class (or class-less when we are the default)."""
    return is_load_balancer(svc) and is_our_class(svc, settings)


def is_deleting(obj: Mapping[str, Any]) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def has_finalizer(svc: Mapping[str, Any]) -> bool:
    return FINALIZER in (meta(svc).get("finalizers") or [])


def touched_by_us(svc: Mapping[str, Any]) -> bool:
    """We wrote to this Service before (our finalizer or one of our conditions is on it)."""
    return has_finalizer(svc) or any(find_condition(svc, c) for c in OUR_CONDITIONS)


def current_ingress(svc: Mapping[str, Any]) -> list[Obj]:
    lb = (svc.get("status") or {}).get("loadBalancer") or {}
    return [dict(entry) for entry in lb.get("ingress") or []]


def status_ips(svc: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(str(e["ip"]) for e in current_ingress(svc) if e.get("ip"))


def unsupported_ports(svc: Mapping[str, Any]) -> list[str]:
    """``port/protocol`` of every port the fleet cannot serve yet (UDP, SCTP)."""
    return [
        f"{p.get('port')}/{p.get('protocol') or 'TCP'}"
        for p in spec(svc).get("ports") or []
        if (p.get("protocol") or "TCP") not in SERVED_PROTOCOLS
    ]


def desired_ingress(svc: Mapping[str, Any], ips: Sequence[str]) -> list[Obj]:
    """``status.loadBalancer.ingress`` for ``ips``: ipMode Proxy, each port, errors on UDP/SCTP."""
    ports: list[Obj] = []
    for port in spec(svc).get("ports") or []:
        protocol = str(port.get("protocol") or "TCP")
        entry: Obj = {"port": int(port["port"]), "protocol": protocol}
        if protocol not in SERVED_PROTOCOLS:
            entry["error"] = PORT_ERROR
        ports.append(entry)
    return [{"ip": ip, "ipMode": IP_MODE, "ports": [dict(p) for p in ports]} for ip in ips]


def _comparable(entry: Mapping[str, Any], keep_mode: bool) -> Obj:
    out: Obj = {"ip": entry.get("ip"), "hostname": entry.get("hostname")}
    if keep_mode:
        out["ipMode"] = entry.get("ipMode")
    out["ports"] = [
        (p.get("port"), p.get("protocol") or "TCP", p.get("error"))
        for p in entry.get("ports") or []
    ]
    return out


def ingress_matches(
    current: Sequence[Mapping[str, Any]], desired: Sequence[Mapping[str, Any]]
) -> bool:
    """Equal, ignoring ``ipMode`` on entries where the server did not keep it (before 1.30)."""
    if len(current) != len(desired):
        return False
    for have, want in zip(current, desired, strict=True):
        keep_mode = "ipMode" in have
        if _comparable(have, keep_mode) != _comparable(want, keep_mode):
            return False
    return True


def conditions_of(svc: Mapping[str, Any]) -> list[Obj]:
    return [dict(c) for c in (svc.get("status") or {}).get("conditions") or []]


def condition_matches(
    svc: Mapping[str, Any], type: str, status: str, reason: str, message: str
) -> bool:
    found = find_condition(svc, type)
    if found is None:
        return False
    return (found.get("status"), found.get("reason"), found.get("message")) == (
        status,
        reason,
        message,
    )


def with_condition(
    conditions: Sequence[Mapping[str, Any]], type: str, status: Status, reason: str, message: str
) -> list[Obj]:
    return set_condition(conditions, type=type, status=status, reason=reason, message=message)


def without_our_conditions(svc: Mapping[str, Any]) -> list[Obj]:
    return [c for c in conditions_of(svc) if c.get("type") not in OUR_CONDITIONS]


def serving_condition(ips: Sequence[str], serving: bool, message: str) -> tuple[Status, str, str]:
    """(status, reason, message) of ``lbprovider.io/Serving`` from the DB record."""
    if not ips:
        return "False", "NotYetServed", "no address allocated"
    if serving:
        return "True", "Serving", message or "the fleet serves this Service"
    return "False", "NotYetServed", message or "no fleet host serves this Service yet"


def creation_order(obj: Mapping[str, Any]) -> tuple[str, str]:
    """Sort key: oldest first (creationTimestamp), then by key for a stable order."""
    return (str(meta(obj).get("creationTimestamp") or ""), key_of(obj))
