"""``/api/v1/services``, ``/externalnames`` and ``/ingress-routes`` over HTTP: rows written the
way the controller writes them (through the services), read back with filters and paging; a
Service's detail with its condition, nodePorts and ledger; problem+json for an unknown one."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.session import transaction
from lbprovider.services import catalog
from lbprovider.services.externalnames import (
    mark_external_name_removed,
    set_dns_status,
    upsert_external_name,
)
from lbprovider.services.fleet import set_serving
from lbprovider.services.ingress import RouteData, replace_ingress_routes
from lbprovider.services.records import ServiceData, set_condition, upsert_service_record
from tests.api.conftest import Api, create_pool
from tests.api.helpers import allocate, release


def record(
    sessions: sessionmaker[Session],
    namespace: str,
    name: str,
    *,
    node_port: int | None = None,
    reason: str = "",
    message: str = "",
    **fields: Any,
) -> None:
    """What the controller mirrors of a Service, with its IPAllocated condition."""
    port: dict[str, Any] = {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}
    if node_port:
        port["nodePort"] = node_port
    data = ServiceData(namespace=namespace, name=name, uid=f"uid-{name}", ports=[port], **fields)
    with transaction(sessions) as session:
        upsert_service_record(session=session, data=data)
        set_condition(
            session=session, namespace=namespace, name=name, reason=reason, message=message
        )


def services(api: Api, **params: Any) -> list[str]:
    r = api.read.get("/api/v1/services", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["results"]) or "limit" in params
    return [f"{s['namespace']}/{s['name']}" for s in body["results"]]


def seed_services(api: Api) -> dict[str, str]:
    create_pool(api.write, ranges=["127.1.0.0/29", "127.1.1.0/29"])
    create_pool(api.write, name="db", ranges=["127.1.2.0/30"], auto_assign=False)
    record(api.sessions, "shop", "front", node_port=30080, reason="Satisfied")
    record(api.sessions, "shop", "back", reason="Satisfied", external_traffic_policy="Local")
    record(api.sessions, "blog", "stuck", reason="OutOfIPs", message="pool web is full")
    record(api.sessions, "blog", "fresh")
    ips = {
        "shop/front": allocate(api.sessions, "shop", "front"),
        "shop/back": allocate(api.sessions, "shop", "back", ip="127.1.2.1"),
    }
    with transaction(api.sessions) as session:
        set_serving(session=session, states={"shop/front": (True, "2 of 2 hosts serve it")})
    return ips


def test_services_list_filters_and_pages(api: Api) -> None:
    ips = seed_services(api)
    everything = ["blog/fresh", "blog/stuck", "shop/back", "shop/front"]
    assert services(api) == everything, "ordered by namespace, then name"
    assert services(api, namespace="shop") == ["shop/back", "shop/front"]
    assert services(api, name="front") == ["shop/front"]
    assert services(api, namespace="blog", name="front") == []
    assert services(api, pool="db") == ["shop/back"]
    assert services(api, ip=ips["shop/front"]) == ["shop/front"]
    assert services(api, ip="127.1.3.9") == []
    assert services(api, state="pending") == ["blog/fresh", "blog/stuck"]
    assert services(api, state="allocated") == ["shop/back", "shop/front"]
    assert services(api, reason="OutOfIPs") == ["blog/stuck"]
    assert services(api, q="RO") == ["shop/front"]

    body = api.read.get("/api/v1/services", params={"limit": 2, "offset": 1}).json()
    assert body["count"] == 4 and body["limit"] == 2 and body["offset"] == 1
    assert [s["name"] for s in body["results"]] == ["stuck", "back"]
    assert body["next"].endswith("offset=3") and body["previous"].endswith("offset=0")

    rows = {
        f"{s['namespace']}/{s['name']}": s
        for s in api.read.get("/api/v1/services").json()["results"]
    }
    front, back, stuck = rows["shop/front"], rows["shop/back"], rows["blog/stuck"]
    assert front["state"] == "allocated" and front["ips"] == [ips["shop/front"]]
    assert front["pools"] == ["web"] and front["reason"] == "Satisfied"
    assert front["ports"] == [
        {"name": "http", "protocol": "TCP", "port": 80, "node_port": 30080, "target_port": 8080}
    ]
    assert front["serving"] is True and front["serving_message"] == "2 of 2 hosts serve it"
    assert back["pools"] == ["db"] and back["traffic_policy"] == "Local"
    assert back["ports"][0]["target_port"] == 8080 and back["ports"][0]["node_port"] is None
    assert stuck["state"] == "pending" and stuck["ips"] == [] and stuck["pools"] == []
    assert (stuck["reason"], stuck["message"]) == ("OutOfIPs", "pool web is full")
    assert rows["blog/fresh"]["reason"] == "Pending", "no condition written yet"
    assert rows["blog/fresh"]["message"] == catalog.WAITING


def test_services_refuse_bad_filters_as_problems(api: Api) -> None:
    for params, field in [
        ({"state": "stuck"}, "query.state"),
        ({"ip": "not-an-ip"}, "query.ip"),
        ({"namespace": "a\x00b"}, "query.namespace"),
        ({"limit": 0}, "query.limit"),
    ]:
        r = api.read.get("/api/v1/services", params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["field"] == field


def test_service_detail_with_condition_ports_and_history(api: Api) -> None:
    ips = seed_services(api)
    r = api.read.get("/api/v1/services/shop/front")
    assert r.status_code == 200, r.text
    s = r.json()
    assert (s["namespace"], s["name"], s["uid"]) == ("shop", "front", "uid-front")
    assert s["state"] == "allocated" and s["ips"] == [ips["shop/front"]]
    assert (s["reason"], s["message"]) == ("Satisfied", "")
    assert (s["serving"], s["serving_message"]) == (True, "2 of 2 hosts serve it")
    assert s["ports"][0]["node_port"] == 30080
    assert [a["ip"] for a in s["allocations"]] == [ips["shop/front"]]
    assert [(h["action"], h["ip"], h["actor"]) for h in s["history"]] == [
        ("allocated", ips["shop/front"], "controller")
    ]

    stuck = api.read.get("/api/v1/services/blog/stuck").json()
    assert stuck["state"] == "pending" and stuck["reason"] == "OutOfIPs"
    assert stuck["message"] == "pool web is full" and stuck["history"] == []


def test_released_service_keeps_its_history_and_unknown_is_404(api: Api) -> None:
    create_pool(api.write)
    ip = allocate(api.sessions, "shop", "gone")
    release(api.sessions, "shop", "gone")
    r = api.read.get("/api/v1/services/shop/gone")
    assert r.status_code == 200, "no record, but the ledger knows it"
    gone = r.json()
    assert gone["state"] == "pending" and gone["ips"] == [] and gone["allocations"] == []
    assert [(h["action"], h["ip"]) for h in gone["history"]] == [
        ("released", ip),
        ("allocated", ip),
    ], "newest first"
    assert gone["ports"] == [] and gone["updated_at"] is None
    assert services(api) == [], "the list shows Services the controller records"

    missing = api.read.get("/api/v1/services/shop/nothing")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    problem = missing.json()
    assert problem["status"] == 404 and "shop/nothing" in problem["detail"]
    assert problem["instance"] == "/api/v1/services/shop/nothing"
    assert api.anonymous.get("/api/v1/services/shop/gone").status_code == 401


def seed_external_names(sessions: sessionmaker[Session]) -> None:
    port = [{"name": "https", "protocol": "TCP", "port": 443}]
    with transaction(sessions) as s:
        upsert_external_name(
            session=s, namespace="shop", name="payments", external_name="pay.example", ports=port
        )
        upsert_external_name(
            session=s, namespace="shop", name="legacy", external_name="old.example", ports=[]
        )
        upsert_external_name(
            session=s, namespace="blog", name="cdn", external_name="cdn.example", ports=[]
        )
    with transaction(sessions) as s:
        set_dns_status(
            session=s,
            namespace="shop",
            name="payments",
            external_name="pay.example",
            status="resolves",
            addresses=["192.0.2.7"],
        )
        set_dns_status(
            session=s,
            namespace="shop",
            name="legacy",
            external_name="old.example",
            status="nxdomain",
            addresses=[],
        )
        mark_external_name_removed(session=s, namespace="shop", name="legacy")


def test_externalnames_filters(api: Api) -> None:
    seed_external_names(api.sessions)

    def names(**params: Any) -> list[str]:
        r = api.read.get("/api/v1/externalnames", params=params)
        assert r.status_code == 200, r.text
        assert r.json()["count"] == len(r.json()["results"])
        return [f"{m['namespace']}/{m['name']}" for m in r.json()["results"]]

    assert names() == ["blog/cdn", "shop/legacy", "shop/payments"]
    assert names(namespace="shop") == ["shop/legacy", "shop/payments"]
    assert names(dns_status="resolves") == ["shop/payments"]
    assert names(dns_status="nxdomain") == ["shop/legacy"], "a removed row keeps its status"
    assert names(dns_status="unknown") == ["blog/cdn"]
    assert names(removed="true") == ["shop/legacy"]
    assert names(removed="false") == ["blog/cdn", "shop/payments"]
    assert names(dns_status="nxdomain", removed="false") == []
    assert names(q="PAY.EX") == ["shop/payments"]

    pay = api.read.get("/api/v1/externalnames", params={"dns_status": "resolves"}).json()
    (row,) = pay["results"]
    assert row["external_name"] == "pay.example" and row["dns_addresses"] == ["192.0.2.7"]
    assert row["ports"] == [
        {"name": "https", "protocol": "TCP", "port": 443, "node_port": None, "target_port": None}
    ]
    assert row["removed"] is False and row["dns_checked_at"] is not None
    legacy = api.read.get("/api/v1/externalnames", params={"removed": "true"}).json()
    assert legacy["results"][0]["removed_at"] is not None

    bad = api.read.get("/api/v1/externalnames", params={"dns_status": "ok"})
    assert bad.status_code == 422 and bad.json()["field"] == "query.dns_status"
    bad = api.read.get("/api/v1/externalnames", params={"removed": "maybe"})
    assert bad.status_code == 422 and bad.json()["field"] == "query.removed"


def seed_ingress(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as s:
        replace_ingress_routes(
            session=s,
            namespace="shop",
            ingress_name="web",
            routes=[
                RouteData("shop.example", "/", "Prefix", "front", "80", 30080, "shop-tls"),
                RouteData("shop.example", "/api", "Prefix", "api", "http", None, None, "no port"),
            ],
        )
        replace_ingress_routes(
            session=s,
            namespace="blog",
            ingress_name="catchall",
            routes=[RouteData("", "/", "Prefix", "blog", "80", 30090)],
        )


def test_ingress_routes_filters(api: Api) -> None:
    seed_ingress(api.sessions)

    def routes(**params: Any) -> list[str]:
        r = api.read.get("/api/v1/ingress-routes", params=params)
        assert r.status_code == 200, r.text
        assert r.json()["count"] == len(r.json()["results"])
        return [
            f"{x['namespace']}/{x['ingress']} {x['host']}{x['path']}" for x in r.json()["results"]
        ]

    every = ["blog/catchall /", "shop/web shop.example/", "shop/web shop.example/api"]
    assert routes() == every
    assert routes(namespace="shop") == every[1:]
    assert routes(host="shop.example") == every[1:]
    assert routes(host="") == every[:1], "empty host: the any-host rules"
    assert routes(ingress="catchall") == every[:1]
    assert routes(has_error="true") == every[2:]
    assert routes(has_error="false") == every[:2]
    assert routes(q="API") == every[2:], "matches the backend Service"

    body = api.read.get("/api/v1/ingress-routes", params={"has_error": "true"}).json()
    (broken,) = body["results"]
    assert broken["error"] == "no port" and broken["node_port"] is None
    assert broken["backend_port"] == "http" and broken["tls_secret"] is None
    page = api.read.get("/api/v1/ingress-routes", params={"limit": 1, "offset": 2}).json()
    assert page["count"] == 3 and page["next"] is None and page["previous"] is not None
    assert api.read.get("/api/v1/ingress-routes", params={"has_error": "x"}).status_code == 422


def test_catalog_search_functions(sessions: sessionmaker[Session]) -> None:
    """The service functions the routes call, straight on the database."""
    seed_external_names(sessions)
    seed_ingress(sessions)
    with transaction(sessions) as s:
        live = s.scalars(catalog.external_name_search(removed=False, dns_status="unknown")).all()
        assert [m.name for m in live] == ["cdn"]
        routes = s.scalars(catalog.ingress_route_search(namespace="shop", has_error=False)).all()
        assert [r.path for r in routes] == ["/"]
        assert s.scalars(catalog.service_search(name="front", ip="127.9.9.9")).all() == []
