"""The authorisation matrix: every route by every scope and no token → the expected answer.
read reads, write also writes pools and reservations, admin also manages tokens and reads the
audit log, agent reaches only its own host's fleet routes. The matrix must cover every route
the OpenAPI document lists, so a new route cannot ship unguarded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.api.app import create_app
from lbprovider.api.auth import require_host_agent
from lbprovider.db.models import ApiToken
from tests.api.conftest import AGENT_HOST, Api, api_settings, create_pool, make_token, serve

SCOPES = ("read", "write", "admin", "agent")
ORDER = {"read": 1, "write": 2, "admin": 3}
POOL_EDIT: dict[str, Any] = {"description": "matrix"}

# (method, path template, concrete path, least scope, body)
MATRIX: list[tuple[str, str, str, str, Any]] = [
    ("get", "/api/v1/pools", "/api/v1/pools", "read", None),
    ("post", "/api/v1/pools", "/api/v1/pools", "write", None),
    ("get", "/api/v1/pools/{name}", "/api/v1/pools/web", "read", None),
    ("patch", "/api/v1/pools/{name}", "/api/v1/pools/web", "write", POOL_EDIT),
    ("delete", "/api/v1/pools/{name}", "/api/v1/pools/nope", "write", None),
    ("post", "/api/v1/pools/{name}/preview", "/api/v1/pools/web/preview", "read", POOL_EDIT),
    ("get", "/api/v1/pools/{name}/available", "/api/v1/pools/web/available", "read", None),
    ("get", "/api/v1/reservations", "/api/v1/reservations", "read", None),
    ("post", "/api/v1/reservations", "/api/v1/reservations", "write", None),
    ("get", "/api/v1/reservations/{reservation_id}", "/api/v1/reservations/1", "read", None),
    ("delete", "/api/v1/reservations/{reservation_id}", "/api/v1/reservations/999", "write", None),
    ("get", "/api/v1/allocations", "/api/v1/allocations", "read", None),
    ("get", "/api/v1/allocations/{allocation_id}", "/api/v1/allocations/1", "read", None),
    ("get", "/api/v1/history", "/api/v1/history", "read", None),
    ("get", "/api/v1/services", "/api/v1/services", "read", None),
    ("get", "/api/v1/services/{namespace}/{name}", "/api/v1/services/shop/front", "read", None),
    ("get", "/api/v1/externalnames", "/api/v1/externalnames", "read", None),
    ("get", "/api/v1/ingress-routes", "/api/v1/ingress-routes", "read", None),
    ("get", "/api/v1/audit", "/api/v1/audit", "admin", None),
    ("get", "/api/v1/tokens", "/api/v1/tokens", "admin", None),
    ("post", "/api/v1/tokens", "/api/v1/tokens", "admin", None),
    ("get", "/api/v1/tokens/{token_id}", "/api/v1/tokens/1", "admin", None),
    ("delete", "/api/v1/tokens/{token_id}", "/api/v1/tokens/999", "admin", None),
    ("get", "/api/v1/fleet/hosts", "/api/v1/fleet/hosts", "read", None),
]
PUBLIC = {("get", "/healthz"), ("get", "/readyz")}
AGENT_PREFIX = "/api/v1/fleet/hosts/{name}/"
"""Routes the fleet package adds for agents; checked by ``test_agent_routes_by_every_scope``."""


def _documented(api: Api) -> set[tuple[str, str]]:
    doc = httpx.get(api.url + "/api/v1/openapi.json").json()
    return {(m, p) for p, ops in doc["paths"].items() for m in ops}


def _body(method: str, path: str, scope: str, given: Any) -> Any:
    if given is not None:
        return given
    if path == "/api/v1/pools":
        return {"name": f"p-{scope}", "ranges": [f"127.3.{ORDER.get(scope, 9)}.0/30"]}
    if path == "/api/v1/reservations":
        return {"pool": "web", "owner": scope}
    if path == "/api/v1/tokens":
        return {"name": f"t-{scope}", "scopes": ["read"]}
    return None


def _call(client: httpx.Client, method: str, path: str, body: Any) -> httpx.Response:
    headers = {"If-Match": "*"} if method == "patch" else {}
    return client.request(method.upper(), path, json=body, headers=headers)


def test_matrix_covers_every_documented_route(api: Api) -> None:
    documented = {(m, p) for m, p in _documented(api) if not p.startswith(AGENT_PREFIX)}
    assert documented == {(m, t) for m, t, *_ in MATRIX} | PUBLIC


def test_agent_routes_by_every_scope(api: Api) -> None:
    """An agent token opens only its own host's routes; no other scope below admin does."""
    wrong = []
    for method, template in sorted(_documented(api)):
        if not template.startswith(AGENT_PREFIX):
            continue
        own, other = template.replace("{name}", AGENT_HOST), template.replace("{name}", "edge-9")
        cases = [("none", own, "401"), ("read", own, "403"), ("write", own, "403")]
        cases += [("agent", own, "allowed"), ("agent", other, "403")]
        for scope, path, expected in cases:
            client = api.anonymous if scope == "none" else api.clients[scope]
            got = _outcome(client.request(method.upper(), path, json={}))
            if got != expected:
                wrong.append(f"{method.upper()} {path} as {scope}: {got}, expected {expected}")
    assert wrong == []


def _expected(scope: str, least: str) -> str:
    if scope == "none":
        return "401"
    return "allowed" if ORDER.get(scope, 0) >= ORDER[least] else "403"


def _outcome(r: httpx.Response) -> str:
    if r.status_code in (401, 403):
        return str(r.status_code)
    return "allowed" if r.status_code < 500 else f"server error {r.status_code}"


def test_every_route_by_every_scope(api: Api) -> None:
    create_pool(api.write)
    wrong = []
    for method, template, path, least, body in MATRIX:
        for scope in ("none", *SCOPES):
            client = api.anonymous if scope == "none" else api.clients[scope]
            r = _call(client, method, path, _body(method, template, scope, body))
            expected, got = _expected(scope, least), _outcome(r)
            if expected != got:
                wrong.append(f"{method.upper()} {path} as {scope}: {got}, expected {expected}")
            elif got == "403":
                assert r.json()["field"] == "Authorization"
    assert wrong == []


def test_read_cannot_change_anything(api: Api) -> None:
    create_pool(api.write)
    before = api.admin.get("/api/v1/audit").json()["count"]
    for method, template, path, least, body in MATRIX:
        if method != "get" and least != "read":
            r = _call(api.read, method, path, _body(method, template, "read", body))
            assert r.status_code == 403
    assert api.admin.get("/api/v1/audit").json()["count"] == before


@pytest.fixture
def fleet_api(engine: Engine, sessions: sessionmaker[Session]) -> Iterator[dict[str, Any]]:
    """The app plus an agent-style route guarded the way the fleet router guards its own."""
    url = engine.url.render_as_string(hide_password=False)
    app = create_app(api_settings(url), engine=engine)
    extra = APIRouter(prefix="/api/v1/test-guard")

    @extra.get("/hosts/{name}")
    def state(name: str, token: Annotated[ApiToken, Depends(require_host_agent)]) -> dict[str, str]:
        return {"host": name, "token": token.name}

    app.include_router(extra)
    secrets = {
        "agent": make_token(sessions, "agent-1", ["agent"], host=AGENT_HOST),
        "admin": make_token(sessions, "root", ["admin"]),
        "write": make_token(sessions, "w", ["write"]),
    }
    for server in serve(app):
        yield {"url": server.url, "secrets": secrets}


def test_require_host_agent_admits_only_its_own_host(fleet_api: dict[str, Any]) -> None:
    def get(scope: str, host: str) -> int:
        headers = {"Authorization": f"Bearer {fleet_api['secrets'][scope]}"}
        url = f"{fleet_api['url']}/api/v1/test-guard/hosts/{host}"
        return httpx.get(url, headers=headers).status_code

    assert get("agent", AGENT_HOST) == 200
    assert get("agent", "edge-2") == 403
    assert get("admin", "edge-2") == 200
    assert get("write", AGENT_HOST) == 403
