"""Sign in to the dashboard of a running app with a read token, as a browser would."""

from __future__ import annotations

import httpx
from sqlalchemy.orm import Session, sessionmaker

from tests.api.conftest import make_token
from tests.ui.conftest import CSRF_RE


def signed_in(base_url: str, sessions: sessionmaker[Session]) -> httpx.Client:
    """An httpx client holding a dashboard session (the caller closes it)."""
    token = make_token(sessions, "dash-reader", ["read"])
    client = httpx.Client(base_url=base_url, timeout=30, follow_redirects=False)
    page = client.get("/login")
    csrf = CSRF_RE.search(page.text)
    assert csrf, page.text
    r = client.post("/login", data={"token": token, "csrf_token": csrf.group(1), "next": "/"})
    assert r.status_code == 303, r.text
    return client
