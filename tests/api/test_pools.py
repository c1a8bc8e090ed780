"""Pools through HTTP: create, list with filters and paging, read with utilisation, If-Match
edits (412/428), edits and deletes refused with 409 while allocations live unless forced,
preview, next free addresses."""

from __future__ import annotations

from tests.api.conftest import Api, create_pool
from tests.api.helpers import allocate

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
    assert usage[6]["total"] == 2**64, "an IPv6 /64 is counted, not listed"


def test_utilisation_counts_allocations_and_reservations(api: Api) -> None:
    create_pool(api.write)
    allocate(api.sessions, "shop", "front")
    r = api.write.post("/api/v1/reservations", json={"pool": "web", "owner": "ci"})
    assert r.status_code == 201, r.text
    (usage,) = api.read.get("/api/v1/pools/web").json()["utilisation"]
    assert (usage["total"], usage["used"], usage["reserved"], usage["free"]) == (8, 1, 1, 6)
    assert usage["percent"] == 25.0


def test_list_filters_search_and_pages_in_stable_order(api: Api) -> None:
    for name, ranges, disabled in (
        ("c-pool", ["127.1.2.0/30"], False),
        ("a-pool", ["127.1.0.0/30"], True),
        ("b-pool", ["fd00:1::/120"], False),
    ):
        create_pool(api.write, name=name, ranges=ranges, disabled=disabled, description=name)
    first = api.read.get("/api/v1/pools", params={"limit": 2}).json()
    assert first["count"] == 3
    assert [p["name"] for p in first["results"]] == ["a-pool", "b-pool"]
    assert first["previous"] is None
    second = api.read.get(first["next"]).json()
    assert [p["name"] for p in second["results"]] == ["c-pool"]
    assert second["next"] is None and second["previous"] is not None

    def names(**params: object) -> list[str]:
        r = api.read.get("/api/v1/pools", params=params)
        assert r.status_code == 200, r.text
        return [p["name"] for p in r.json()["results"]]

    assert names(family=6) == ["b-pool"]
    assert names(family=4) == ["a-pool", "c-pool"]
    assert names(disabled="true") == ["a-pool"]
    assert names(name="c-pool") == ["c-pool"]
    assert names(q="B-PO") == ["b-pool"]


def test_create_refuses_bad_input_naming_the_field(api: Api) -> None:
    r = api.write.post("/api/v1/pools", json={"name": "Bad_Name", "ranges": ["127.1.0.0/30"]})
    assert r.status_code == 422
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["field"] == "body.name"
    r = api.write.post("/api/v1/pools", json={"name": "ok", "ranges": ["not-an-ip"]})
    assert r.status_code == 422
    assert r.json()["field"] == "ranges"
    create_pool(api.write)
    r = api.write.post("/api/v1/pools", json={"name": "other", "ranges": ["127.1.0.4/30"]})
    assert r.status_code == 422, "overlapping ranges are refused"
    r = api.write.post("/api/v1/pools", json={**_pool_body(), "colour": "red"})
    assert r.status_code == 422 and r.json()["field"] == "body.colour"


def _pool_body() -> dict[str, object]:
    return {"name": "fresh", "ranges": ["127.1.9.0/30"]}


def test_patch_needs_if_match_and_refuses_a_stale_version(api: Api) -> None:
    create_pool(api.write)
    r = api.write.patch("/api/v1/pools/web", json={"description": "x"})
    assert r.status_code == 428
    assert r.json()["field"] == "If-Match"
    ok = api.write.patch(
        "/api/v1/pools/web", json={"description": "edited"}, headers={"If-Match": '"1"'}
    )
    assert ok.status_code == 200, ok.text
    assert ok.headers["ETag"] == '"2"'
    assert ok.json()["description"] == "edited"
    assert ok.json()["ranges"] == ["127.1.0.0/29"], "absent fields keep their value"
    stale = api.write.patch(
        "/api/v1/pools/web", json={"description": "lost update"}, headers={"If-Match": '"1"'}
    )
    assert stale.status_code == 412
    assert stale.headers["content-type"] == PROBLEM
    assert stale.headers["ETag"] == '"2"'
    assert stale.json()["current_version"] == 2
    assert api.read.get("/api/v1/pools/web").json()["description"] == "edited"


def test_edit_that_moves_live_allocations_is_refused_with_the_preview(api: Api) -> None:
    create_pool(api.write, ranges=["127.1.0.0/29", "127.1.1.0/29"])
    ip = allocate(api.sessions, "shop", "front")
    assert ip.startswith("127.1.0.")
    shrink = {"ranges": ["127.1.1.0/29"]}
    preview = api.read.post("/api/v1/pools/web/preview", json=shrink)
    assert preview.status_code == 200
    assert preview.json()["would_move"] == 1
    assert preview.json()["displaced"][0]["ip"] == ip
    r = api.write.patch("/api/v1/pools/web", json=shrink, headers={"If-Match": '"1"'})
    assert r.status_code == 409
    body = r.json()
    assert body["type"].endswith("/edit-would-move-allocations")
    assert body["displaced"] == [
        {"ip": ip, "namespace": "shop", "name": "front", "why": body["displaced"][0]["why"]}
    ]
    forced = api.write.patch(
        "/api/v1/pools/web", json=shrink, params={"force": "true"}, headers={"If-Match": '"1"'}
    )
    assert forced.status_code == 200, forced.text
    allocs = api.read.get("/api/v1/allocations", params={"state": "active"}).json()["results"]
    assert [a["ip"].startswith("127.1.1.") for a in allocs] == [True]


def test_delete_is_refused_while_allocations_live_unless_forced(api: Api) -> None:
    create_pool(api.write)
    allocate(api.sessions, "shop", "front")
    r = api.write.delete("/api/v1/pools/web")
    assert r.status_code == 409
    assert r.json()["type"].endswith("/pool-in-use")
    assert api.read.get("/api/v1/pools/web").status_code == 200
    assert api.write.delete("/api/v1/pools/web", params={"force": "true"}).status_code == 204
    gone = api.read.get("/api/v1/pools/web")
    assert gone.status_code == 404
    assert gone.json()["field"] == "name"
    released = api.read.get("/api/v1/history", params={"action": "released"}).json()
    assert released["count"] == 1


def test_available_lists_next_free_addresses_without_taking_them(api: Api) -> None:
    create_pool(api.write)
    taken = allocate(api.sessions, "shop", "front")
    r = api.read.get("/api/v1/pools/web/available", params={"limit": 3})
    assert r.status_code == 200
    addresses = r.json()["addresses"]
    assert len(addresses) == 3 and taken not in addresses
    again = api.read.get("/api/v1/pools/web/available", params={"limit": 3}).json()
    assert again["addresses"] == addresses, "asking allocates nothing"
    (usage,) = api.read.get("/api/v1/pools/web").json()["utilisation"]
    assert usage["used"] == 1
