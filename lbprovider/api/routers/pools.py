"""``/api/v1/pools``: list, create, read (utilisation), edit with If-Match, preview, delete,
next free addresses. Edits that would move live allocations are refused with 409 and the
preview unless ``force=true``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response
from sqlalchemy.orm import Session

from lbprovider.api.auth import READ, WRITE, ActorDep
from lbprovider.api.deps import ContextDep, PageDep, SessionDep
from lbprovider.api.idempotency import IdempotencyDep
from lbprovider.api.paging import paginate_list
from lbprovider.api.problems import problem_responses
from lbprovider.api.schemas.common import AddressFamily, Str63, Text4k
from lbprovider.api.schemas.pools import (
    AvailableRead,
    DisplacedRead,
    PoolCreate,
    PoolName,
    PoolPage,
    PoolRead,
    PoolUpdate,
    PreviewRead,
)
from lbprovider.db.models import Pool
from lbprovider.services import pools
from lbprovider.services.errors import PreconditionRequired

router = APIRouter(prefix="/pools", tags=["pools"])

NamePath = Annotated[PoolName, Path(description="Pool name.")]
ETAG_HEADER = {"ETag": {"description": "The pool's version.", "schema": {"type": "string"}}}


def etag(pool: Pool) -> str:
    return f'"{pool.version}"'


def read_pool(session: Session, pool: Pool) -> PoolRead:
    return PoolRead.of(pool, pools.utilisation(session=session, pool=pool))


def parse_if_match(value: str | None) -> int | None:
    """The version named by If-Match; None for ``*``; -1 (never current) when unparseable."""
    if value is None:
        raise PreconditionRequired("PATCH needs If-Match with the pool's ETag", field="If-Match")
    text = value.strip()
    if text == "*":
        return None
    text = text.removeprefix("W/").strip('"')
    return int(text) if text.isdigit() and len(text) < 10 else -1


@router.get("", dependencies=[READ], responses=problem_responses(401, 403, 422, 429))
def list_pools(
    request: Request,
    session: SessionDep,
    page: PageDep,
    name: Annotated[Str63 | None, Query(description="Exact name.")] = None,
    family: Annotated[AddressFamily | None, Query(description="Pools with this family.")] = None,
    disabled: bool | None = None,
    q: Annotated[Text4k | None, Query(description="Search name and description.")] = None,
) -> PoolPage:
    rows = session.scalars(pools.pool_query(name=name, disabled=disabled, q=q)).all()
    matching = pools.filter_family(rows, int(family) if family else None)
    return PoolPage(**paginate_list(request, matching, page, lambda p: read_pool(session, p)))


@router.post(
    "",
    status_code=201,
    dependencies=[WRITE],
    responses=problem_responses(401, 403, 422, 429),
)
def create_pool(
    body: PoolCreate, session: SessionDep, actor: ActorDep, idem: IdempotencyDep, response: Response
) -> PoolRead:
    pool = pools.create_pool(session=session, data=body.to_fields(), actor=actor)
    response.headers["ETag"] = etag(pool)
    return idem.store(read_pool(session, pool), 201)


@router.get(
    "/{name}",
    dependencies=[READ],
    responses={200: {"headers": ETAG_HEADER}, **problem_responses(401, 403, 404, 422, 429)},
)
def get_pool(name: NamePath, session: SessionDep, response: Response) -> PoolRead:
    pool = pools.get_pool(session=session, name=name)
    response.headers["ETag"] = etag(pool)
    return read_pool(session, pool)


@router.patch(
    "/{name}",
    dependencies=[WRITE],
    responses={
        200: {"headers": ETAG_HEADER},
        **problem_responses(401, 403, 404, 409, 412, 422, 428, 429),
    },
)
def update_pool(
    name: NamePath,
    body: PoolUpdate,
    session: SessionDep,
    ctx: ContextDep,
    actor: ActorDep,
    response: Response,
    if_match: Annotated[
        str | None,
        Header(alias="If-Match", max_length=100, description="The ETag you read (required)."),
    ] = None,
    force: Annotated[
        bool, Query(description="Apply even if live allocations must move (they are moved).")
    ] = False,
) -> PoolRead:
    current = pools.get_pool(session=session, name=name)
    version = parse_if_match(if_match)
    pool, _ = pools.update_pool(
        session=session,
        name=name,
        data=body.merged_into(pools.fields_of(current)),
        actor=actor,
        policy=ctx.policy,
        if_match=version,
        force=force,
    )
    response.headers["ETag"] = etag(pool)
    return read_pool(session, pool)


@router.delete(
    "/{name}",
    status_code=204,
    dependencies=[WRITE],
    responses=problem_responses(401, 403, 404, 409, 422, 429),
)
def delete_pool(
    name: NamePath,
    session: SessionDep,
    actor: ActorDep,
    force: Annotated[
        bool, Query(description="Release its allocations and reservations first.")
    ] = False,
) -> Response:
    pools.delete_pool(session=session, name=name, actor=actor, force=force)
    return Response(status_code=204)


@router.post(
    "/{name}/preview",
    dependencies=[READ],
    responses=problem_responses(401, 403, 404, 422, 429),
    summary="Dry run of an edit (changes nothing; read scope suffices)",
)
def preview_pool(name: NamePath, body: PoolUpdate, session: SessionDep) -> PreviewRead:
    current = pools.get_pool(session=session, name=name)
    data = body.merged_into(pools.fields_of(current))
    displaced = pools.preview_edit(session=session, name=name, data=data)
    return PreviewRead(
        would_move=len(displaced),
        displaced=[
            DisplacedRead(ip=d.ip, namespace=d.service.namespace, name=d.service.name, why=d.why)
            for d in displaced
        ],
    )


@router.get(
    "/{name}/available",
    dependencies=[READ],
    responses=problem_responses(401, 403, 404, 422, 429),
    summary="The next free addresses (allocates nothing)",
)
def available(
    name: NamePath,
    session: SessionDep,
    ctx: ContextDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    family: AddressFamily | None = None,
) -> AvailableRead:
    addresses = pools.available_ips(
        session=session,
        name=name,
        limit=limit,
        policy=ctx.policy,
        family=int(family) if family else None,
    )
    return AvailableRead(pool=name, addresses=addresses)
