"""Token pages (admin): list, create (the secret is shown once, on the answer to the create),
revoke. Same ``services.tokens`` use cases and audit rows as the REST API."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from lbprovider.db.types import utcnow
from lbprovider.services.errors import DomainError, NotFound
from lbprovider.services.queries import token_query
from lbprovider.services.tokens import create_token, revoke_token
from lbprovider.ui.forms import integer, text
from lbprovider.ui.guard import ADMIN, ProtectedUser, ReadDB, UiDep, actor_of, need
from lbprovider.ui.paging import page_of
from lbprovider.ui.routes.pages import not_found

router = APIRouter()

UI_SCOPES = ("read", "write", "admin")


@router.get("/tokens", dependencies=[ADMIN])
def tokens_page(request: Request, ctx: UiDep, session: ReadDB) -> Response:
    return _page(request, ctx, session)


def _page(
    request: Request,
    ctx: UiDep,
    session: ReadDB,
    *,
    secret: str | None = None,
    created: str | None = None,
    error: DomainError | None = None,
    status: int = 200,
) -> Response:
    page = page_of(session, token_query(), request)
    revoked = request.query_params.get("revoked", "")[:100]
    context = {
        "title": "Tokens",
        "active": "tokens",
        "page": page,
        "secret": secret,
        "created": created,
        "error": error,
        "scopes": UI_SCOPES,
        "notice": f"Token {revoked} revoked." if revoked else None,
        "now": utcnow(),
    }
    return ctx.renderer.render(request, "tokens.html", context, block="table", status=status)


@router.post("/tokens")
async def create_token_route(
    request: Request, ctx: UiDep, user: ProtectedUser, session: ReadDB
) -> Response:
    need(user, "admin")
    form = await request.form()
    try:
        days = integer(form, "days", 0)
        with ctx.write() as tx:
            token, secret = create_token(
                session=tx,
                name=text(form, "name", limit=100),
                scopes=[text(form, "scope")],
                actor=actor_of(request, user),
                expires_at=utcnow() + timedelta(days=days) if days > 0 else None,
            )
    except DomainError as e:
        return _page(request, ctx, session, error=e, status=e.status)
    return _page(request, ctx, session, secret=secret, created=token.name, status=201)


@router.post("/tokens/{token_id}/revoke")
def revoke_token_route(
    token_id: int, request: Request, ctx: UiDep, user: ProtectedUser
) -> Response:
    need(user, "admin")
    try:
        with ctx.write() as tx:
            name = revoke_token(session=tx, token_id=token_id, actor=actor_of(request, user)).name
    except NotFound as e:
        return not_found(request, ctx, e.detail)
    return RedirectResponse(f"/tokens?revoked={quote(name)}", status_code=303)
