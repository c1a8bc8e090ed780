"""Pool schemas: what an operator writes (create, partial update, preview) and reads back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from lbprovider.api.schemas.common import NO_NUL, Page, Str63, Str253, Text4k
from lbprovider.db.models import Pool
from lbprovider.services.pools import PoolFields, Utilisation, pool_as_dict

PoolName = Annotated[
    str, StringConstraints(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
]
Range = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=NO_NUL)]
Labels = dict[Str253, Str63]

RANGES_DOC = "Addresses: CIDRs (`10.0.0.0/28`), ranges (`10.0.0.5-10.0.0.9`) or single IPs."


class PoolBody(BaseModel):
    """Fields shared by create and update (all optional here; create requires some)."""

    model_config = ConfigDict(extra="forbid")

    auto_assign: bool | None = Field(
        default=None, description="Hand addresses to Services that name no pool."
    )
    avoid_buggy_ips: bool | None = Field(
        default=None, description="Skip .0 and .255 addresses (old client bugs)."
    )
    disabled: bool | None = Field(default=None, description="Give out no new addresses.")
    priority: int | None = Field(
        default=None, ge=-1_000_000, le=1_000_000, description="Lower is tried first."
    )
    namespaces: list[Str253] | None = Field(
        default=None, max_length=256, description="Only Services in these namespaces (empty: any)."
    )
    namespace_selector: Labels | None = Field(default=None, description="Namespace labels.")
    service_selector: Labels | None = Field(default=None, description="Service labels.")
    description: Text4k | None = None
    exclusions: list[Range] | None = Field(
        default=None, max_length=256, description="Addresses never handed out. " + RANGES_DOC
    )


class PoolCreate(PoolBody):
    name: PoolName = Field(description="DNS label, unique.")
    ranges: list[Range] = Field(min_length=1, max_length=256, description=RANGES_DOC)

    def to_fields(self) -> PoolFields:
        return PoolFields(**self.model_dump(exclude_none=True))


class PoolUpdate(PoolBody):
    """A partial edit: absent (or null) fields keep their value. A pool cannot be renamed."""

    ranges: list[Range] | None = Field(
        default=None, min_length=1, max_length=256, description=RANGES_DOC
    )

    def merged_into(self, current: PoolFields) -> PoolFields:
        changes = self.model_dump(exclude_unset=True, exclude_none=True)
        return PoolFields(**{**vars(current), **changes})


class UtilisationRead(BaseModel):
    family: int = Field(description="4 or 6.")
    total: int = Field(description="Usable addresses (exclusions removed).")
    used: int = Field(description="Addresses held by Services.")
    reserved: int = Field(description="Addresses reserved and not (yet) held.")
    free: int
    percent: float = Field(description="(used + reserved) / total, in percent.")

    @classmethod
    def of(cls, u: Utilisation) -> UtilisationRead:
        return cls(
            family=u.family,
            total=u.total,
            used=u.used,
            reserved=u.reserved,
            free=u.free,
            percent=round(u.percent, 3),
        )


class PoolRead(BaseModel):
    name: str
    ranges: list[str]
    exclusions: list[str]
    auto_assign: bool
    avoid_buggy_ips: bool
    disabled: bool
    priority: int
    namespaces: list[str]
    namespace_selector: dict[str, str]
    service_selector: dict[str, str]
    description: str
    version: int = Field(description="Bumped by every edit; the ETag and If-Match value.")
    created_at: datetime
    updated_at: datetime
    utilisation: list[UtilisationRead] = Field(description="One entry per address family.")

    @classmethod
    def of(cls, pool: Pool, usage: list[Utilisation]) -> PoolRead:
        data: dict[str, Any] = pool_as_dict(pool)
        return cls(
            **data,
            created_at=pool.created_at,
            updated_at=pool.updated_at,
            utilisation=[UtilisationRead.of(u) for u in usage],
        )


class PoolPage(Page[PoolRead]):
    pass


class DisplacedRead(BaseModel):
    ip: str
    namespace: str
    name: str
    why: str = Field(description="Why the address would have to move.")


class PreviewRead(BaseModel):
    """A dry run of an edit: the live allocations it would move (nothing is changed)."""

    would_move: int
    displaced: list[DisplacedRead]


class AvailableRead(BaseModel):
    pool: str
    addresses: list[str] = Field(description="The next free addresses, best first.")
