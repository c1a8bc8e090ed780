"""``/api/v1/allocations``, ``/history`` (the ledger) and ``/audit``: who holds what, what
happened to every address, and every write with its before and after. Read-only."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from pydantic import AfterValidator

from lbprovider.api.auth import ADMIN, READ
from lbprovider.api.deps import PageDep, SessionDep
from lbprovider.api.paging import paginate
from lbprovider.api.problems import problem_responses
from lbprovider.api.schemas.common import Str63, Str100, Str253, UTCDatetime
from lbprovider.api.schemas.records import (
    AllocationDetail,
    AllocationPage,
    AllocationRead,
    AuditPage,
    AuditRead,
    LedgerPage,
    LedgerRead,
)
from lbprovider.services import queries
from lbprovider.services.audit import ledger_query

router = APIRouter(tags=["history"])


def _canonical_ip(value: str) -> str:
    return str(ipaddress.ip_address(value))


def _canonical_cidr(value: str) -> str:
    return str(ipaddress.ip_network(value, strict=False))


IPQuery = Annotated[
    Str63 | None,
    AfterValidator(lambda v: _canonical_ip(v) if v is not None else None),
    Query(description="An address (any spelling; compared canonically)."),
]
CidrQuery = Annotated[
    Str63 | None,
    AfterValidator(lambda v: _canonical_cidr(v) if v is not None else None),
    Query(description="Addresses inside this network, e.g. `10.0.0.0/24`."),
]
Since = Annotated[UTCDatetime | None, Query(description="At or after (RFC 3339 with offset).")]
Until = Annotated[UTCDatetime | None, Query(description="Before (RFC 3339 with offset).")]
ERRORS = problem_responses(401, 403, 422, 429)


@router.get("/allocations", dependencies=[READ], responses=ERRORS, tags=["allocations"])
def list_allocations(
    request: Request,
    session: SessionDep,
    page: PageDep,
    pool: Annotated[Str63 | None, Query()] = None,
    namespace: Annotated[Str253 | None, Query()] = None,
    service: Annotated[Str253 | None, Query(description="Service name.")] = None,
    ip: IPQuery = None,
    cidr: CidrQuery = None,
    state: Annotated[queries.AllocationState | None, Query(description="Omit for both.")] = None,
) -> AllocationPage:
    stmt = queries.allocation_query(
        pool=pool, namespace=namespace, service=service, ip=ip, cidr=cidr, state=state
    )
    return AllocationPage(**paginate(request, session, stmt, page, AllocationRead.of))


@router.get(
    "/allocations/{allocation_id}",
    dependencies=[READ],
    responses=problem_responses(401, 403, 404, 422, 429),
    tags=["allocations"],
)
def get_allocation(
    allocation_id: Annotated[int, Path(ge=1, le=2**31 - 1)], session: SessionDep
) -> AllocationDetail:
    row = queries.get_allocation(session=session, allocation_id=allocation_id)
    history = queries.allocation_history(session=session, allocation=row)
    return AllocationDetail(
        **AllocationRead.fields_of(row), history=[LedgerRead.of(e) for e in history]
    )


@router.get("/history", dependencies=[READ], responses=ERRORS)
def list_history(
    request: Request,
    session: SessionDep,
    page: PageDep,
    ip: IPQuery = None,
    namespace: Annotated[Str253 | None, Query()] = None,
    service: Annotated[Str253 | None, Query(description="Service name.")] = None,
    pool: Annotated[Str63 | None, Query()] = None,
    actor: Annotated[Str253 | None, Query(description="Token name or `controller`.")] = None,
    action: Annotated[Str63 | None, Query()] = None,
    since: Since = None,
    until: Until = None,
) -> LedgerPage:
    stmt = ledger_query(
        ip=ip,
        namespace=namespace,
        name=service,
        pool=pool,
        actor=actor,
        action=action,
        since=since,
        until=until,
    )
    return LedgerPage(**paginate(request, session, stmt, page, LedgerRead.of))


@router.get("/audit", dependencies=[ADMIN], responses=ERRORS, tags=["audit"])
def list_audit(
    request: Request,
    session: SessionDep,
    page: PageDep,
    actor: Annotated[Str100 | None, Query(description="Token name.")] = None,
    object_type: Annotated[Str63 | None, Query(description="pool, reservation, token, ...")] = None,
    object_id: Annotated[Str253 | None, Query()] = None,
    request_id: Annotated[Str63 | None, Query()] = None,
    ip: IPQuery = None,
    service: Annotated[Str253 | None, Query(description="`namespace/name`.")] = None,
    since: Since = None,
    until: Until = None,
) -> AuditPage:
    stmt = queries.audit_search(
        actor=actor,
        object_type=object_type,
        object_id=object_id,
        request_id=request_id,
        ip=ip,
        service=service,
        since=since,
        until=until,
    )
    return AuditPage(**paginate(request, session, stmt, page, AuditRead.of))
