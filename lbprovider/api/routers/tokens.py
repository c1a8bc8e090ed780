"""``/api/v1/tokens`` (admin): create (the secret is answered once), list, read, revoke.

No ``Idempotency-Key`` here: a stored answer would keep the secret in the database."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from lbprovider.api.auth import ADMIN, ActorDep
from lbprovider.api.deps import PageDep, SessionDep
from lbprovider.api.paging import paginate
from lbprovider.api.problems import problem_responses
from lbprovider.api.schemas.tokens import TokenCreate, TokenCreated, TokenPage, TokenRead
from lbprovider.services import queries, tokens

router = APIRouter(prefix="/tokens", tags=["tokens"], dependencies=[ADMIN])

IdPath = Annotated[int, Path(ge=1, le=2**31 - 1, description="Token id.")]


@router.get("", responses=problem_responses(401, 403, 422, 429))
def list_tokens(request: Request, session: SessionDep, page: PageDep) -> TokenPage:
    return TokenPage(**paginate(request, session, queries.token_query(), page, TokenRead.of))


@router.post("", status_code=201, responses=problem_responses(401, 403, 422, 429))
def create_token(body: TokenCreate, session: SessionDep, actor: ActorDep) -> TokenCreated:
    token, secret = tokens.create_token(
        session=session,
        name=body.name,
        scopes=list(dict.fromkeys(body.scopes)),
        actor=actor,
        expires_at=body.expires_at,
        allowed_cidrs=body.allowed_cidrs,
        host=body.host,
    )
    return TokenCreated(**TokenRead.fields_of(token), secret=secret)


@router.get("/{token_id}", responses=problem_responses(401, 403, 404, 422, 429))
def get_token(token_id: IdPath, session: SessionDep) -> TokenRead:
    return TokenRead.of(tokens.get_token(session=session, token_id=token_id))


@router.delete("/{token_id}", status_code=204, responses=problem_responses(401, 403, 404, 422, 429))
def revoke_token(token_id: IdPath, session: SessionDep, actor: ActorDep) -> Response:
    tokens.revoke_token(session=session, token_id=token_id, actor=actor)
    return Response(status_code=204)
