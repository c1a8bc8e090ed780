"""``include_ui``: wires the dashboard into an existing FastAPI app (the API's, in production).

Wiring only: routers, static files, the live hub, and the two exception handlers that turn
"not signed in" into a redirect to the sign-in page and "not allowed" into a 403 page.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.config import Settings
from lbprovider.db.session import read_only_factory
from lbprovider.services.context import IPPolicy
from lbprovider.services.ratelimit import FailedAuthLimiter
from lbprovider.ui.guard import LoginRequired, Refused, UiContext, login_url
from lbprovider.ui.live import LiveHub
from lbprovider.ui.routes import auth, pages, pools, tokens
from lbprovider.ui.sessions import SessionSigner
from lbprovider.ui.templating import STATIC_DIR, Renderer, make_environment

logger = logging.getLogger(__name__)


def include_ui(
    app: FastAPI,
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    policy: IPPolicy,
    live_poll_seconds: float = 1.0,
    browser_poll_seconds: float = 10.0,
    stream_seconds: float = 300.0,
    limiter: FailedAuthLimiter | None = None,
) -> UiContext:
    """Serve the dashboard from ``app`` at ``/`` (pages), ``/static`` and ``/events``.

    ``live_poll_seconds``: how often the hub looks for changes; ``browser_poll_seconds``: the
    page's refresh period when server-sent events are unavailable; ``limiter``: the failed
    sign-in counter (pass the API's to count both doors together; default: the dashboard's own,
    ``settings.auth_fail_limit`` per client address and minute)."""
    ctx = UiContext(
        settings=settings,
        sessions=sessions,
        reads=read_only_factory(sessions),
        policy=policy,
        signer=SessionSigner(settings.session_secret),
        renderer=Renderer(make_environment(), poll_seconds=browser_poll_seconds),
        hub=LiveHub(sessions, poll_seconds=live_poll_seconds, stream_seconds=stream_seconds),
        limiter=limiter or FailedAuthLimiter(settings.auth_fail_limit),
    )
    app.state.ui = ctx
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for module in (auth, pages, pools, tokens):
        app.include_router(module.router, include_in_schema=False)
    app.add_exception_handler(LoginRequired, _on_login_required)
    app.add_exception_handler(Refused, _on_refused)
    return ctx


async def _on_login_required(request: Request, exc: Exception) -> Response:
    target = login_url(request)
    if request.headers.get("HX-Request") == "true":
        return Response(status_code=204, headers={"HX-Redirect": target, "Vary": "HX-Request"})
    if request.url.path == "/events":
        return Response("sign in first", status_code=401, media_type="text/plain")
    return RedirectResponse(target, status_code=303)


async def _on_refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    ctx: UiContext = request.app.state.ui
    logger.warning(
        "dashboard request refused",
        extra={"event": "ui_refused", "path": request.url.path, "error": exc.detail},
    )
    return ctx.renderer.render(
        request, "error.html", {"status": exc.status, "detail": exc.detail}, status=exc.status
    )
