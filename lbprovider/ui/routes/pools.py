"""Pool pages: list with utilisation, detail (address grid, allocations, reservations, history),
create, edit with preview and explicit confirm, drain, delete with confirmation.

Writes call the same ``services.pools`` use cases as the REST API (so they are validated and
audited the same way); a ``DomainError`` is shown inline with the form, with its own text.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from lbprovider.db.models import Pool
from lbprovider.services import pools as pool_service
from lbprovider.services.audit import ledger_query
from lbprovider.services.errors import DomainError, EditWouldMoveAllocations, NotFound
from lbprovider.services.grid import GRID_LIMIT, address_grid, grid_size
from lbprovider.services.overview import pool_uses
from lbprovider.services.queries import allocation_query, count_rows
from lbprovider.services.reservations import reservation_query
from lbprovider.ui.forms import integer, pool_fields, pool_form_values, text
from lbprovider.ui.guard import WRITE, ProtectedUser, ReadDB, UiDep, UserDep, actor_of, need
from lbprovider.ui.paging import page_of
from lbprovider.ui.routes.pages import not_found, param

router = APIRouter()


@router.get("/pools")
def pools_page(request: Request, ctx: UiDep, user: UserDep, session: ReadDB) -> Response:
    q = param(request, "q")
    state = param(request, "state")
    disabled = {"active": False, "drained": True}.get(state or "")
    page = page_of(session, pool_service.pool_query(q=q, disabled=disabled), request)
    context = {
        "title": "Pools",
        "active": "pools",
        "page": page,
        "uses": pool_uses(session, page.rows),
        "filters": {"q": q, "state": state if disabled is not None else None},
        "notice": _notice(request),
    }
    return ctx.renderer.render(request, "pools.html", context, block="table")


def _notice(request: Request) -> str | None:
    done = request.query_params.get("done", "")
    name = param(request, "pool", limit=63) or ""
    moved = request.query_params.get("moved", "0")
    moved_text = f" {moved} allocation(s) moved." if moved.isdigit() and moved != "0" else ""
    messages = {
        "created": f"Pool {name} created.",
        "saved": f"Pool {name} saved.{moved_text}",
        "deleted": f"Pool {name} deleted.",
        "drained": f"Pool {name} drained: it gives out no new addresses.",
        "undrained": f"Pool {name} is active again.",
    }
    return messages.get(done)


def _form(
    request: Request,
    ctx: UiDep,
    values: dict[str, Any],
    *,
    mode: str,
    name: str = "",
    error: DomainError | None = None,
    displaced: list[dict[str, str]] | None = None,
    status: int = 200,
) -> Response:
    title = "New pool" if mode == "create" else f"Edit pool {name}"
    context = {
        "title": title,
        "active": "pools",
        "mode": mode,
        "v": values,
        "pool_name": name,
        "error": error,
        "displaced": displaced,
    }
    return ctx.renderer.render(request, "pool_form.html", context, block="form", status=status)


def _submitted(form: FormData) -> dict[str, Any]:
    """The form as typed, to show it again next to an error."""
    values: dict[str, Any] = {k: text(form, k) for k in pool_form_values(pool_service.PoolFields())}
    values["auto_assign"] = "auto_assign" in form
    values["avoid_buggy_ips"] = "avoid_buggy_ips" in form
    values["version"] = text(form, "version")
    return values


@router.get("/pools/new", dependencies=[WRITE])
def new_pool_page(request: Request, ctx: UiDep, user: UserDep) -> Response:
    values = pool_form_values(pool_service.PoolFields())
    return _form(request, ctx, values, mode="create")


@router.post("/pools")
async def create_pool(request: Request, ctx: UiDep, user: ProtectedUser) -> Response:
    need(user, "write")
    form = await request.form()
    try:
        data = pool_fields(form)
        with ctx.write() as session:
            pool_service.create_pool(session=session, data=data, actor=actor_of(request, user))
    except DomainError as e:
        return _form(request, ctx, _submitted(form), mode="create", error=e, status=e.status)
    return RedirectResponse(f"/pools/{data.name}?done=created&pool={data.name}", status_code=303)


@router.get("/pools/{name}")
def pool_page(name: str, request: Request, ctx: UiDep, user: UserDep, session: ReadDB) -> Response:
    try:
        pool = pool_service.get_pool(session=session, name=name)
    except NotFound as e:
        return not_found(request, ctx, e.detail)
    context = _detail(request, ctx, session, pool)
    return ctx.renderer.render(request, "pool.html", context, block="live")


def _detail(request: Request, ctx: UiDep, session: Session, pool: Pool) -> dict[str, Any]:
    allocations = page_of(
        session, allocation_query(pool=pool.name, state="active"), request, prefix="a"
    )
    return {
        "title": f"Pool {pool.name}",
        "active": "pools",
        "pool": pool,
        "use": pool_uses(session, [pool])[0],
        "grid": address_grid(session=session, pool=pool, policy=ctx.policy),
        "grid_size": grid_size(pool),
        "grid_limit": GRID_LIMIT,
        "allocations": allocations,
        "reservations": list(session.scalars(reservation_query(pool_id=pool.id).limit(200))),
        "history": list(session.scalars(ledger_query(pool=pool.name).limit(20))),
        "notice": _notice(request),
    }


@router.get("/pools/{name}/edit", dependencies=[WRITE])
def edit_pool_page(
    name: str, request: Request, ctx: UiDep, user: UserDep, session: ReadDB
) -> Response:
    try:
        pool = pool_service.get_pool(session=session, name=name)
    except NotFound as e:
        return not_found(request, ctx, e.detail)
    values = pool_form_values(pool_service.fields_of(pool)) | {"version": pool.version}
    return _form(request, ctx, values, mode="edit", name=pool.name)


@router.post("/pools/{name}/edit")
async def edit_pool(name: str, request: Request, ctx: UiDep, user: ProtectedUser) -> Response:
    """Without ``confirm``: apply only if nothing moves, else show what would move (409). With
    ``confirm``: apply at the version the operator previewed, moving the listed allocations."""
    need(user, "write")
    form = await request.form()
    values = _submitted(form) | {"name": name}
    try:
        with ctx.write() as tx:
            current = pool_service.get_pool(session=tx, name=name)
            data = pool_fields(form, name=name, disabled=current.disabled)
            _, displaced = pool_service.update_pool(
                session=tx,
                name=name,
                data=data,
                actor=actor_of(request, user),
                policy=ctx.policy,
                if_match=integer(form, "version", -1),
                force=text(form, "confirm") == "yes",
            )
    except NotFound as e:
        return not_found(request, ctx, e.detail)
    except EditWouldMoveAllocations as e:
        moving = e.extra["displaced"]
        return _form(request, ctx, values, mode="edit", name=name, displaced=moving, status=409)
    except DomainError as e:
        return _form(request, ctx, values, mode="edit", name=name, error=e, status=e.status)
    url = f"/pools/{name}?done=saved&pool={name}&moved={len(displaced)}"
    return RedirectResponse(url, status_code=303)


@router.post("/pools/{name}/drain")
async def drain_pool(name: str, request: Request, ctx: UiDep, user: ProtectedUser) -> Response:
    """Drain (``disabled``: no new addresses; live ones stay) or undrain the pool."""
    need(user, "write")
    form = await request.form()
    drain = text(form, "drain") != "no"
    try:
        with ctx.write() as session:
            pool = pool_service.get_pool(session=session, name=name)
            data = pool_service.fields_of(pool)
            data.disabled = drain
            pool_service.update_pool(
                session=session,
                name=name,
                data=data,
                actor=actor_of(request, user),
                policy=ctx.policy,
            )
    except DomainError as e:
        context = {"status": e.status, "detail": e.detail}
        return ctx.renderer.render(request, "error.html", context, status=e.status)
    done = "drained" if drain else "undrained"
    return RedirectResponse(f"/pools/{name}?done={done}&pool={name}", status_code=303)


@router.get("/pools/{name}/delete", dependencies=[WRITE])
def delete_pool_page(
    name: str, request: Request, ctx: UiDep, user: UserDep, session: ReadDB
) -> Response:
    try:
        pool = pool_service.get_pool(session=session, name=name)
    except NotFound as e:
        return not_found(request, ctx, e.detail)
    return _delete_form(request, ctx, session, pool)


def _delete_form(
    request: Request,
    ctx: UiDep,
    session: Session,
    pool: Pool,
    error: DomainError | None = None,
    status: int = 200,
) -> Response:
    context = {
        "title": f"Delete pool {pool.name}",
        "active": "pools",
        "pool": pool,
        "live": count_rows(session, allocation_query(pool=pool.name, state="active")),
        "reserved": count_rows(session, reservation_query(pool_id=pool.id)),
        "error": error,
    }
    return ctx.renderer.render(request, "pool_delete.html", context, status=status)


@router.post("/pools/{name}/delete")
async def delete_pool(
    name: str, request: Request, ctx: UiDep, user: ProtectedUser, session: ReadDB
) -> Response:
    """Delete after the operator typed the name; ``force`` also releases what it holds."""
    need(user, "write")
    form = await request.form()
    try:
        pool = pool_service.get_pool(session=session, name=name)
    except NotFound as e:
        return not_found(request, ctx, e.detail)
    if text(form, "confirm_name") != name:
        error = DomainError(f"type the pool name {name!r} to confirm", field="confirm_name")
        return _delete_form(request, ctx, session, pool, error, status=422)
    session.rollback()
    try:
        with ctx.write() as tx:
            pool_service.delete_pool(
                session=tx, name=name, actor=actor_of(request, user), force="force" in form
            )
    except DomainError as e:
        return _delete_form(request, ctx, session, pool, e, status=e.status)
    return RedirectResponse(f"/pools?done=deleted&pool={name}", status_code=303)
