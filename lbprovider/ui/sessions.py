"""Dashboard sign-in state: an API token turned into a signed, short-lived session cookie.

The cookie holds the token's id, a per-session CSRF secret and the issue time, signed with
HMAC-SHA256 under a key derived from ``settings.session_secret`` (stdlib only: no extra
dependency for forty lines). It never holds the token secret. Every request re-reads the token
row, so revoking or expiring a token ends its dashboard sessions at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row

from lbprovider.db.models import ApiToken

logger = logging.getLogger(__name__)

COOKIE = "lbp_session"
LOGIN_CSRF_COOKIE = "lbp_login_csrf"
MAX_AGE_SECONDS = 12 * 3600
GRANTS: dict[str, frozenset[str]] = {
    "admin": frozenset({"admin", "write", "read"}),
    "write": frozenset({"write", "read"}),
    "read": frozenset({"read"}),
}


@dataclass(frozen=True)
class SessionData:
    token_id: int
    csrf: str
    issued_at: int


class SessionSigner:
    """Signs and verifies session cookie values."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"lbprovider-ui-session\x00" + secret.encode()).digest()

    def _mac(self, payload: bytes) -> str:
        digest = hmac.new(self._key, payload, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, token_id: int, *, now: float | None = None) -> tuple[str, SessionData]:
        data = SessionData(token_id, secrets.token_urlsafe(24), int(now or time.time()))
        body = json.dumps({"t": data.token_id, "c": data.csrf, "i": data.issued_at}).encode()
        payload = base64.urlsafe_b64encode(body).rstrip(b"=")
        return f"{payload.decode()}.{self._mac(payload)}", data

    def verify(self, value: str | None, *, now: float | None = None) -> SessionData | None:
        """The session in ``value``; None when absent, tampered with or older than 12 h."""
        if not value or value.count(".") != 1:
            return None
        payload, mac = value.split(".")
        if not hmac.compare_digest(self._mac(payload.encode()), mac):
            return None
        try:
            raw = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            data = SessionData(int(raw["t"]), str(raw["c"]), int(raw["i"]))
        except (ValueError, KeyError, TypeError):
            return None
        if (now or time.time()) - data.issued_at > MAX_AGE_SECONDS:
            return None
        return data


@dataclass(frozen=True)
class UiUser:
    """Who is signed in, and what their token lets them do."""

    token_id: int
    name: str
    scopes: tuple[str, ...]
    csrf: str

    @classmethod
    def of(cls, token: ApiToken | Row[Any], csrf: str) -> UiUser:
        return cls(token.id, token.name, tuple(token.scopes), csrf)

    def can(self, scope: str) -> bool:
        return any(scope in GRANTS.get(s, frozenset()) for s in self.scopes)

    @property
    def can_write(self) -> bool:
        return self.can("write")

    @property
    def is_admin(self) -> bool:
        return self.can("admin")

    @property
    def scope_label(self) -> str:
        for scope in ("admin", "write", "read"):
            if self.can(scope):
                return scope
        return "none"
