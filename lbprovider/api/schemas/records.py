"""Allocation, ledger (history) and audit schemas: read-only views of what happened."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from lbprovider.api.schemas.common import Page
from lbprovider.db.models import Allocation, AuditEntry, LedgerEntry


class PortRead(BaseModel):
    protocol: str
    port: int


class AllocationRead(BaseModel):
    id: int
    ip: str
    pool: str
    family: int
    namespace: str
    service: str
    service_uid: str
    sharing_key: str | None
    ports: list[PortRead]
    state: Literal["active", "released"]
    allocated_at: datetime
    released_at: datetime | None

    @classmethod
    def fields_of(cls, a: Allocation) -> dict[str, Any]:
        return {
            "id": a.id,
            "ip": a.ip,
            "pool": a.pool_name,
            "family": a.family,
            "namespace": a.service_namespace,
            "service": a.service_name,
            "service_uid": a.service_uid,
            "sharing_key": a.sharing_key,
            "ports": [PortRead(protocol=str(p[0]), port=int(p[1])) for p in a.ports],
            "state": "active" if a.active else "released",
            "allocated_at": a.allocated_at,
            "released_at": a.released_at,
        }

    @classmethod
    def of(cls, a: Allocation) -> AllocationRead:
        return cls(**cls.fields_of(a))


class AllocationPage(Page[AllocationRead]):
    pass


class LedgerRead(BaseModel):
    id: int
    at: datetime
    ip: str
    pool: str
    namespace: str
    service: str
    action: str = Field(description="allocated, released, adopted, reassigned, reserved, ...")
    reason: str
    actor: str = Field(description="Token name, or `controller`.")
    request_id: str

    @classmethod
    def of(cls, e: LedgerEntry) -> LedgerRead:
        return cls(
            id=e.id,
            at=e.at,
            ip=e.ip,
            pool=e.pool,
            namespace=e.service_namespace,
            service=e.service_name,
            action=e.action,
            reason=e.reason,
            actor=e.actor,
            request_id=e.request_id,
        )


class LedgerPage(Page[LedgerRead]):
    pass


class AllocationDetail(AllocationRead):
    history: list[LedgerRead] = Field(description="Ledger rows of this address and Service.")


class AuditRead(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    object_type: str
    object_id: str
    request_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None

    @classmethod
    def of(cls, e: AuditEntry) -> AuditRead:
        return cls(
            id=e.id,
            at=e.at,
            actor=e.actor,
            action=e.action,
            object_type=e.object_type,
            object_id=e.object_id,
            request_id=e.request_id,
            before=e.before,
            after=e.after,
        )


class AuditPage(Page[AuditRead]):
    pass
