"""Pools through HTTP: create, list with filters and paging, read with utilisation, If-Match
edits (412/428), refused edits and deletes (409) unless forced, preview, next free addresses."""

from __future__ import annotations

from tests.api.conftest import Api, create_pool

PROBLEM = "application/problem+json"


def test_create_and_read_pool_with_utilisation(api: Api) -> None:
    created = create_pool(api.write, ranges=["127.1.0.0/29", "fd00::/64"])
    assert created["version"] == 1
    r = api.read.get("/api/v1/pools/web")
    assert r.status_code == 200
    assert r.headers["ETag"] == '"1"'
    usage = {u["family"]: u for u in r.json()["utilisation"]}
    assert usage[4] == {
        "family": 4,
        "total": 8,
        "used": 0,
        "reserved": 0,
        "free": 8,
        "percent": 0.0,
    }
    assert usage[6]["total"] == 2**64
