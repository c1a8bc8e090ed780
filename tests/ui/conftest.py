"""Dashboard test fixtures: the real app (API + dashboard) served by uvicorn on a loopback port,
tokens made through the service, and signed-in HTTP clients that behave like a browser form
(cookie jar, CSRF token read from the page)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.api.app import create_app
from lbprovider.config import Settings
from lbprovider.db.session import transaction
from lbprovider.ipam.allocator import Request, ServiceRef
from lbprovider.services.allocations import allocate_service
from lbprovider.services.context import CONTROLLER, Actor, IPPolicy
from lbprovider.services.pools import PoolFields, create_pool
from lbprovider.services.records import ServiceData, set_condition, upsert_service_record
from lbprovider.services.tokens import create_token
from lbprovider.ui.guard import UiContext
from tests.api.conftest import LiveServer

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


class Server(LiveServer):
    """The API test server (uvicorn in a thread, stopped by its own handle), with the
    dashboard's live-update hub told about uvicorn's exit flag (no signal handlers in a thread)."""

    def __init__(self, app: FastAPI) -> None:
        super().__init__(app)
        self.app = app
        self.ui.hub.add_exit_probe(lambda: bool(self.server.should_exit))

    @property
    def ui(self) -> UiContext:
        ctx: UiContext = self.app.state.ui
        return ctx

    def start(self) -> Server:
        super().start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        super().stop(timeout)


def ui_settings(db_url: str) -> Settings:
    return Settings(
        database_url=db_url,
        auth_fail_limit=1000,
        reservation_sweep_seconds=3600.0,
        quarantine_seconds=60,
        session_secret="test-session-secret",
    )


def make_token(sessions: sessionmaker[Session], name: str, scopes: list[str]) -> str:
    with transaction(sessions) as session:
        _, secret = create_token(session=session, name=name, scopes=scopes, actor=Actor("shell"))
    return secret


def make_pool(sessions: sessionmaker[Session], name: str, *ranges: str, **kw: Any) -> None:
    with transaction(sessions) as session:
        create_pool(
            session=session, data=PoolFields(name=name, ranges=list(ranges), **kw), actor=Actor("t")
        )


def add_service(
    sessions: sessionmaker[Session],
    namespace: str,
    name: str,
    *,
    port: int = 80,
    pool: str | None = None,
    allocate: bool = True,
) -> str | None:
    """What the controller does for a new LoadBalancer Service: record it, then allocate (or
    record why it cannot). Returns the address, None when pending."""
    with transaction(sessions) as session:
        upsert_service_record(
            session=session,
            data=ServiceData(
                namespace=namespace,
                name=name,
                uid=f"uid-{namespace}-{name}",
                ports=[{"port": port, "protocol": "TCP", "nodePort": 30000 + port % 1000}],
                options={"pool": pool} if pool else {},
            ),
        )
        if not allocate:
            set_condition(
                session=session,
                namespace=namespace,
                name=name,
                reason="NoPool",
                message="no pool serves namespace " + namespace,
            )
            return None
        outcome = allocate_service(
            session=session,
            request=Request(
                service=ServiceRef(namespace, name, f"uid-{namespace}-{name}"),
                ports=frozenset({("TCP", port)}),
                requested_pool=pool,
            ),
            actor=CONTROLLER,
            policy=IPPolicy(),
        )
        reason = outcome.reason.value if hasattr(outcome.reason, "value") else str(outcome.reason)
        set_condition(
            session=session,
            namespace=namespace,
            name=name,
            reason=reason,
            message=outcome.decision.message,
        )
        return outcome.ips[0] if outcome.ips else None


@dataclass
class Ui:
    """A running app and what a test needs to drive it."""

    server: Server
    engine: Engine
    sessions: sessionmaker[Session]
    secrets: dict[str, str]
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, **headers: str) -> httpx.Client:
        c = httpx.Client(base_url=self.url, headers=headers, timeout=30, follow_redirects=False)
        self.clients.append(c)
        return c

    def signed_in(self, scope: str = "admin") -> Browserish:
        c = self.client()
        page = c.get("/login")
        csrf = CSRF_RE.search(page.text)
        assert csrf, page.text
        r = c.post(
            "/login",
            data={"token": self.secrets[scope], "csrf_token": csrf.group(1), "next": "/"},
        )
        assert r.status_code == 303, r.text
        home = c.get("/search")
        assert home.status_code == 200
        token = CSRF_RE.search(home.text)
        assert token
        return Browserish(c, token.group(1))


@dataclass
class Browserish:
    """A signed-in client and its session's CSRF token."""

    http: httpx.Client
    csrf: str

    def get(self, url: str, **headers: str) -> httpx.Response:
        return self.http.get(url, headers=headers)

    def post(self, url: str, data: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
        body = {"csrf_token": self.csrf, **(data or {})}
        return self.http.post(url, data=body, headers=headers)


def start_ui(
    engine: Engine, sessions: sessionmaker[Session], *, settings: Settings | None = None
) -> Iterator[Ui]:
    url = engine.url.render_as_string(hide_password=False)
    app = create_app(settings or ui_settings(url), engine=engine)
    app.state.ui.hub.poll_seconds = 0.2
    app.state.ui.renderer.poll_seconds = 1.0
    secrets = {
        "read": make_token(sessions, "reader", ["read"]),
        "write": make_token(sessions, "writer", ["write"]),
        "admin": make_token(sessions, "admin", ["admin"]),
        "agent": make_token(sessions, "agent-1", ["agent"]) if False else "",
    }
    server = Server(app).start()
    ui = Ui(server, engine, sessions, secrets)
    try:
        yield ui
    finally:
        for c in ui.clients:
            c.close()
        server.stop()


@pytest.fixture
def ui(engine: Engine, sessions: sessionmaker[Session]) -> Iterator[Ui]:
    """The app on a fresh database (SQLite, then PostgreSQL)."""
    yield from start_ui(engine, sessions)
