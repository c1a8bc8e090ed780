"""``/api/v1/reservations``: claim an address (given, or the pool's next free one) before the
Service or DNS record exists; list; release. Expiry is swept by the server itself."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from sqlalchemy.orm import Session

from lbprovider.api.auth import READ, WRITE, ActorDep
from lbprovider.api.deps import ContextDep, PageDep, SessionDep
from lbprovider.api.idempotency import IdempotencyDep
from lbprovider.api.paging import paginate
from lbprovider.api.problems import problem_responses
from lbprovider.api.schemas.common import Str63, Str253
from lbprovider.api.schemas.reservations import (
    ReservationCreate,
    ReservationPage,
    ReservationRead,
)
from lbprovider.services import reservations
from lbprovider.services.errors import NotFound
from lbprovider.services.pools import get_pool

router = APIRouter(prefix="/reservations", tags=["reservations"])

IdPath = Annotated[int, Path(ge=1, le=2**31 - 1, description="Reservation id.")]


def _pool_id(session: Session, name: str | None) -> int | None:
    """The pool's id for a filter; -1 (matches nothing) for an unknown pool."""
    if name is None:
        return None
    try:
        return get_pool(session=session, name=name).id
    except NotFound:
        return -1


@router.get("", dependencies=[READ], responses=problem_responses(401, 403, 422, 429))
def list_reservations(
    request: Request,
    session: SessionDep,
    page: PageDep,
    pool: Annotated[Str63 | None, Query(description="Pool name.")] = None,
    owner: Annotated[Str253 | None, Query()] = None,
    ip: Annotated[Str63 | None, Query()] = None,
) -> ReservationPage:
    stmt = reservations.reservation_query(pool_id=_pool_id(session, pool), owner=owner, ip=ip)
    return ReservationPage(**paginate(request, session, stmt, page, ReservationRead.of))


@router.post(
    "",
    status_code=201,
    dependencies=[WRITE],
    responses=problem_responses(401, 403, 404, 409, 422, 429),
)
def create_reservation(
    body: ReservationCreate,
    session: SessionDep,
    ctx: ContextDep,
    actor: ActorDep,
    idem: IdempotencyDep,
    response: Response,
) -> ReservationRead:
    row = reservations.create_reservation(
        session=session,
        pool_name=body.pool,
        owner=body.owner,
        actor=actor,
        policy=ctx.policy,
        ip=body.ip,
        family=int(body.family) if body.family else None,
        purpose=body.purpose,
        service_namespace=body.service_namespace,
        service_name=body.service_name,
        expires_at=body.expires_at,
    )
    response.headers["Location"] = f"/api/v1/reservations/{row.id}"
    return idem.store(ReservationRead.of(row), 201)


@router.get(
    "/{reservation_id}", dependencies=[READ], responses=problem_responses(401, 403, 404, 422, 429)
)
def get_reservation(reservation_id: IdPath, session: SessionDep) -> ReservationRead:
    return ReservationRead.of(
        reservations.get_reservation(session=session, reservation_id=reservation_id)
    )


@router.delete(
    "/{reservation_id}",
    status_code=204,
    dependencies=[WRITE],
    responses=problem_responses(401, 403, 404, 422, 429),
)
def delete_reservation(reservation_id: IdPath, session: SessionDep, actor: ActorDep) -> Response:
    reason = f"deleted by {actor.name}"
    reservations.delete_reservation(
        session=session, reservation_id=reservation_id, actor=actor, reason=reason
    )
    return Response(status_code=204)
