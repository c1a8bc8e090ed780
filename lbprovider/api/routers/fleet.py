"""``/api/v1/fleet``: the HAProxy hosts. The agent-facing state and status routes are added by
the fleet package's router, guarded by ``lbprovider.api.auth.require_host_agent``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from lbprovider.api.auth import READ
from lbprovider.api.deps import PageDep, SessionDep
from lbprovider.api.paging import paginate
from lbprovider.api.problems import problem_responses
from lbprovider.api.schemas.tokens import FleetHostPage, FleetHostRead
from lbprovider.services.queries import fleet_host_query

router = APIRouter(prefix="/fleet", tags=["fleet"])


@router.get("/hosts", dependencies=[READ], responses=problem_responses(401, 403, 422, 429))
def list_hosts(
    request: Request,
    session: SessionDep,
    page: PageDep,
    enabled: Annotated[bool | None, Query()] = None,
) -> FleetHostPage:
    stmt = fleet_host_query(enabled=enabled)
    return FleetHostPage(**paginate(request, session, stmt, page, FleetHostRead.of))
