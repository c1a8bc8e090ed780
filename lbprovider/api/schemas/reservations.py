"""Reservation schemas: claim a given address or "the next free one" of a pool."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from lbprovider.api.schemas.common import AddressFamily, Page, Str63, Str253, Text4k, UTCDatetime
from lbprovider.db.models import Reservation

Owner = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[^\x00]*\S")]


class ReservationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pool: Str63 = Field(description="Pool to reserve from.")
    ip: Str63 | None = Field(
        default=None, description="The address to reserve; omit for the next free one."
    )
    family: AddressFamily | None = Field(
        default=None, description="With no `ip`: the family to take the next free address from."
    )
    owner: Owner = Field(description="Who holds it (a pipeline, a team).")
    purpose: Text4k = ""
    service_namespace: Str253 | None = Field(
        default=None, description="With `service_name`: the only Service that may take it."
    )
    service_name: Str253 | None = None
    expires_at: UTCDatetime | None = Field(
        default=None, description="When it is released by itself (RFC 3339 with offset)."
    )


class ReservationRead(BaseModel):
    id: int
    ip: str
    pool: str
    family: int
    owner: str
    purpose: str
    service_namespace: str | None
    service_name: str | None
    expires_at: datetime | None
    created_at: datetime
    created_by: str = Field(description="Name of the token that made it.")

    @classmethod
    def of(cls, r: Reservation) -> ReservationRead:
        return cls(
            id=r.id,
            ip=r.ip,
            pool=r.pool.name,
            family=r.family,
            owner=r.owner,
            purpose=r.purpose,
            service_namespace=r.service_namespace,
            service_name=r.service_name,
            expires_at=r.expires_at,
            created_at=r.created_at,
            created_by=r.created_by,
        )


class ReservationPage(Page[ReservationRead]):
    pass
