"""HTTP conventions every route shares: problem+json for every error (FastAPI's own 404/405/422
included), request ids echoed and stored, Idempotency-Key replays, 429 after failed logins."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from tests.api.conftest import Api, create_pool, start_api

PROBLEM = "application/problem+json"


def test_unknown_route_and_wrong_method_are_problems(api: Api) -> None:
    r = api.read.get("/api/v1/nothing-here")
    assert r.status_code == 404
    assert r.headers["content-type"] == PROBLEM
    assert (
        r.json()["type"].endswith("/not-found") and r.json()["instance"] == "/api/v1/nothing-here"
    )
    r = api.write.put("/api/v1/pools", json={})
    assert r.status_code == 405
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["field"] == "method"
    assert "GET" in r.headers["allow"]


def test_validation_errors_name_every_field(api: Api) -> None:
    r = api.write.post("/api/v1/pools", json={"name": "x", "ranges": [], "priority": "high"})
    assert r.status_code == 422
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    fields = {e["field"] for e in body["errors"]}
    assert {"body.ranges", "body.priority"} <= fields
    assert body["field"] in fields
    r = api.read.get("/api/v1/pools", params={"limit": 0})
    assert r.json()["field"] == "query.limit"
    r = api.write.post(
        "/api/v1/pools", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM


def test_missing_and_bad_tokens_are_401_problems(api: Api) -> None:
    r = api.anonymous.get("/api/v1/pools")
    assert r.status_code == 401
    assert r.headers["content-type"] == PROBLEM
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["field"] == "Authorization"
    fake = "lbp_aaaaaaaaaaaa_" + "x" * 43
    assert api.client(fake).get("/api/v1/pools").status_code == 401
    assert api.client("not-even-a-token").get("/api/v1/pools").status_code == 401


def test_request_id_is_echoed_or_generated_and_stored(api: Api) -> None:
    r = api.write.post(
        "/api/v1/pools",
        json={"name": "web", "ranges": ["127.1.0.0/30"]},
        headers={"X-Request-ID": "pipeline-42.build_7"},
    )
    assert r.status_code == 201
    assert r.headers["X-Request-ID"] == "pipeline-42.build_7"
    r = api.write.post(
        "/api/v1/reservations",
        json={"pool": "web", "owner": "ci"},
        headers={"X-Request-ID": "reserve-1"},
    )
    ip = r.json()["ip"]
    (entry,) = api.read.get("/api/v1/history", params={"ip": ip}).json()["results"]
    assert entry["request_id"] == "reserve-1" and entry["actor"] == "writer"
    audit = api.admin.get("/api/v1/audit", params={"request_id": "pipeline-42.build_7"}).json()
    assert [a["action"] for a in audit["results"]] == ["pool.create"]
    generated = api.read.get("/healthz").headers["X-Request-ID"]
    assert len(generated) == 32
    unsafe = api.read.get("/healthz", headers={"X-Request-ID": "a b\\c" + "x" * 70})
    assert unsafe.headers["X-Request-ID"] != "a b\\c" + "x" * 70
    err = api.read.get("/api/v1/pools/nope", headers={"X-Request-ID": "trace-404"})
    assert err.headers["X-Request-ID"] == "trace-404" and err.json()["request_id"] == "trace-404"


def test_idempotency_key_replays_and_refuses_another_body(api: Api) -> None:
    create_pool(api.write)
    key = {"Idempotency-Key": "4b1c7f0e-reserve"}
    body = {"pool": "web", "owner": "ci"}
    first = api.write.post("/api/v1/reservations", json=body, headers=key)
    assert first.status_code == 201
    again = api.write.post("/api/v1/reservations", json={"owner": "ci", "pool": "web"}, headers=key)
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert api.read.get("/api/v1/reservations").json()["count"] == 1, "no second effect"
    other = api.write.post("/api/v1/reservations", json={**body, "owner": "x"}, headers=key)
    assert other.status_code == 422
    assert other.headers["content-type"] == PROBLEM
    assert other.json()["field"] == "Idempotency-Key"
    elsewhere = api.write.post("/api/v1/pools", json=body, headers=key)
    assert elsewhere.status_code == 422, "a key names one request, not one per path"


def test_idempotency_keys_belong_to_one_token(api: Api) -> None:
    create_pool(api.write)
    key = {"Idempotency-Key": "shared-key"}
    body = {"pool": "web", "owner": "ci"}
    a = api.write.post("/api/v1/reservations", json=body, headers=key).json()
    b = api.admin.post("/api/v1/reservations", json=body, headers=key).json()
    assert a["ip"] != b["ip"]


def test_a_failed_request_is_not_stored_and_may_be_retried(api: Api) -> None:
    key = {"Idempotency-Key": "retry-me"}
    body = {"pool": "web", "owner": "ci"}
    assert api.write.post("/api/v1/reservations", json=body, headers=key).status_code == 404
    create_pool(api.write)
    assert api.write.post("/api/v1/reservations", json=body, headers=key).status_code == 201


@pytest.fixture
def strict_api(engine: Engine, sessions: sessionmaker[Session]) -> Iterator[Api]:
    yield from start_api(engine, sessions, auth_fail_limit=3)


def test_repeated_failed_authentication_is_429_with_retry_after(strict_api: Api) -> None:
    api = strict_api
    wrong = api.client("lbp_aaaaaaaaaaaa_" + "y" * 43)
    for _ in range(3):
        assert wrong.get("/api/v1/pools").status_code == 401
    r = wrong.get("/api/v1/pools")
    assert r.status_code == 429
    assert r.headers["content-type"] == PROBLEM
    assert 1 <= int(r.headers["Retry-After"]) <= 61
    assert api.read.get("/api/v1/pools").status_code == 429, "the guesser's address is blocked"
    assert api.read.get("/healthz").status_code == 200


def test_token_limited_to_client_networks(api: Api) -> None:
    r = api.admin.post(
        "/api/v1/tokens", json={"name": "far", "scopes": ["read"], "allowed_cidrs": ["10.0.0.0/8"]}
    )
    far = api.client(r.json()["secret"])
    denied = far.get("/api/v1/pools")
    assert denied.status_code == 403 and denied.headers["content-type"] == PROBLEM
    r = api.admin.post(
        "/api/v1/tokens",
        json={"name": "near", "scopes": ["read"], "allowed_cidrs": ["127.0.0.0/8"]},
    )
    assert api.client(r.json()["secret"]).get("/api/v1/pools").status_code == 200
