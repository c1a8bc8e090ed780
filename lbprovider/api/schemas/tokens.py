"""Token and fleet-host schemas. ``TokenCreated`` is the only schema that carries a secret."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from lbprovider.api.schemas.common import Page, UTCDatetime
from lbprovider.db.models import ApiToken, FleetHost

TokenName = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@:-]*$")
]
HostName = Annotated[
    str, StringConstraints(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9._-]+$")
]
Cidr = Annotated[str, StringConstraints(min_length=1, max_length=50, pattern=r"^[0-9A-Fa-f:./]+$")]
ScopeName = Literal["read", "write", "admin", "agent"]


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: TokenName
    scopes: list[ScopeName] = Field(min_length=1, max_length=4)
    expires_at: UTCDatetime | None = None
    allowed_cidrs: list[Cidr] = Field(
        default_factory=list, max_length=64, description="Client networks it may be used from."
    )
    host: HostName | None = Field(default=None, description="Fleet host (agent tokens only).")


class TokenRead(BaseModel):
    id: int
    name: str
    prefix: str = Field(description="Public part of the token, to recognise it.")
    scopes: list[str]
    host: str | None
    allowed_cidrs: list[str]
    expires_at: datetime | None
    created_at: datetime
    created_by: str
    revoked: bool
    revoked_at: datetime | None

    @classmethod
    def fields_of(cls, t: ApiToken) -> dict[str, Any]:
        return {
            "id": t.id,
            "name": t.name,
            "prefix": t.prefix,
            "scopes": list(t.scopes),
            "host": t.host,
            "allowed_cidrs": list(t.allowed_cidrs),
            "expires_at": t.expires_at,
            "created_at": t.created_at,
            "created_by": t.created_by,
            "revoked": t.revoked_at is not None,
            "revoked_at": t.revoked_at,
        }

    @classmethod
    def of(cls, t: ApiToken) -> TokenRead:
        return cls(**cls.fields_of(t))


class TokenCreated(TokenRead):
    secret: str = Field(description="The bearer token. Shown once; only its hash is stored.")


class TokenPage(Page[TokenRead]):
    pass


class FleetHostRead(BaseModel):
    name: str
    address: str
    labels: dict[str, Any]
    enabled: bool
    last_heartbeat: datetime | None
    applied_version: str
    status: dict[str, Any]
    error: str
    created_at: datetime

    @classmethod
    def of(cls, h: FleetHost) -> FleetHostRead:
        return cls(
            name=h.name,
            address=h.address,
            labels=dict(h.labels),
            enabled=h.enabled,
            last_heartbeat=h.last_heartbeat,
            applied_version=h.applied_version,
            status=dict(h.status),
            error=h.error,
            created_at=h.created_at,
        )


class FleetHostPage(Page[FleetHostRead]):
    pass
