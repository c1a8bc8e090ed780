"""Bearer-token authentication and scope checks, reusable by every HTTP router.

Scopes nest: ``admin`` ⊃ ``write`` ⊃ ``read``. ``agent`` stands apart: it opens only the fleet
routes of the token's own host (``require_host_agent``). Repeated failed authentications from
one client address are answered 429 with ``Retry-After`` — before the token is even looked at,
so a guesser learns nothing (``services.ratelimit.FailedAuthLimiter``, shared with the
dashboard's sign-in and re-exported here for the app factory). Secrets are compared in constant
time (``services.tokens``) and never logged: this module logs client addresses and token *names*
only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lbprovider.api.deps import ContextDep, SessionDep
from lbprovider.db.models import ApiToken
from lbprovider.services.context import Actor
from lbprovider.services.errors import Forbidden, TooManyRequests, Unauthorized
from lbprovider.services.ratelimit import WINDOW_SECONDS as WINDOW_SECONDS
from lbprovider.services.ratelimit import FailedAuthLimiter as FailedAuthLimiter
from lbprovider.services.tokens import authenticate

logger = logging.getLogger(__name__)

Scope = Literal["read", "write", "admin", "agent"]
GRANTS: dict[str, frozenset[str]] = {
    "admin": frozenset({"admin", "write", "read"}),
    "write": frozenset({"write", "read"}),
    "read": frozenset({"read"}),
    "agent": frozenset({"agent"}),
}
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="BearerToken",
    description="An API token (`lbp_<prefix>_<secret>`), made with `lbprovider token create`.",
)


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def current_token(
    request: Request,
    session: SessionDep,
    ctx: ContextDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ApiToken:
    """The authenticated token of this request (401/403/429 otherwise)."""
    client = client_address(request)
    wait = ctx.limiter.retry_after(client or "unknown")
    if wait:
        raise TooManyRequests(
            f"too many failed authentications from {client}; retry in {wait}s",
            field="Authorization",
            retry_after=wait,
        )
    if credentials is None:
        raise Unauthorized("a bearer token is required", field="Authorization")
    try:
        token = authenticate(session=session, secret=credentials.credentials, client_ip=client)
    except Unauthorized as e:
        ctx.limiter.failed(client or "unknown")
        logger.warning(
            "authentication failed",
            extra={"event": "auth_failed", "client": client, "error": e.detail},
        )
        raise Unauthorized(e.detail, field="Authorization") from None
    return token


TokenDep = Annotated[ApiToken, Depends(current_token)]


def has_scope(token: ApiToken, scope: Scope) -> bool:
    return any(scope in GRANTS.get(s, frozenset()) for s in token.scopes)


def require_scope(scope: Scope) -> Callable[[ApiToken], ApiToken]:
    """A dependency admitting tokens that grant ``scope`` (403 otherwise)."""

    def dependency(token: TokenDep) -> ApiToken:
        if not has_scope(token, scope):
            raise Forbidden(
                f"token {token.name!r} lacks the {scope!r} scope", field="Authorization"
            )
        return token

    dependency.__name__ = f"require_{scope}"
    return dependency


def require_host_agent(
    token: TokenDep,
    name: Annotated[str, Path(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9._-]+$")],
) -> ApiToken:
    """For ``/fleet/hosts/{name}/...``: an agent token of host ``name``, or an admin token."""
    if has_scope(token, "admin") or ("agent" in token.scopes and token.host == name):
        return token
    raise Forbidden(f"token {token.name!r} may not act for fleet host {name!r}", field="name")


def current_actor(request: Request, token: TokenDep) -> Actor:
    """Who acts, under which request id: carried into every ledger and audit row."""
    request_id = getattr(request.state, "request_id", None)
    return Actor(token.name, request_id) if request_id else Actor(token.name)


ActorDep = Annotated[Actor, Depends(current_actor)]

READ = Depends(require_scope("read"))
WRITE = Depends(require_scope("write"))
ADMIN = Depends(require_scope("admin"))
