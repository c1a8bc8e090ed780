"""Sign-in with an API token, sign-out, and the live-update stream of a signed-in page.

Failed sign-ins count per client address (``services.ratelimit``, as for the API's bearer
tokens): past ``settings.auth_fail_limit`` in a minute, the form answers 429 with
``Retry-After`` before the submitted token is even looked at.
"""

from __future__ import annotations

import logging
import secrets
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from lbprovider.services.errors import DomainError, Unauthorized
from lbprovider.services.tokens import authenticate
from lbprovider.ui.guard import (
    ProtectedUser,
    ReadDB,
    UiDep,
    UserDep,
    protect_login,
)
from lbprovider.ui.sessions import COOKIE, LOGIN_CSRF_COOKIE, MAX_AGE_SECONDS, UiUser

logger = logging.getLogger(__name__)

router = APIRouter()


def safe_next(target: str | None) -> str:
    """Only a path on this site (never ``//host`` or a scheme) may follow a sign-in."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target:
        return "/"
    return target


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


@router.get("/login")
def login_page(request: Request, ctx: UiDep) -> Response:
    csrf = secrets.token_urlsafe(24)
    next_url = safe_next(request.query_params.get("next"))
    response = ctx.renderer.render(
        request, "login.html", {"login_csrf": csrf, "next": next_url, "title": "Sign in"}
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        csrf,
        max_age=3600,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
        path="/login",
    )
    return response


def _login_form(
    request: Request,
    ctx: UiDep,
    next_url: str,
    error: str,
    status: int,
    headers: dict[str, str] | None = None,
) -> Response:
    context = {
        "login_csrf": request.cookies.get(LOGIN_CSRF_COOKIE, ""),
        "next": next_url,
        "title": "Sign in",
        "error": error,
    }
    return ctx.renderer.render(request, "login.html", context, status=status, headers=headers)


@router.post("/login", dependencies=[Depends(protect_login)])
async def login(request: Request, ctx: UiDep, session: ReadDB) -> Response:
    form = await request.form()
    secret = str(form.get("token") or "").strip()
    next_url = safe_next(str(form.get("next") or "/"))
    client = request.client.host if request.client else None
    wait = ctx.limiter.retry_after(client or "unknown")
    if wait:
        logger.warning(
            "dashboard sign-in rate-limited",
            extra={"event": "ui_login_limited", "client": client},
        )
        error = f"Too many failed sign-ins from your address; try again in {wait} s."
        return _login_form(request, ctx, next_url, error, 429, {"Retry-After": str(wait)})
    try:
        token = authenticate(session=session, secret=secret, client_ip=client)
        if not UiUser.of(token, "").can("read"):
            raise Unauthorized("agent tokens cannot sign in to the dashboard")
    except DomainError as e:
        ctx.limiter.failed(client or "unknown")
        logger.warning(
            "dashboard sign-in failed",
            extra={"event": "ui_login_failed", "client": client, "error": e.detail},
        )
        return _login_form(request, ctx, next_url, e.detail, e.status)
    value, _ = ctx.signer.issue(token.id)
    logger.info("dashboard sign-in", extra={"event": "ui_login", "token": token.name})
    response = RedirectResponse(next_url, status_code=303)
    response.set_cookie(
        COOKIE,
        value,
        max_age=MAX_AGE_SECONDS,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
        path="/",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(user: ProtectedUser) -> Response:
    logger.info("dashboard sign-out", extra={"event": "ui_logout", "token": user.name})
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/events")
def events(ctx: UiDep, user: UserDep) -> Response:
    """Server-sent events naming the topics that changed (see ``lbprovider.ui.live``)."""
    if ctx.hub.closed:
        return Response("shutting down", status_code=503, media_type="text/plain")
    return StreamingResponse(
        ctx.hub.stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
