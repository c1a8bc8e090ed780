"""What Kubernetes asked for, as the API reads it back: LoadBalancer Services (their addresses,
or ``<pending>`` and why), ExternalName mappings and Ingress routes. Read-only."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from lbprovider.api.schemas.common import Page
from lbprovider.api.schemas.records import AllocationRead, LedgerRead
from lbprovider.db.models import ExternalNameMapping, IngressRoute
from lbprovider.services.catalog import ServiceDetail, ServiceRow


class ServicePortRead(BaseModel):
    name: str = ""
    protocol: str
    port: int
    node_port: int | None = Field(default=None, description="The Service's nodePort, if any.")
    target_port: int | str | None = None

    @classmethod
    def of(cls, p: Mapping[str, Any]) -> ServicePortRead:
        node_port = p.get("nodePort") or p.get("node_port")
        target = p.get("targetPort")
        return cls(
            name=str(p.get("name") or ""),
            protocol=str(p.get("protocol") or "TCP"),
            port=int(p["port"]),
            node_port=int(node_port) if node_port else None,
            target_port=target if isinstance(target, int | str) else None,
        )


def _service_ports(row: ServiceRow) -> list[ServicePortRead]:
    """The record's ports (with nodePorts); without a record, the allocations' ports."""
    if row.record is not None and row.record.ports:
        return [ServicePortRead.of(p) for p in row.record.ports]
    seen = sorted({(str(p[0]), int(p[1])) for a in row.allocations for p in a.ports})
    return [ServicePortRead(protocol=proto, port=port) for proto, port in seen]


class ServiceRead(BaseModel):
    namespace: str
    name: str
    uid: str
    state: Literal["pending", "allocated"] = Field(
        description="`pending`: the Service holds no address (see `reason` and `message`)."
    )
    ips: list[str] = Field(description="Addresses it holds now, IPv4 first.")
    pools: list[str]
    reason: str = Field(description="Reason of its `lbprovider.io/IPAllocated` condition.")
    message: str = Field(description="Message of that condition.")
    serving: bool = Field(description="The fleet serves it (`lbprovider.io/Serving`).")
    serving_message: str
    ports: list[ServicePortRead]
    traffic_policy: str = Field(description="externalTrafficPolicy (`Cluster` or `Local`).")
    sharing_key: str | None
    load_balancer_class: str | None
    updated_at: datetime | None = Field(description="When the controller last wrote it.")

    @classmethod
    def fields_of(cls, row: ServiceRow) -> dict[str, Any]:
        rec = row.record
        uid = rec.uid if rec is not None and rec.uid else ""
        if not uid and row.allocations:
            uid = row.allocations[0].service_uid
        return {
            "namespace": row.namespace,
            "name": row.name,
            "uid": uid,
            "state": "pending" if row.pending else "allocated",
            "ips": row.ips,
            "pools": row.pools,
            "reason": row.reason,
            "message": row.message,
            "serving": bool(rec.serving) if rec is not None else False,
            "serving_message": rec.serving_message if rec is not None else "",
            "ports": _service_ports(row),
            "traffic_policy": row.traffic_policy,
            "sharing_key": row.sharing_key or None,
            "load_balancer_class": rec.load_balancer_class if rec is not None else None,
            "updated_at": rec.updated_at if rec is not None else None,
        }

    @classmethod
    def of(cls, row: ServiceRow) -> ServiceRead:
        return cls(**cls.fields_of(row))


class ServicePage(Page[ServiceRead]):
    pass


class ServiceDetailRead(ServiceRead):
    allocations: list[AllocationRead] = Field(description="Its live allocations.")
    history: list[LedgerRead] = Field(
        description="Its ledger rows, newest first, at most 50 (all of them: `/history`)."
    )

    @classmethod
    def of_detail(cls, detail: ServiceDetail) -> ServiceDetailRead:
        row = detail.service
        return cls(
            **cls.fields_of(row),
            allocations=[AllocationRead.of(a) for a in row.allocations],
            history=[LedgerRead.of(e) for e in detail.events],
        )


class ExternalNameRead(BaseModel):
    namespace: str
    name: str
    external_name: str = Field(description="The DNS name the Service points to.")
    ports: list[ServicePortRead]
    dns_status: str = Field(description="unknown, resolves, nxdomain, timeout or error.")
    dns_addresses: list[str]
    dns_checked_at: datetime | None
    removed: bool = Field(description="The Service is gone or no longer ExternalName.")
    removed_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, m: ExternalNameMapping) -> ExternalNameRead:
        return cls(
            namespace=m.namespace,
            name=m.name,
            external_name=m.external_name,
            ports=[ServicePortRead.of(p) for p in m.ports if isinstance(p, Mapping)],
            dns_status=m.dns_status,
            dns_addresses=[str(a) for a in m.dns_addresses],
            dns_checked_at=m.dns_checked_at,
            removed=m.removed_at is not None,
            removed_at=m.removed_at,
            created_at=m.created_at,
            updated_at=m.updated_at,
        )


class ExternalNamePage(Page[ExternalNameRead]):
    pass


class IngressRouteRead(BaseModel):
    id: int
    namespace: str
    ingress: str = Field(description="The Ingress's name.")
    host: str = Field(description="Empty: the rule matches any host.")
    path: str
    path_type: str
    backend_service: str
    backend_port: str = Field(description="Port number or name, as the Ingress names it.")
    node_port: int | None = Field(description="The backend's nodePort the fleet sends to.")
    tls_secret: str | None
    error: str = Field(description="Why the route is not served (empty when it is).")
    updated_at: datetime

    @classmethod
    def of(cls, r: IngressRoute) -> IngressRouteRead:
        return cls(
            id=r.id,
            namespace=r.namespace,
            ingress=r.ingress_name,
            host=r.host,
            path=r.path,
            path_type=r.path_type,
            backend_service=r.backend_service,
            backend_port=r.backend_port,
            node_port=r.node_port,
            tls_secret=r.tls_secret,
            error=r.error,
            updated_at=r.updated_at,
        )


class IngressRoutePage(Page[IngressRouteRead]):
    pass
