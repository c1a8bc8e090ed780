"""Service semantics of a real API server: defaulting, validation, ClusterIP and NodePort
allocation, and the version-dependent `status.loadBalancer.ingress[].ipMode`.

A LoadBalancer controller depends on these details: NodePorts exist (or not, with
`allocateLoadBalancerNodePorts: false`) before it sees the Service, `healthCheckNodePort` exists
for `externalTrafficPolicy: Local`, ports are freed when the type changes, a duplicate NodePort
is a 422, and a 1.28 server silently drops `ipMode`. This module keeps the allocation tables;
it must not store objects or emit events (the store does), and all calls happen under the
store's lock.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from typing import Any

from lbprovider.lab.errors import (
    ApiError,
    FieldError,
    forbidden,
    invalid,
    invalid_object,
    not_supported,
    required,
)
from lbprovider.lab.strategy import Strategy
from lbprovider.lab.validation import is_ip, is_label, is_subdomain

logger = logging.getLogger(__name__)

JSON = dict[str, Any]

SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")
NODE_PORT_MIN, NODE_PORT_MAX = 30000, 32767
TYPES = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]
_PROTOCOLS = ["SCTP", "TCP", "UDP"]


def _spec(svc: JSON) -> JSON:
    spec = svc.setdefault("spec", {})
    assert isinstance(spec, dict)
    return spec


def _ports(svc: JSON) -> list[JSON]:
    ports = _spec(svc).get("ports") or []
    return [p for p in ports if isinstance(p, dict)]


def needs_cluster_ip(svc: JSON) -> bool:
    return bool(_spec(svc).get("type", "ClusterIP") != "ExternalName")


def needs_node_port(svc: JSON) -> bool:
    return _spec(svc).get("type") in ("NodePort", "LoadBalancer")


def needs_health_check_port(svc: JSON) -> bool:
    spec = _spec(svc)
    return spec.get("type") == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"


def _default_ports(spec: JSON) -> None:
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if port.get("targetPort") in (None, 0, ""):
                port["targetPort"] = port.get("port")


def default_service(svc: JSON) -> None:
    """SetDefaults_Service: what a real server fills in on every write."""
    spec = _spec(svc)
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["sessionAffinity"] == "ClientIP":
        spec.setdefault("sessionAffinityConfig", {"clientIP": {"timeoutSeconds": 10800}})
    _default_ports(spec)
    if spec["type"] in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if spec["type"] != "ExternalName":
        spec.setdefault("internalTrafficPolicy", "Cluster")
    if spec["type"] == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)


def _port_errors(svc: JSON) -> list[FieldError]:
    spec = _spec(svc)
    ports = spec.get("ports") or []
    errors: list[FieldError] = []
    seen_names: set[str] = set()
    seen_ports: set[tuple[Any, Any]] = set()
    for i, port in enumerate(ports):
        where = f"spec.ports[{i}]"
        name = port.get("name", "")
        if len(ports) > 1 and not name:
            errors.append(required(f"{where}.name"))
        elif name and name in seen_names:
            errors.append(invalid(f"{where}.name", name, "Duplicate value"))
        elif name and not is_label(name):
            errors.append(invalid(f"{where}.name", name, "must be a DNS label"))
        seen_names.add(name)
        number = port.get("port")
        if not isinstance(number, int) or not 1 <= number <= 65535:
            errors.append(
                invalid(f"{where}.port", number, "must be between 1 and 65535, inclusive")
            )
        if port.get("protocol") not in _PROTOCOLS:
            errors.append(not_supported(f"{where}.protocol", port.get("protocol"), _PROTOCOLS))
        if (number, port.get("protocol")) in seen_ports:
            errors.append(
                FieldError(
                    where,
                    "FieldValueDuplicate",
                    f'Duplicate value: {{"port": {number}, "protocol": "{port.get("protocol")}"}}',
                )
            )
        seen_ports.add((number, port.get("protocol")))
        if port.get("nodePort") and spec.get("type") in ("ClusterIP", "ExternalName"):
            errors.append(
                forbidden(
                    f"{where}.nodePort", f"may not be used when `type` is '{spec.get('type')}'"
                )
            )
    return errors


def _type_errors(svc: JSON) -> list[FieldError]:
    spec = _spec(svc)
    kind = spec.get("type")
    errors: list[FieldError] = []
    if kind not in TYPES:
        return [not_supported("spec.type", kind, TYPES)]
    headless = spec.get("clusterIP") == "None"
    if kind != "ExternalName" and not spec.get("ports") and not headless:
        errors.append(required("spec.ports"))
    if kind == "ExternalName" and not is_subdomain(str(spec.get("externalName", ""))):
        errors.append(
            required("spec.externalName")
            if not spec.get("externalName")
            else invalid("spec.externalName", spec["externalName"], "must be a valid DNS name")
        )
    if kind != "LoadBalancer":
        for key in (
            "loadBalancerClass",
            "allocateLoadBalancerNodePorts",
            "loadBalancerSourceRanges",
        ):
            if spec.get(key) is not None:
                errors.append(
                    forbidden(f"spec.{key}", "may only be used when `type` is 'LoadBalancer'")
                )
    return errors


def _policy_errors(svc: JSON) -> list[FieldError]:
    spec = _spec(svc)
    errors: list[FieldError] = []
    etp = spec.get("externalTrafficPolicy")
    if needs_node_port(svc) and etp not in ("Cluster", "Local"):
        errors.append(not_supported("spec.externalTrafficPolicy", etp, ["Cluster", "Local"]))
    if not needs_node_port(svc) and etp:
        errors.append(
            invalid(
                "spec.externalTrafficPolicy",
                etp,
                "may only be set for externally-accessible services",
            )
        )
    hc_port = spec.get("healthCheckNodePort")
    if hc_port and not needs_health_check_port(svc):
        errors.append(
            invalid(
                "spec.healthCheckNodePort",
                hc_port,
                "may only be set when `type` "
                "is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            )
        )
    if spec.get("sessionAffinity") not in ("None", "ClientIP"):
        errors.append(
            not_supported("spec.sessionAffinity", spec.get("sessionAffinity"), ["ClientIP", "None"])
        )
    itp = spec.get("internalTrafficPolicy")
    if needs_cluster_ip(svc) and itp not in ("Cluster", "Local"):
        errors.append(not_supported("spec.internalTrafficPolicy", itp, ["Cluster", "Local"]))
    cluster_ip = spec.get("clusterIP")
    if cluster_ip not in (None, "", "None") and not is_ip(str(cluster_ip)):
        errors.append(
            invalid(
                "spec.clusterIPs[0]",
                cluster_ip,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            )
        )
    return errors


def _update_errors(new: JSON, old: JSON) -> list[FieldError]:
    errors: list[FieldError] = []
    if needs_cluster_ip(old) and needs_cluster_ip(new):
        old_ip, new_ip = _spec(old).get("clusterIP"), _spec(new).get("clusterIP")
        if old_ip and new_ip != old_ip:
            errors.append(invalid("spec.clusterIPs[0]", [new_ip], "may not change once set"))
    old_class = _spec(old).get("loadBalancerClass")
    both_lb = _spec(old).get("type") == _spec(new).get("type") == "LoadBalancer"
    if both_lb and _spec(new).get("loadBalancerClass") != old_class:
        errors.append(
            invalid(
                "spec.loadBalancerClass",
                _spec(new).get("loadBalancerClass"),
                "may not change once set",
            )
        )
    return errors


def _node_ports_by_name(svc: JSON) -> dict[str, int]:
    return {str(p.get("name", "")): int(p.get("nodePort") or 0) for p in _ports(svc)}


def patch_allocated_values(new: JSON, old: JSON) -> None:
    """A write that omits allocated values keeps the old ones (patchAllocatedValues)."""
    new_spec, old_spec = _spec(new), _spec(old)
    if needs_cluster_ip(old) and needs_cluster_ip(new) and not new_spec.get("clusterIP"):
        for key in ("clusterIP", "clusterIPs"):
            if key in old_spec:
                new_spec[key] = old_spec[key]
    if needs_node_port(old) and needs_node_port(new):
        used = {p.get("nodePort") for p in _ports(old)} & {p.get("nodePort") for p in _ports(new)}
        previous = _node_ports_by_name(old)
        for port in _ports(new):
            value = previous.get(str(port.get("name", "")), 0)
            if not port.get("nodePort") and value and value not in used:
                port["nodePort"] = value
    both_need_hc = needs_health_check_port(old) and needs_health_check_port(new)
    if both_need_hc and not new_spec.get("healthCheckNodePort"):
        new_spec["healthCheckNodePort"] = old_spec.get("healthCheckNodePort")


def drop_type_dependent_fields(new: JSON, old: JSON) -> None:
    """Fields the old type needed and the user left untouched go when the type changes."""
    new_spec, old_spec = _spec(new), _spec(old)
    if needs_cluster_ip(old) and not needs_cluster_ip(new):
        for key in (
            "clusterIP",
            "clusterIPs",
            "ipFamilies",
            "ipFamilyPolicy",
            "internalTrafficPolicy",
        ):
            if new_spec.get(key) == old_spec.get(key):
                new_spec.pop(key, None)
    if needs_node_port(old) and not needs_node_port(new):
        if _node_ports_by_name(new) == _node_ports_by_name(old):
            for port in _ports(new):
                port.pop("nodePort", None)
        if new_spec.get("externalTrafficPolicy") == old_spec.get("externalTrafficPolicy"):
            new_spec.pop("externalTrafficPolicy", None)
    hc_unchanged = new_spec.get("healthCheckNodePort") == old_spec.get("healthCheckNodePort")
    if needs_health_check_port(old) and not needs_health_check_port(new) and hc_unchanged:
        new_spec.pop("healthCheckNodePort", None)
    if old_spec.get("type") == "LoadBalancer" and new_spec.get("type") != "LoadBalancer":
        for key in ("allocateLoadBalancerNodePorts", "loadBalancerClass"):
            if new_spec.get(key) == old_spec.get(key):
                new_spec.pop(key, None)


class ServiceStrategy(Strategy):
    """Services: defaulting, validation and the ClusterIP/NodePort tables of one cluster."""

    # serviceStatusStrategy resets only spec (PrepareForUpdate, GetResetFields): a status write
    # may also change labels, annotations and finalizers.
    status_keeps_metadata = True

    def __init__(self, minor_version: int) -> None:
        self._minor = minor_version
        self._ips: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str] = {}
        self._node_ports: dict[int, str] = {}
        self._next_ip = 10
        self._random = random.Random()

    # --- hooks --------------------------------------------------------------------------------

    def prepare_create(self, obj: JSON) -> None:
        obj["status"] = {"loadBalancer": {}}
        default_service(obj)

    def prepare_update(self, new: JSON, old: JSON) -> None:
        patch_allocated_values(new, old)
        default_service(new)
        drop_type_dependent_fields(new, old)

    def prepare_status(self, new: JSON, old: JSON) -> None:
        for ingress in new.get("status", {}).get("loadBalancer", {}).get("ingress") or []:
            if not isinstance(ingress, dict):
                continue
            if self._minor < 30:
                ingress.pop("ipMode", None)
            elif ingress.get("ip") and not ingress.get("ipMode"):
                ingress["ipMode"] = "VIP"

    def validate(self, obj: JSON, old: JSON | None) -> list[FieldError]:
        errors = _type_errors(obj) + _port_errors(obj) + _policy_errors(obj)
        return errors + (_update_errors(obj, old) if old is not None else [])

    def validate_status(self, new: JSON, old: JSON) -> list[FieldError]:
        errors: list[FieldError] = []
        ingresses = new.get("status", {}).get("loadBalancer", {}).get("ingress") or []
        for i, ingress in enumerate(ingresses):
            where = f"status.loadBalancer.ingress[{i}]"
            if ingress.get("ip") and not is_ip(str(ingress["ip"])):
                errors.append(invalid(f"{where}.ip", ingress["ip"], "must be a valid IP address"))
            mode = ingress.get("ipMode")
            if mode is not None and mode not in ("VIP", "Proxy"):
                errors.append(not_supported(f"{where}.ipMode", mode, ["Proxy", "VIP"]))
            if mode is not None and not ingress.get("ip"):
                errors.append(
                    forbidden(f"{where}.ipMode", "may not be specified when `ip` is not set")
                )
        return errors

    def allocate(self, new: JSON, old: JSON | None) -> None:
        owner = f"{new['metadata'].get('namespace')}/{new['metadata']['name']}"
        errors = self._allocate_cluster_ip(new, old, owner)
        errors += self._allocate_node_ports(new, old, owner)
        if errors:
            raise invalid_object("", "Service", new["metadata"]["name"], errors)

    def release(self, obj: JSON) -> None:
        owner = f"{obj['metadata'].get('namespace')}/{obj['metadata']['name']}"
        self._release_ports(owner, keep=set())
        for ip in [ip for ip, who in self._ips.items() if who == owner]:
            del self._ips[ip]

    # --- cluster IPs --------------------------------------------------------------------------

    def _allocate_cluster_ip(self, new: JSON, old: JSON | None, owner: str) -> list[FieldError]:
        spec = _spec(new)
        if not needs_cluster_ip(new):
            for ip in [ip for ip, who in self._ips.items() if who == owner]:
                del self._ips[ip]
            return []
        if (
            old is not None
            and needs_cluster_ip(old)
            and _spec(old).get("clusterIP")
            and spec.get("clusterIP") == _spec(old).get("clusterIP")
        ):
            return []
        if spec.get("clusterIP") == "None":
            spec["clusterIPs"] = ["None"]
        else:
            wanted = spec.get("clusterIP") or ""
            error = self._claim_ip(wanted, owner) if wanted else None
            if error:
                return [
                    invalid("spec.clusterIPs", [wanted], f"failed to allocate IP {wanted}: {error}")
                ]
            spec["clusterIP"] = wanted or self._next_free_ip(owner)
            spec["clusterIPs"] = [spec["clusterIP"]]
        spec.setdefault("ipFamilies", ["IPv4"])
        headless_without_selector = spec.get("clusterIP") == "None" and not spec.get("selector")
        spec.setdefault(
            "ipFamilyPolicy", "RequireDualStack" if headless_without_selector else "SingleStack"
        )
        return []

    def _claim_ip(self, wanted: str, owner: str) -> str | None:
        address = ipaddress.ip_address(wanted)
        if address not in SERVICE_CIDR:
            return (
                f"provided IP is not in the valid range. The range of valid IPs is {SERVICE_CIDR}"
            )
        if self._ips.get(address, owner) != owner:
            return "provided IP is already allocated"
        self._ips[address] = owner
        return None

    def _next_free_ip(self, owner: str) -> str:
        while True:
            address = SERVICE_CIDR.network_address + self._next_ip
            self._next_ip = (
                self._next_ip + 1 if self._next_ip < SERVICE_CIDR.num_addresses - 2 else 1
            )
            if address not in self._ips:
                self._ips[address] = owner
                return str(address)

    # --- node ports ---------------------------------------------------------------------------

    def _allocate_node_ports(self, new: JSON, old: JSON | None, owner: str) -> list[FieldError]:
        spec = _spec(new)
        wanted: list[tuple[str, int]] = []  # (field, explicit port) to claim
        missing: list[tuple[JSON | None, str]] = []  # (port or None for HC, field) to fill
        if needs_node_port(new):
            auto = spec.get("type") == "NodePort" or spec.get("allocateLoadBalancerNodePorts")
            for i, port in enumerate(_ports(new)):
                if port.get("nodePort"):
                    wanted.append((f"spec.ports[{i}].nodePort", int(port["nodePort"])))
                elif auto:
                    missing.append((port, f"spec.ports[{i}].nodePort"))
        if needs_health_check_port(new):
            if spec.get("healthCheckNodePort"):
                wanted.append(("spec.healthCheckNodePort", int(spec["healthCheckNodePort"])))
            else:
                missing.append((None, "spec.healthCheckNodePort"))
        errors = self._check_explicit(wanted, owner)
        if errors:
            return errors
        keep = {number for _, number in wanted}
        self._release_ports(owner, keep)
        for number in keep:
            self._node_ports[number] = owner
        for entry, _ in missing:
            chosen = self._random_free_port()
            if entry is None:
                spec["healthCheckNodePort"] = chosen
            else:
                entry["nodePort"] = chosen
            self._node_ports[chosen] = owner
        return []

    def _check_explicit(self, wanted: list[tuple[str, int]], owner: str) -> list[FieldError]:
        errors = []
        seen: dict[int, str] = {}
        for field, port in wanted:
            if not NODE_PORT_MIN <= port <= NODE_PORT_MAX:
                errors.append(
                    invalid(
                        field,
                        port,
                        "provided port is not in the valid range. "
                        f"The range of valid ports is {NODE_PORT_MIN}-"
                        f"{NODE_PORT_MAX}",
                    )
                )
            elif self._node_ports.get(port, owner) != owner or (
                field == "spec.healthCheckNodePort" and port in seen
            ):
                errors.append(invalid(field, port, "provided port is already allocated"))
            seen[port] = field
        return errors

    def _random_free_port(self) -> int:
        free = NODE_PORT_MAX - NODE_PORT_MIN + 1 - len(self._node_ports)
        if free <= 0:
            raise ApiError(
                500,
                "InternalError",
                "Internal error occurred: failed to allocate a nodePort: range is full",
            )
        while True:
            port = self._random.randint(NODE_PORT_MIN, NODE_PORT_MAX)
            if port not in self._node_ports:
                return port

    def _release_ports(self, owner: str, keep: set[int]) -> None:
        for port in [p for p, who in self._node_ports.items() if who == owner and p not in keep]:
            del self._node_ports[port]
