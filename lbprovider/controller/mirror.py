"""Translate a Service object into what the services layer takes: its record and its request.

The DB record mirrors everything the fleet and the dashboard need (ports with nodePorts,
traffic policy, health-check port, source ranges, affinity, families, labels, annotations and
the parsed options); the allocation request carries what the IPAM decides on. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lbprovider.controller.options import Options, foreign_ips, parse_options
from lbprovider.controller.status import meta, spec, status_ips
from lbprovider.ipam.allocator import Request, ServiceRef
from lbprovider.services.records import FAMILY, ServiceData


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (meta(obj).get("labels") or {}).items()}


def service_ref(svc: Mapping[str, Any]) -> ServiceRef:
    m = meta(svc)
    return ServiceRef(str(m.get("namespace")), str(m.get("name")), str(m.get("uid") or ""))


def ports_of(svc: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for port in spec(svc).get("ports") or []:
        entry: dict[str, Any] = {
            "name": port.get("name") or "",
            "protocol": port.get("protocol") or "TCP",
            "port": int(port["port"]),
        }
        if port.get("nodePort"):
            entry["nodePort"] = int(port["nodePort"])
        if port.get("targetPort") is not None:
            entry["targetPort"] = port["targetPort"]
        out.append(entry)
    return out


def families_of(svc: Mapping[str, Any]) -> tuple[int, ...]:
    return tuple(FAMILY[f] for f in spec(svc).get("ipFamilies") or [] if f in FAMILY) or (4,)


def service_request(
    svc: Mapping[str, Any], opts: Options, namespace_labels: Mapping[str, str]
) -> Request:
    """The allocation request of a Service of ours."""
    s = spec(svc)
    return Request(
        service=service_ref(svc),
        ports=frozenset((p["protocol"], p["port"]) for p in ports_of(svc)),
        namespace_labels=dict(namespace_labels),
        service_labels=labels_of(svc),
        requested_ips=opts.ips,
        requested_pool=opts.pool,
        sharing_key=opts.sharing_key,
        families=families_of(svc),
        family_policy=str(s.get("ipFamilyPolicy") or "SingleStack"),
    )


def service_data(
    svc: Mapping[str, Any], opts: Options, namespace_labels: Mapping[str, str]
) -> ServiceData:
    """The DB record of a Service of ours."""
    m, s = meta(svc), spec(svc)
    hc = s.get("healthCheckNodePort")
    return ServiceData(
        namespace=str(m.get("namespace")),
        name=str(m.get("name")),
        uid=str(m.get("uid") or ""),
        load_balancer_class=s.get("loadBalancerClass"),
        ports=ports_of(svc),
        external_traffic_policy=str(s.get("externalTrafficPolicy") or "Cluster"),
        health_check_node_port=int(hc) if hc else None,
        source_ranges=[str(r) for r in s.get("loadBalancerSourceRanges") or []],
        session_affinity=str(s.get("sessionAffinity") or "None"),
        ip_families=[str(f) for f in s.get("ipFamilies") or ["IPv4"]],
        ip_family_policy=str(s.get("ipFamilyPolicy") or "SingleStack"),
        labels=labels_of(svc),
        annotations={str(k): str(v) for k, v in (m.get("annotations") or {}).items()},
        options=opts.as_record(namespace_labels),
    )


def one_per_family(ips: Sequence[str]) -> tuple[str, ...]:
    seen: dict[int, str] = {}
    for ip in ips:
        seen.setdefault(6 if ":" in ip else 4, ip)
    return tuple(seen.values())


def adoption_request(svc: Mapping[str, Any], namespace_labels: Mapping[str, str]) -> Request:
    """What a Service already shows: its status IPs, then other providers' annotations."""
    base = service_request(svc, Options(), namespace_labels)
    ips = one_per_family([*status_ips(svc), *foreign_ips(svc)])
    return Request(
        service=base.service,
        ports=base.ports,
        namespace_labels=base.namespace_labels,
        service_labels=base.service_labels,
        requested_ips=ips,
        sharing_key=parse_options(svc).sharing_key,
        families=base.families,
        family_policy=base.family_policy,
    )
