"""Who may see and do what on the dashboard: session check, scope check, and the cross-site
request forgery defences every unsafe request passes.

Every request re-reads its session's token (revoked, expired, or used from an address outside
its ``allowed_cidrs``: refused at once) in the request's own read-only transaction, the one the
page then reads from, so the check costs one primary-key lookup and no extra connection.

An unsafe request (POST) is refused when the browser says it is cross-site
(``Sec-Fetch-Site``), when its ``Origin`` names another host, or when it lacks the session's
CSRF token (``X-CSRF-Token`` header from htmx, or the ``csrf_token`` form field). These checks
run before any form is parsed into a use case. Scope checks here mirror the API's: hiding a
button is a courtesy, refusing the request is the rule.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request
from sqlalchemy import Row
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from lbprovider.config import Settings
from lbprovider.db.models import ApiToken
from lbprovider.db.session import transaction
from lbprovider.db.types import utcnow
from lbprovider.services.context import Actor, IPPolicy
from lbprovider.services.ratelimit import FailedAuthLimiter
from lbprovider.services.tokens import session_token
from lbprovider.ui.live import LiveHub
from lbprovider.ui.sessions import COOKIE, LOGIN_CSRF_COOKIE, SessionSigner, UiUser
from lbprovider.ui.templating import Renderer

logger = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAME_SITE_FETCH = frozenset({"same-origin", "none"})
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"


@dataclass
class UiContext:
    """What the dashboard of one app holds (never module-global)."""

    settings: Settings
    sessions: sessionmaker[Session]
    reads: sessionmaker[Session]
    """Read-only sessions on the same engine (``db.session.read_only_factory``)."""
    policy: IPPolicy
    signer: SessionSigner
    renderer: Renderer
    hub: LiveHub
    limiter: FailedAuthLimiter
    """Failed sign-ins per client address (``include_ui``'s ``limiter``, else the dashboard's
    own)."""

    def write(self) -> AbstractContextManager[Session]:
        """One transaction for a dashboard write: commits at the end of the ``with`` block,
        rolls back on any error (a ``DomainError`` is then shown inline)."""
        return transaction(self.sessions)


class LoginRequired(Exception):
    """No valid session: send the browser to the sign-in page."""


class Refused(Exception):
    """Signed in, but this request is not allowed (scope, cross-site, CSRF)."""

    def __init__(self, detail: str, status: int = 403) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


async def ui_context(request: Request) -> UiContext:
    # async: no I/O here, so no trip through the thread pool.
    ctx: UiContext = request.app.state.ui
    return ctx


UiDep = Annotated[UiContext, Depends(ui_context)]


async def read_session(ctx: UiDep) -> AsyncIterator[Session]:
    """The request's read-only session (no write lock, no commit), shared by the session check
    and the page. Opening one does no I/O (the first query begins the transaction), so only the
    close, after the answer is sent, goes through the thread pool."""
    session = ctx.reads()
    try:
        yield session
    finally:
        await run_in_threadpool(session.close)


ReadDB = Annotated[Session, Depends(read_session)]


def signed_in(request: Request, ctx: UiContext, session: Session) -> UiUser:
    """The signed-in user of ``request``, read in ``session``; ``LoginRequired`` when the
    cookie is missing, forged, too old, or its token was revoked or expired since; ``Refused``
    when the token may not be used from this client's address (``allowed_cidrs``, checked on
    every request, not only at sign-in). Sets ``request.state.ui_user`` for the renderer."""
    data = ctx.signer.verify(request.cookies.get(COOKIE))
    if data is None:
        raise LoginRequired()
    token = session_token(session=session, token_id=data.token_id)
    if token is None:
        raise LoginRequired()
    if token.revoked_at is not None or (token.expires_at and token.expires_at <= utcnow()):
        raise LoginRequired()
    user = UiUser.of(token, data.csrf)
    if not user.can("read"):
        raise LoginRequired()
    client = request.client.host if request.client else None
    if not address_allowed(token, client):
        logger.warning(
            "dashboard request from outside the token's networks",
            extra={"event": "ui_cidr_refused", "client": client, "token": token.name},
        )
        raise Refused("this token may not be used from this address")
    request.state.ui_user = user
    return user


def current_user(request: Request, ctx: UiDep, session: ReadDB) -> UiUser:
    """``signed_in`` as a dependency (its own thread-pool hop), for the routes that write or
    stream; the read-only pages use ``PageRead`` instead."""
    user = signed_in(request, ctx, session)
    if request.method not in SAFE_METHODS:
        # A write follows in its own transaction; end this read so that whatever the route
        # reads afterwards (the page it renders) sees that write.
        session.rollback()
    return user


@dataclass(frozen=True)
class PageRead:
    """A read-only page's session check and reads in the route's own thread-pool hop:

        with read() as session:   # or read("admin")
            ...query and render (the renderer finds the user in request.state)...

    runs the session check (``signed_in``, so revocation, expiry and ``allowed_cidrs`` still
    take effect on the very next request) and the scope check in the request's read-only
    session (``ReadDB``: opened without I/O, closed after the answer is sent, as before). With
    the ``UserDep`` dependency the check took a hop of its own between the event loop and the
    thread pool before the page's; now the page's hop is the only one before the answer."""

    request: Request
    ctx: UiContext
    session: Session

    @contextmanager
    def __call__(self, scope: str = "read") -> Iterator[Session]:
        need(signed_in(self.request, self.ctx, self.session), scope)
        yield self.session


async def page_read(request: Request, ctx: UiDep, session: ReadDB) -> PageRead:
    # async: nothing is read here (the route's block does it), so no thread-pool hop.
    return PageRead(request, ctx, session)


ReadPage = Annotated[PageRead, Depends(page_read)]


def address_allowed(token: ApiToken | Row[Any], client: str | None) -> bool:
    """Whether ``client`` may use ``token``: any address when it names no networks (the rule
    ``services.tokens.authenticate`` applies at sign-in)."""
    if not token.allowed_cidrs:
        return True
    try:
        address = ipaddress.ip_address(client or "")
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(cidr) for cidr in token.allowed_cidrs)


UserDep = Annotated[UiUser, Depends(current_user)]


def require(scope: str) -> Any:
    def dependency(user: UserDep) -> UiUser:
        if not user.can(scope):
            raise Refused(f"your token {user.name!r} lacks the {scope!r} scope")
        return user

    dependency.__name__ = f"ui_require_{scope}"
    return Depends(dependency)


def need(user: UiUser, scope: str) -> None:
    """Refuse the request unless the user's token grants ``scope``."""
    if not user.can(scope):
        raise Refused(f"your token {user.name!r} lacks the {scope!r} scope")


WRITE = require("write")
ADMIN = require("admin")


def check_same_origin(request: Request) -> None:
    """Refuse a request the browser marks as coming from another site or origin."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in SAME_SITE_FETCH:
        raise Refused(f"cross-site request refused (Sec-Fetch-Site: {fetch_site})")
    origin = request.headers.get("Origin")
    if origin is not None:
        host = request.headers.get("Host", "")
        if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
            raise Refused("cross-origin request refused (Origin does not match this site)")


async def submitted_csrf(request: Request) -> str:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    content_type = request.headers.get("Content-Type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        return value if isinstance(value, str) else ""
    return ""


async def protect(request: Request, user: UserDep) -> UiUser:
    """For every dashboard write: same origin, and the session's CSRF token."""
    check_same_origin(request)
    given = await submitted_csrf(request)
    if not given or not hmac.compare_digest(given, user.csrf):
        raise Refused("missing or wrong CSRF token; reload the page and try again")
    return user


ProtectedUser = Annotated[UiUser, Depends(protect)]


async def protect_login(request: Request) -> None:
    """Sign-in has no session yet: same origin, and the double-submitted login CSRF cookie."""
    check_same_origin(request)
    given = await submitted_csrf(request)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not given or not hmac.compare_digest(given, expected):
        raise Refused("the sign-in form expired; reload the page and try again")


def actor_of(request: Request, user: UiUser) -> Actor:
    """The audit identity of a dashboard write: the token's name, under the request id."""
    request_id = getattr(request.state, "request_id", None)
    return Actor(user.name, request_id) if request_id else Actor(user.name)


def login_url(request: Request) -> str:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.headers.get("HX-Request") == "true":
        target = request.headers.get("HX-Current-URL", target)
        parts = urlsplit(target)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
    return "/login" + ("" if target in ("/", "/login") else f"?next={quote(target, safe='')}")
