"""Allocations, history and audit through HTTP, and tokens: who holds what, what happened to
each address, every write with its before and after; tokens shown once, listed without secret."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from lbprovider.db.models import ApiToken
from lbprovider.db.session import transaction
from lbprovider.services.tokens import hash_secret
from tests.api.conftest import Api, create_pool
from tests.api.helpers import allocate, release


def test_allocations_filter_by_service_pool_ip_cidr_and_state(api: Api) -> None:
    create_pool(api.write, ranges=["127.1.0.0/29", "127.1.1.0/29"])
    a = allocate(api.sessions, "shop", "front")
    b = allocate(api.sessions, "shop", "back", ip="127.1.1.3")
    gone = allocate(api.sessions, "blog", "web")
    release(api.sessions, "blog", "web")

    def ips(**params: object) -> list[str]:
        r = api.read.get("/api/v1/allocations", params=params)
        assert r.status_code == 200, r.text
        return [x["ip"] for x in r.json()["results"]]

    assert ips(namespace="shop") == [a, b]
    assert ips(namespace="shop", service="back") == [b]
    assert ips(cidr="127.1.1.0/24", state="active") == [b]
    assert ips(cidr="127.0.0.0/8") == [a, b, gone]
    assert ips(ip="127.1.1.3") == [b]
    assert ips(pool="web", state="active") == [a, b]
    assert ips(state="released") == [gone]
    bad = api.read.get("/api/v1/allocations", params={"cidr": "127.1.1.0/99"})
    assert bad.status_code == 422 and bad.json()["field"] == "query.cidr"


def test_one_allocation_with_its_history(api: Api) -> None:
    create_pool(api.write)
    ip = allocate(api.sessions, "shop", "front")
    release(api.sessions, "shop", "front")
    (row,) = api.read.get("/api/v1/allocations", params={"ip": ip}).json()["results"]
    r = api.read.get(f"/api/v1/allocations/{row['id']}")
    assert r.status_code == 200
    detail = r.json()
    assert detail["state"] == "released" and detail["ports"] == [{"protocol": "TCP", "port": 80}]
    assert [h["action"] for h in detail["history"]] == ["allocated", "released"]
    assert api.read.get("/api/v1/allocations/999999").status_code == 404


def test_history_filters_by_time_service_and_actor(api: Api) -> None:
    create_pool(api.write)
    before = datetime.now(UTC) - timedelta(seconds=1)
    allocate(api.sessions, "shop", "front")
    api.write.post("/api/v1/reservations", json={"pool": "web", "owner": "ci"})

    def actions(**params: object) -> list[str]:
        r = api.read.get("/api/v1/history", params=params)
        assert r.status_code == 200, r.text
        return [h["action"] for h in r.json()["results"]]

    assert actions() == ["reserved", "allocated"], "newest first"
    assert actions(actor="writer") == ["reserved"]
    assert actions(namespace="shop", service="front") == ["allocated"]
    assert actions(since=before.isoformat()) == ["reserved", "allocated"]
    assert actions(until=before.isoformat()) == []
    naive = api.read.get("/api/v1/history", params={"since": "2020-01-01T00:00:00"})
    assert naive.status_code == 422 and naive.json()["field"] == "query.since"


def test_audit_records_every_write_with_before_and_after(api: Api) -> None:
    create_pool(api.write)
    api.write.patch("/api/v1/pools/web", json={"priority": 5}, headers={"If-Match": '"1"'})
    res = api.write.post("/api/v1/reservations", json={"pool": "web", "owner": "ci"}).json()
    api.write.delete(f"/api/v1/reservations/{res['id']}")
    r = api.admin.get("/api/v1/audit", params={"actor": "writer"})
    assert r.status_code == 200
    entries = r.json()["results"]
    assert [e["action"] for e in entries] == [
        "reservation.delete",
        "reservation.create",
        "pool.update",
        "pool.create",
    ]
    update = entries[2]
    assert (update["before"]["priority"], update["after"]["priority"]) == (100, 5)
    by_ip = api.admin.get("/api/v1/audit", params={"ip": res["ip"]}).json()["results"]
    assert {e["action"] for e in by_ip} == {"reservation.create", "reservation.delete"}
    assert api.write.get("/api/v1/audit").status_code == 403, "audit is for admins"


def test_token_secret_is_shown_once_and_only_its_hash_stored(api: Api) -> None:
    r = api.admin.post(
        "/api/v1/tokens",
        json={
            "name": "pipeline",
            "scopes": ["write"],
            "expires_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
        },
    )
    assert r.status_code == 201, r.text
    created = r.json()
    secret = created["secret"]
    assert api.client(secret).get("/api/v1/pools").status_code == 200
    listed = api.admin.get("/api/v1/tokens").json()
    assert "secret" not in str(listed) and secret not in str(listed)
    assert {t["name"] for t in listed["results"]} >= {"pipeline", "admin"}
    shown = api.admin.get(f"/api/v1/tokens/{created['id']}").json()
    assert "secret" not in shown
    with transaction(api.sessions) as session:
        row = session.scalar(select(ApiToken).where(ApiToken.name == "pipeline"))
        assert row is not None and row.secret_hash == hash_secret(secret)
        assert secret not in str(vars(row))


def test_revoked_token_is_refused(api: Api) -> None:
    created = api.admin.post("/api/v1/tokens", json={"name": "old", "scopes": ["read"]}).json()
    client = api.client(created["secret"])
    assert client.get("/api/v1/pools").status_code == 200
    assert api.admin.delete(f"/api/v1/tokens/{created['id']}").status_code == 204
    assert client.get("/api/v1/pools").status_code == 401
    assert api.admin.get(f"/api/v1/tokens/{created['id']}").json()["revoked"] is True


def test_token_create_refuses_bad_input(api: Api) -> None:
    r = api.admin.post("/api/v1/tokens", json={"name": "x", "scopes": ["root"]})
    assert r.status_code == 422 and r.json()["field"].startswith("body.scopes")
    r = api.admin.post("/api/v1/tokens", json={"name": "agent-x", "scopes": ["agent"]})
    assert r.status_code == 422 and r.json()["field"] == "host"
    r = api.admin.post("/api/v1/tokens", json={"name": "admin", "scopes": ["read"]})
    assert r.status_code == 422 and r.json()["field"] == "name"


def test_fleet_hosts_are_listed(api: Api) -> None:
    from lbprovider.db.models import FleetHost

    with transaction(api.sessions) as session:
        session.add(FleetHost(name="edge-1", address="127.0.0.10"))
        session.add(FleetHost(name="edge-2", address="127.0.0.11", enabled=False))
    r = api.read.get("/api/v1/fleet/hosts")
    assert r.status_code == 200
    assert [h["name"] for h in r.json()["results"]] == ["edge-1", "edge-2"]
    enabled = api.read.get("/api/v1/fleet/hosts", params={"enabled": "true"}).json()
    assert [h["name"] for h in enabled["results"]] == ["edge-1"]
