"""API tokens: created with a secret shown once, stored as a hash, scoped, revocable.

Secrets are 256-bit random strings, so a fast hash (SHA-256) is enough: there is nothing to
brute-force that a slow KDF would protect, and verifying costs microseconds per request. The
``prefix`` (public) finds the row; the comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from lbprovider.db.models import ApiToken
from lbprovider.db.types import utcnow
from lbprovider.services.audit import record_audit
from lbprovider.services.context import Actor
from lbprovider.services.errors import Forbidden, InvalidInput, NotFound, Unauthorized

SCOPES = ("read", "write", "admin", "agent")
TOKEN_RE = re.compile(r"^lbp_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,99}$")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_as_dict(t: ApiToken) -> dict[str, object]:
    return {
        "id": t.id,
        "name": t.name,
        "prefix": t.prefix,
        "scopes": list(t.scopes),
        "host": t.host,
        "allowed_cidrs": list(t.allowed_cidrs),
        "expires_at": t.expires_at.isoformat() if t.expires_at else None,
        "revoked": t.revoked_at is not None,
    }


def create_token(
    *,
    session: Session,
    name: str,
    scopes: list[str],
    actor: Actor,
    expires_at: datetime | None = None,
    allowed_cidrs: list[str] | None = None,
    host: str | None = None,
) -> tuple[ApiToken, str]:
    """A new token and its secret (returned once, never stored)."""
    if not NAME_RE.match(name):
        raise InvalidInput(f"token name {name!r} is not valid", field="name")
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise InvalidInput(f"scopes must be among {', '.join(SCOPES)}", field="scopes")
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidInput("expires_at is in the past", field="expires_at")
    if "agent" in scopes and not host:
        raise InvalidInput("an agent token names its fleet host", field="host")
    cidrs = []
    for c in allowed_cidrs or []:
        try:
            cidrs.append(str(ipaddress.ip_network(c, strict=False)))
        except ValueError as e:
            raise InvalidInput(f"{c!r} is not a CIDR", field="allowed_cidrs") from e
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise InvalidInput(f"a token named {name!r} exists", field="name")
    prefix = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
    secret = f"lbp_{prefix}_{secrets.token_urlsafe(32)}"
    token = ApiToken(
        name=name,
        prefix=prefix,
        secret_hash=hash_secret(secret),
        scopes=scopes,
        host=host,
        allowed_cidrs=cidrs,
        expires_at=expires_at,
        created_by=actor.name,
    )
    session.add(token)
    session.flush()
    record_audit(
        session,
        actor=actor,
        action="token.create",
        object_type="token",
        object_id=name,
        after=token_as_dict(token),
    )
    return token, secret


def authenticate(
    *, session: Session, secret: str, client_ip: str | None, now: datetime | None = None
) -> ApiToken:
    """The token behind ``secret``; ``Unauthorized`` when unknown, revoked, expired."""
    m = TOKEN_RE.match(secret)
    if not m:
        raise Unauthorized("malformed or missing bearer token")
    token = session.scalar(select(ApiToken).where(ApiToken.prefix == m.group(1)))
    if token is None or not hmac.compare_digest(token.secret_hash, hash_secret(secret)):
        raise Unauthorized("unknown token")
    now = now or utcnow()
    if token.revoked_at is not None:
        raise Unauthorized("token revoked")
    if token.expires_at is not None and token.expires_at <= now:
        raise Unauthorized("token expired")
    if token.allowed_cidrs and not _ip_allowed(client_ip, token.allowed_cidrs):
        raise Forbidden("this token may not be used from this address")
    return token


def _ip_allowed(client_ip: str | None, cidrs: list[str]) -> bool:
    if not client_ip:
        return False
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(addr in ipaddress.ip_network(c) for c in cidrs)


def get_token(*, session: Session, token_id: int) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"token {token_id} does not exist", field="id")
    return token


SESSION_COLUMNS = (
    ApiToken.id,
    ApiToken.name,
    ApiToken.scopes,
    ApiToken.allowed_cidrs,
    ApiToken.expires_at,
    ApiToken.revoked_at,
)
"""What a dashboard session's per-request check reads of its token (no secret hash, no ORM
object: the check runs on every page, and building an ``ApiToken`` instance with its identity
map entry cost more than the primary-key lookup itself)."""


def session_token(*, session: Session, token_id: int) -> Row[Any] | None:
    """The ``SESSION_COLUMNS`` of token ``token_id`` as a Core row, read now (revocation and
    expiry are seen by the very next request); None when it does not exist."""
    return session.execute(select(*SESSION_COLUMNS).where(ApiToken.id == token_id)).one_or_none()


def revoke_token(*, session: Session, token_id: int, actor: Actor) -> ApiToken:
    token = get_token(session=session, token_id=token_id)
    if token.revoked_at is None:
        before = token_as_dict(token)
        token.revoked_at = utcnow()
        record_audit(
            session,
            actor=actor,
            action="token.revoke",
            object_type="token",
            object_id=token.name,
            before=before,
            after=token_as_dict(token),
        )
    return token
