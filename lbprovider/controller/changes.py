"""Which Service updates deserve a reconcile: what cloud-provider's ``needsUpdate`` reacts to.

A watch delivers every change, including our own status writes and label edits; reconciling on
each would cost a database transaction per event for nothing. ``needs_update`` compares only
the fields that change what we allocate or what the fleet serves (type, class, ports and
nodePorts, source ranges, affinity, requested IP, annotations, traffic policy, health-check
port, families, external name, deletion). Label-only changes are ignored, as in OCCM; the
periodic resync still sees everything. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_SPEC_FIELDS = (
    "type",
    "loadBalancerClass",
    "loadBalancerSourceRanges",
    "sessionAffinity",
    "loadBalancerIP",
    "externalTrafficPolicy",
    "healthCheckNodePort",
    "ipFamilies",
    "ipFamilyPolicy",
    "externalName",
    "allocateLoadBalancerNodePorts",
)


def fingerprint(svc: Mapping[str, Any]) -> tuple[Any, ...]:
    """The parts of a Service a reconcile depends on, as a comparable value."""
    spec = svc.get("spec") or {}
    meta = svc.get("metadata") or {}
    ports = tuple(
        (p.get("name"), p.get("protocol") or "TCP", p.get("port"), p.get("nodePort"))
        for p in spec.get("ports") or []
    )
    fields = tuple(repr(spec.get(name)) for name in _SPEC_FIELDS)
    annotations = tuple(sorted((meta.get("annotations") or {}).items()))
    return (fields, ports, annotations, bool(meta.get("deletionTimestamp")), meta.get("uid"))


def needs_update(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """True when ``new`` differs from ``old`` in anything a reconcile depends on."""
    return old is None or fingerprint(old) != fingerprint(new)
