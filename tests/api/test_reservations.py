"""Reservations through HTTP: a given address or the next free one, never handed to a Service
that is not named, listed, released, and expired by the server with nobody calling."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from tests.api.conftest import Api, create_pool, start_api
from tests.api.helpers import allocate


def test_reserve_next_free_then_a_given_address(api: Api) -> None:
    create_pool(api.write)
    r = api.write.post(
        "/api/v1/reservations", json={"pool": "web", "owner": "ci", "purpose": "dns first"}
    )
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["ip"] == "127.1.0.0" and first["created_by"] == "writer"
    assert r.headers["Location"] == f"/api/v1/reservations/{first['id']}"
    given = api.write.post(
        "/api/v1/reservations", json={"pool": "web", "owner": "ci", "ip": "127.1.0.5"}
    )
    assert given.status_code == 201 and given.json()["ip"] == "127.1.0.5"
    twice = api.write.post(
        "/api/v1/reservations", json={"pool": "web", "owner": "other", "ip": "127.1.0.5"}
    )
    assert twice.status_code == 409 and twice.json()["field"] == "ip"
    outside = api.write.post(
        "/api/v1/reservations", json={"pool": "web", "owner": "ci", "ip": "10.9.9.9"}
    )
    assert outside.status_code == 422 and outside.json()["field"] == "ip"
    listed = api.read.get("/api/v1/reservations", params={"owner": "ci"}).json()
    assert [x["ip"] for x in listed["results"]] == ["127.1.0.0", "127.1.0.5"]


def test_reserved_address_is_not_given_to_a_service(api: Api) -> None:
    create_pool(api.write)
    reserved = api.write.post("/api/v1/reservations", json={"pool": "web", "owner": "ci"}).json()
    assert allocate(api.sessions, "shop", "front") != reserved["ip"]


def test_reservation_for_a_named_service_goes_to_that_service(api: Api) -> None:
    create_pool(api.write)
    body = {
        "pool": "web",
        "owner": "ci",
        "ip": "127.1.0.6",
        "service_namespace": "shop",
        "service_name": "front",
    }
    assert api.write.post("/api/v1/reservations", json=body).status_code == 201
    assert allocate(api.sessions, "shop", "front") == "127.1.0.6"


def test_delete_releases_the_address_and_writes_history(api: Api) -> None:
    create_pool(api.write)
    res = api.write.post("/api/v1/reservations", json={"pool": "web", "owner": "ci"}).json()
    path = f"/api/v1/reservations/{res['id']}"
    assert api.read.get(path).status_code == 200
    assert api.write.delete(path).status_code == 204
    assert api.read.get(path).status_code == 404
    assert api.write.delete(path).status_code == 404
    history = api.read.get("/api/v1/history", params={"ip": res["ip"]}).json()["results"]
    assert [h["action"] for h in history] == ["unreserved", "reserved"]
    (usage,) = api.read.get("/api/v1/pools/web").json()["utilisation"]
    assert usage["reserved"] == 0


def test_expiry_must_be_in_the_future_and_carry_an_offset(api: Api) -> None:
    create_pool(api.write)
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    r = api.write.post(
        "/api/v1/reservations", json={"pool": "web", "owner": "ci", "expires_at": past}
    )
    assert r.status_code == 422 and r.json()["field"] == "expires_at"
    naive = api.write.post(
        "/api/v1/reservations",
        json={"pool": "web", "owner": "ci", "expires_at": "2099-01-01T00:00:00"},
    )
    assert naive.status_code == 422 and naive.json()["field"] == "body.expires_at"


def test_unknown_pool_is_404_naming_the_field(api: Api) -> None:
    r = api.write.post("/api/v1/reservations", json={"pool": "nope", "owner": "ci"})
    assert r.status_code == 404
    assert r.json()["field"] == "name"


def test_a_full_pool_answers_409(api: Api) -> None:
    create_pool(api.write, ranges=["127.1.0.0/31"])
    for _ in range(2):
        assert api.write.post(
            "/api/v1/reservations", json={"pool": "web", "owner": "ci"}
        ).is_success
    r = api.write.post("/api/v1/reservations", json={"pool": "web", "owner": "ci"})
    assert r.status_code == 409 and r.json()["field"] == "pool"


@pytest.fixture
def fast_sweep_api(engine: Engine, sessions: sessionmaker[Session]) -> Iterator[Api]:
    yield from start_api(engine, sessions, reservation_sweep_seconds=0.2)


def test_expired_reservations_are_released_without_anyone_calling(fast_sweep_api: Api) -> None:
    api = fast_sweep_api
    create_pool(api.write)
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    keep = api.write.post("/api/v1/reservations", json={"pool": "web", "owner": "keep"}).json()
    gone = api.write.post(
        "/api/v1/reservations", json={"pool": "web", "owner": "ci", "expires_at": soon}
    ).json()
    deadline = time.monotonic() + 10
    while api.read.get(f"/api/v1/reservations/{gone['id']}").status_code != 404:
        assert time.monotonic() < deadline, "the expired reservation was never released"
        time.sleep(0.1)
    assert api.read.get(f"/api/v1/reservations/{keep['id']}").status_code == 200
    history = api.read.get("/api/v1/history", params={"ip": gone["ip"]}).json()["results"]
    assert history[0]["action"] == "unreserved"
    assert history[0]["reason"] == "expired"
    assert history[0]["actor"] == "reservation-expiry"


def test_family_the_pool_lacks_is_422(api: Api) -> None:
    create_pool(api.write)
    r = api.write.post("/api/v1/reservations", json={"pool": "web", "owner": "ci", "family": 6})
    assert r.status_code == 422 and r.json()["field"] == "family"
