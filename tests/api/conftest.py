"""API test fixtures: the real app served by uvicorn on a loopback port, real HTTP clients,
tokens made the way ``lbprovider token create`` makes them (through the service)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.api.app import create_app
from lbprovider.config import Settings
from lbprovider.db.session import transaction
from lbprovider.services.context import Actor
from lbprovider.services.tokens import create_token

AGENT_HOST = "edge-1"


class LiveServer:
    """uvicorn in a thread on 127.0.0.1:<free port>; stopped by ``stop`` (its own handle)."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, ws="none", lifespan="on", log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=timeout)
        self.sock.close()


def serve(app: FastAPI) -> Iterator[LiveServer]:
    server = LiveServer(app).start()
    try:
        yield server
    finally:
        server.stop()


def make_token(sessions: sessionmaker[Session], name: str, scopes: list[str], **kw: Any) -> str:
    with transaction(sessions) as session:
        _, secret = create_token(
            session=session, name=name, scopes=scopes, actor=Actor("shell"), **kw
        )
    return secret


@dataclass
class Api:
    """A running API and a client per scope (plus one with no token)."""

    url: str
    engine: Engine
    sessions: sessionmaker[Session]
    secrets: dict[str, str]
    clients: dict[str, httpx.Client]

    def __getattr__(self, scope: str) -> httpx.Client:
        try:
            return self.clients[scope]
        except KeyError:
            raise AttributeError(scope) from None

    def client(self, secret: str | None = None, **headers: str) -> httpx.Client:
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        c = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self.clients[f"extra-{len(self.clients)}"] = c
        return c


def api_settings(db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "auth_fail_limit": 1000,
        "reservation_sweep_seconds": 3600.0,
        "quarantine_seconds": 0,
    }
    values.update(overrides)
    return Settings(**values)


def start_api(engine: Engine, sessions: sessionmaker[Session], **overrides: Any) -> Iterator[Api]:
    url = engine.url.render_as_string(hide_password=False)
    app = create_app(api_settings(url, **overrides), engine=engine)
    secrets = {
        "read": make_token(sessions, "reader", ["read"]),
        "write": make_token(sessions, "writer", ["write"]),
        "admin": make_token(sessions, "admin", ["admin"]),
        "agent": make_token(sessions, "agent-edge-1", ["agent"], host=AGENT_HOST),
    }
    for server in serve(app):
        clients = {
            scope: httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {s}"}, timeout=30
            )
            for scope, s in secrets.items()
        }
        clients["anonymous"] = httpx.Client(base_url=server.url, timeout=30)
        api = Api(server.url, engine, sessions, secrets, clients)
        try:
            yield api
        finally:
            for c in api.clients.values():
                c.close()


@pytest.fixture
def api(engine: Engine, sessions: sessionmaker[Session]) -> Iterator[Api]:
    """The API on a fresh database (SQLite, then PostgreSQL)."""
    yield from start_api(engine, sessions)


POOL = {"name": "web", "ranges": ["127.1.0.0/29"], "description": "loopback pool"}


def create_pool(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {**POOL, **fields}
    r = client.post("/api/v1/pools", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())
