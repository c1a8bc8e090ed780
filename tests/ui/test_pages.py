"""Read pages through real HTTP: full page vs fragment, pagination with filters in the URL,
Services (pending + reason), search, ExternalName mappings, Ingress routes, fleet, history,
audit, tokens, and the vendored htmx."""

from __future__ import annotations

import gc
import re
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio.to_thread
import pytest
from jinja2.filters import do_urlencode
from markupsafe import escape
from sqlalchemy import Engine, Select, event, insert, select
from starlette.requests import Request as StarletteRequest

from lbprovider.db.models import (
    Allocation,
    ApiToken,
    AuditEntry,
    ExternalNameMapping,
    FleetHost,
    IngressRoute,
    ServiceRecord,
)
from lbprovider.db.session import read_only_factory, transaction
from lbprovider.db.types import utcnow
from lbprovider.services import catalog
from lbprovider.services.context import Actor, IPPolicy
from lbprovider.services.reservations import create_reservation
from lbprovider.ui.paging import Page
from lbprovider.ui.sessions import UiUser
from lbprovider.ui.templating import Renderer, make_environment, url_quoted

from .conftest import Ui, add_service, make_pool

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def shop(ui: Ui) -> Ui:
    make_pool(ui.sessions, "web", "127.1.0.0/24")
    add_service(ui.sessions, "shop", "front", pool="web")
    add_service(ui.sessions, "shop", "back", allocate=False)
    return ui


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({}, False),
        ({"HX-Request": "true"}, True),
        ({"HX-Request": "true", "HX-Boosted": "true"}, False),
        ({"HX-Request": "true", "HX-History-Restore-Request": "true"}, False),
    ],
    ids=["plain GET", "htmx request", "boosted navigation", "history restore"],
)
def test_fragment_only_for_htmx_requests_and_always_vary(
    shop: Ui, headers: dict[str, str], fragment: bool
) -> None:
    r = shop.signed_in("read").get("/services", **headers)
    assert r.status_code == 200 and r.headers["Vary"] == "HX-Request"
    assert ("<html" in r.text) is not fragment
    assert 'id="services-table"' in r.text and "shop/front" in r.text
    if fragment:
        assert r.text.lstrip().startswith('<div id="services-table"')


def test_services_show_ip_pool_ports_policy_and_pending_reason(shop: Ui) -> None:
    html = shop.signed_in("read").get("/services").text
    front = html[html.index("shop/front") :]
    assert "127.1.0.0" in front[:2000] and 'href="/pools/web"' in front[:2000]
    assert "80/TCP → 30080" in front[:2000] and "Cluster" in front[:2000]
    back = html[html.index("shop/back") :]
    assert "&lt;pending&gt;" in back[:2000] and "NoPool" in back[:2000]
    assert "no pool serves namespace shop" in back[:2000]


def test_service_detail_has_events_and_the_record(shop: Ui) -> None:
    b = shop.signed_in("read")
    html = b.get("/services/shop/front").text
    assert "allocated 127.1.0.0 from pool" in html and "Events" in html
    assert "uid-shop-front" in html
    assert b.get("/services/shop/nope").status_code == 404


def test_services_paginate_server_side_and_keep_filters_in_links(ui: Ui) -> None:
    make_pool(ui.sessions, "web", "127.1.0.0/24")
    for i in range(60):
        add_service(ui.sessions, "bulk", f"svc-{i:03d}", allocate=False)
    add_service(ui.sessions, "other", "svc-x", allocate=False)
    b = ui.signed_in("read")
    first = b.get("/services?namespace=bulk").text
    assert "1\N{EN DASH}50 of 60 Services" in first
    assert "svc-049" in first and "svc-050" not in first
    nxt = re.search(r'href="([^"]+)" rel="next"', first)
    assert nxt and "namespace=bulk" in nxt.group(1) and "offset=50" in nxt.group(1)
    second = b.get(nxt.group(1).replace("&amp;", "&")).text
    assert "51\N{EN DASH}60 of 60" in second and "svc-059" in second and "svc-x" not in second
    pending = b.get("/services?state=pending&q=svc-x").text
    assert "1\N{EN DASH}1 of 1" in pending and "other/svc-x" in pending


def test_filters_that_match_nothing_say_so(ui: Ui) -> None:
    b = ui.signed_in("read")
    assert "No LoadBalancer Services yet." in b.get("/services").text
    assert "No Service matches these filters." in b.get("/services?namespace=zzz").text


@pytest.mark.parametrize(
    ("query", "expect"),
    [
        ("127.1.0.0", ["shop/front", 'href="/pools/web"', "History of 127.1.0.0"]),
        ("127.001.000.000", ["shop/front"]),  # any spelling of the address is rejected or not
        ("127.1.0.0/30", ["shop/front", "Pools"]),
        ("shop/front", ["shop/front", "127.1.0.0"]),
        ("shop", ["shop/front", "shop/back", "&lt;pending&gt;"]),
        ("web", ['href="/pools/web"']),
    ],
    ids=["an IP", "a zero-padded IP", "a CIDR", "namespace/name", "a namespace", "a pool name"],
)
def test_search_finds(shop: Ui, query: str, expect: list[str]) -> None:
    html = shop.signed_in("read").get(f"/search?q={query}").text
    if query == "127.001.000.000":  # not an address: searched as a name, finds nothing
        assert "Nothing matches" in html
        return
    for text in expect:
        assert text in html, text


def test_search_covers_reservations_externalnames_and_ingress(shop: Ui) -> None:
    with transaction(shop.sessions) as s:
        s.add(
            ExternalNameMapping(
                namespace="shop",
                name="db",
                external_name="db.example.net",
                dns_status="ok",
                dns_addresses=["192.0.2.7"],
            )
        )
        s.add(
            IngressRoute(
                namespace="shop",
                ingress_name="site",
                host="shop.example.com",
                backend_service="front",
                backend_port="80",
                node_port=30080,
            )
        )
    b = shop.signed_in("read")
    assert "db.example.net" in b.get("/search?q=192.0.2.7").text
    by_host = b.get("/search?q=shop.example").text
    assert "shop.example.com" in by_host and "NodePort 30080" in by_host
    assert "Type an IP" in b.get("/search").text


def test_search_fragment_for_htmx(shop: Ui) -> None:
    r = shop.signed_in("read").get("/search?q=127.1.0.0", **{"HX-Request": "true"})
    assert r.text.lstrip().startswith('<div id="results">') and "<html" not in r.text


def test_externalnames_and_ingress_tables_show_status(ui: Ui) -> None:
    with transaction(ui.sessions) as s:
        s.add(
            ExternalNameMapping(
                namespace="a", name="ok", external_name="good.example", dns_status="resolves"
            )
        )
        s.add(
            ExternalNameMapping(
                namespace="a",
                name="bad",
                external_name="nx.invalid",
                dns_status="nxdomain",
                dns_checked_at=utcnow(),
            )
        )
        s.add(
            IngressRoute(
                namespace="a", ingress_name="broken", host="x.example", error="no such Service a/x"
            )
        )
        s.add(IngressRoute(namespace="a", ingress_name="fine", host="y.example", node_port=31000))
    b = ui.signed_in("read")
    names = b.get("/externalnames").text
    assert "nx.invalid" in names and "does not resolve" in names and "resolves" in names
    only_failed = b.get("/externalnames?status=nxdomain").text
    assert "nx.invalid" in only_failed and "good.example" not in only_failed
    only_good = b.get("/externalnames?status=resolves").text
    assert "good.example" in only_good and "nx.invalid" not in only_good
    routes = b.get("/ingress").text
    assert "no such Service a/x" in routes and "NodePort 31000" in routes
    broken = b.get("/ingress?broken=yes").text
    assert "x.example" in broken and "y.example" not in broken


def test_empty_tables_have_empty_states(ui: Ui) -> None:
    b = ui.signed_in("admin")
    for url, text in [
        ("/externalnames", "No ExternalName mappings."),
        ("/ingress", "No Ingress routes."),
        ("/fleet", "No fleet hosts have registered yet."),
        ("/history", "The ledger is empty."),
        ("/pools", "No pools yet."),
        ("/", "Every Service has its address."),
    ]:
        r = b.get(url)
        assert r.status_code == 200 and text in r.text, url


def test_fleet_page_renders_heartbeat_versions_vips_and_haproxy_states(ui: Ui) -> None:
    now = utcnow()
    with transaction(ui.sessions) as s:
        s.add(
            FleetHost(
                name="edge-1",
                address="10.9.0.1",
                last_heartbeat=now - timedelta(seconds=5),
                applied_version="42",
                status={
                    "vips": ["127.1.0.0"],
                    "servers": [
                        {
                            "backend": "shop_front_80",
                            "server": "node-a",
                            "state": "UP",
                            "check_status": "L4OK",
                        },
                        {
                            "backend": "shop_front_80",
                            "server": "node-b",
                            "state": "DOWN",
                            "check_status": "L4CON",
                        },
                        {"backend": "shop_front_80", "server": "node-c", "state": "DRAIN"},
                    ],
                },
            )
        )
        s.add(
            FleetHost(
                name="edge-2", last_heartbeat=now - timedelta(minutes=10), applied_version="41"
            )
        )
    b = ui.signed_in("read")
    html = b.get("/fleet").text
    assert "edge-1" in html and re.search(r">\d+ s ago<", html) and "127.1.0.0" in html
    for word in ("UP", "DOWN", "DRAIN", "L4CON"):
        assert f">{word}<" in html or word in html
    assert "no heartbeat for" in html and "applied version 41, desired 42" in html
    overview = b.get("/").text
    assert "Fleet hosts needing attention" in overview and "edge-2" in overview


def test_history_filters_live_in_the_url(shop: Ui) -> None:
    add_service(shop.sessions, "shop", "side", pool="web")
    b = shop.signed_in("read")
    html = b.get("/history?service=side").text
    assert "shop/side" in html and "shop/front" not in html.split("<tbody>")[1]
    bad = b.get("/history?ip=not-an-ip").text
    assert "is not an IP address" in bad
    by_ip = b.get("/history?ip=127.1.0.0").text
    assert "shop/front" in by_ip.split("<tbody>")[1]


def test_audit_is_admin_only_and_filterable(shop: Ui) -> None:
    b = shop.signed_in("admin")
    html = b.get("/audit?object_type=pool").text
    assert "pool.create" in html and "token.create" not in html
    assert "token.create" in b.get("/audit?object_type=token").text


def test_tokens_create_shows_the_secret_once_and_revoke_is_audited(ui: Ui) -> None:
    b = ui.signed_in("admin")
    r = b.post("/tokens", {"name": "ci", "scope": "write", "days": "30"})
    assert r.status_code == 201
    secret = re.search(r'value="(lbp_[a-z0-9]{12}_[^"]+)"', r.text)
    assert secret and "shown <strong>once</strong>" in r.text
    listing = b.get("/tokens").text
    assert "ci" in listing and secret.group(1) not in listing
    with ui.sessions() as s:
        tid = s.scalar(select(ApiToken.id).where(ApiToken.name == "ci"))
    revoke = b.post(f"/tokens/{tid}/revoke")
    assert revoke.status_code == 303
    assert "Token ci revoked." in b.get(revoke.headers["location"]).text
    with ui.sessions() as s:
        row = s.scalar(select(AuditEntry).where(AuditEntry.action == "token.revoke"))
        assert row is not None and row.actor == "admin" and row.object_id == "ci"
    dup = b.post("/tokens", {"name": "ci", "scope": "read"})
    assert dup.status_code == 422 and "exists" in dup.text


def test_htmx_is_vendored_pinned_and_no_page_loads_a_cdn(shop: Ui) -> None:
    b = shop.signed_in("admin")
    js = b.get("/static/htmx-2.0.11.min.js")
    assert js.status_code == 200 and js.text.startswith("var htmx=function")
    readme = (ROOT / "web" / "static" / "README.md").read_text()
    assert "2.0.11" in readme and "0BSD" in readme
    for url in ("/", "/pools", "/services", "/search?q=shop", "/tokens", "/login"):
        html = b.get(url).text
        sources = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', html)
        assert sources and all(src.startswith("/static/") for src in sources), url


def test_ten_thousand_rows_stay_paged(ui: Ui) -> None:
    now = utcnow()
    with transaction(ui.sessions) as s:
        s.execute(
            insert(AuditEntry),
            [
                {
                    "at": now,
                    "actor": "bulk",
                    "action": "x.y",
                    "object_type": "t",
                    "object_id": str(i),
                }
                for i in range(10_000)
            ],
        )
    html = ui.signed_in("admin").get("/audit?actor=bulk&offset=9950").text
    assert "9951\N{EN DASH}10000 of 10000 entries" in html
    assert html.count("<tr>") <= 51


def _seed_records(ui: Ui, names: list[tuple[str, str]]) -> None:
    now = utcnow()
    with transaction(ui.sessions) as s:
        s.execute(
            insert(ServiceRecord),
            [
                {"namespace": ns, "name": name, "uid": f"u-{ns}-{name}", "created_at": now}
                for ns, name in names
            ],
        )


def _seed_allocations(
    ui: Ui, names: list[tuple[str, str]], net: str, per: int, released: frozenset[int] = frozenset()
) -> None:
    """One allocation per (namespace, name) from ``net`` (``"10.9"``: 10.9.i//per.i%per),
    live unless its index is in ``released``."""
    now = utcnow()
    with transaction(ui.sessions) as s:
        s.execute(
            insert(Allocation),
            [
                {
                    "ip": f"{net}.{i // per}.{i % per}",
                    "ip_key": f"{i:034d}",
                    "pool_name": "p",
                    "family": 4,
                    "service_namespace": ns,
                    "service_name": name,
                    "ports": [],
                    "active": i not in released,
                    "allocated_at": now,
                }
                for i, (ns, name) in enumerate(names)
            ],
        )


def _listed(html: str) -> list[str]:
    return re.findall(r'<a href="/services/([^"/]+/[^"]+)">', html)


@pytest.mark.parametrize(
    ("q", "expect"),
    [
        ("WEB", ["a/web-1", "a/web_2", "a/webx2", "b/my-web"]),  # case ignored
        ("b_2", ["a/web_2"]),  # "_" is a character, not a wildcard
        ("100%", ["a/cpu-100%25"]),  # and "%" too
        ("B-", ["a/web-1"]),  # under three characters: no trigram to look up, same rule
        ("b", ["a/web-1", "a/web_2", "a/webx2", "b/my-web"]),
    ],
    ids=["upper case", "underscore", "percent", "two characters", "one character"],
)
def test_services_name_filter_is_a_case_insensitive_substring(
    ui: Ui, q: str, expect: list[str]
) -> None:
    _seed_records(ui, [("a", "web-1"), ("a", "web_2"), ("a", "webx2"), ("b", "my-web")])
    _seed_records(ui, [("a", "cpu-100%"), ("a", "cpu-1000")])
    html = ui.signed_in("read").get(f"/services?q={quote(q)}").text
    assert _listed(html) == expect


def test_deep_offset_shows_the_rows_at_that_position(ui: Ui) -> None:
    _seed_records(ui, [(f"ns-{i % 7}", f"svc-{i:04d}") for i in range(500)])
    everything = sorted((f"ns-{i % 7}", f"svc-{i:04d}") for i in range(500))
    b = ui.signed_in("read")
    html = b.get("/services?offset=430&limit=25").text
    assert _listed(html) == [f"{ns}/{name}" for ns, name in everything[430:455]]
    assert "431\N{EN DASH}455 of 500 Services" in html
    narrowed = b.get("/services?namespace=ns-3&q=svc-04&offset=3").text
    wanted = [(ns, n) for ns, n in everything if ns == "ns-3" and "svc-04" in n]
    assert _listed(narrowed) == [f"{ns}/{name}" for ns, name in wanted[3:]]


def _page_statements(ui: Ui, urls: list[str]) -> list[tuple[list[str], list[Any]]]:
    """For each URL: the Services listed and the statement objects the server executed."""
    b = ui.signed_in("read")
    out: list[tuple[list[str], list[Any]]] = []
    for url in urls:
        seen: list[Any] = []
        record = seen.append

        def listener(conn: Any, clause: Any, *args: Any, record: Any = record) -> None:
            record(clause)

        event.listen(Engine, "before_execute", listener)
        try:
            html = b.get(url).text
        finally:
            event.remove(Engine, "before_execute", listener)
        out.append((_listed(html), seen))
    return out


def test_services_page_reuses_its_statements_for_one_shape_of_filters(ui: Ui) -> None:
    """The Services page's statements are built once per shape of filters (which filters are
    set), with the values, offset and limit as parameters: two requests with other values run
    the very same statement objects (no rebuild, no new cache key); another shape, another."""
    names = [(f"ns-{i % 3}", f"svc-{i:03d}") for i in range(90)]
    _seed_records(ui, names)
    everything = sorted(names)
    urls = [
        "/services?namespace=ns-1&offset=3",
        "/services?namespace=ns-2&limit=25&offset=1",
        "/services?namespace=ns-2&q=svc-0",
        "/services?q=svc-0",
    ]
    (one, first), (two, second), (three, third), (_, fourth) = _page_statements(ui, urls)
    assert one == [f"{ns}/{n}" for ns, n in everything if ns == "ns-1"][3:]
    assert two == [f"{ns}/{n}" for ns, n in everything if ns == "ns-2"][1:26]
    assert three == [f"{ns}/{n}" for ns, n in everything if ns == "ns-2" and "svc-0" in n]
    pages = [
        [c for c in seen if isinstance(c, Select) and "held_ip" in c.selected_columns]
        for seen in (first, second, third, fourth)
    ]
    assert all(len(p) == 1 for p in pages), pages
    assert pages[0][0] is pages[1][0]
    assert pages[2][0] is not pages[1][0] and pages[3][0] is not pages[2][0]
    if ui.engine.dialect.name == "sqlite":  # the count runs separately, here for offset=…
        first_count, second_count = (
            [c for c in seen if isinstance(c, Select) and str(c).startswith("SELECT count(*)")]
            for seen in (first, second)
        )
        assert len(first_count) == 1 and first_count[0] is second_count[0]


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
def test_postgres_plans_the_services_page_as_index_lookups_even_when_prepared(ui: Ui) -> None:
    """psycopg prepares a statement after five runs on a connection, and PostgreSQL may then
    run its generic plan (parameters unknown). With ``LIMIT $1`` that plan assumed 1,000 keys
    and hash-joined them to a sequential scan of every record; a lateral lookup per key keeps
    the page's index lookups in every plan."""
    names = [(f"ns-{i % 50:02d}", f"svc-{i:05d}") for i in range(3000)]
    _seed_records(ui, names)
    _seed_allocations(ui, names, "10.9", 256)
    lists = catalog.service_list(
        namespace=False, q="", pool=False, state=None, reason=False, postgresql=True
    )
    with ui.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE service_records, allocations")
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        raw = conn.connection.dbapi_connection
        assert raw is not None
        threshold = raw.prepare_threshold  # type: ignore[attr-defined]
        raw.prepare_threshold = 0  # type: ignore[attr-defined]
        try:
            rows = conn.execute(lists.page, {"limit": 50, "offset": 2950}).all()
            assert [r.name for r in rows] == [n for _, n in sorted(names)][2950:]
            name, params = conn.exec_driver_sql(
                "SELECT name, cardinality(parameter_types) FROM pg_prepared_statements"
                " WHERE strpos(statement, 'held' || '_ip') > 0"
            ).one()
            args = "2950" if params == 1 else "50, 2950"  # (LIMIT $1 OFFSET $2)
            plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN EXECUTE {name}({args})"))
        finally:
            raw.prepare_threshold = threshold  # type: ignore[attr-defined]
            conn.exec_driver_sql("DEALLOCATE ALL")
            conn.exec_driver_sql("RESET plan_cache_mode")
    # The keys walk the unique index, each key's record and addresses are index lookups (the
    # count, an InitPlan, may scan the fresh table: its visibility map is not set yet).
    assert "Hash" not in plan, plan
    assert "Index Only Scan using uq_service_records_namespace_name" in plan, plan
    assert "Index Scan using uq_service_records_namespace_name" in plan, plan
    assert re.search(r"Index Scan using \w+ on allocations", plan), plan


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
def test_postgres_runs_the_services_page_on_its_prepared_plan(ui: Ui) -> None:
    """The page statement's LIMIT is in its SQL text (one of a few values), not a parameter:
    with ``LIMIT $1`` the generic plan assumed 1,000 rows and never looked cheaper than a
    custom plan, so PostgreSQL planned every request anew. What the code controls is checked
    here: the statement psycopg prepared carries the literal LIMIT, and only the offset is a
    parameter. Whether PostgreSQL then picks the generic plan is its cost model's choice (it
    did in ``bench/ui.py``; in a test database that other tests have filled and emptied it
    may not), so that is left to the benchmark, and the plan it would use is checked above."""
    names = [(f"ns-{i % 50:02d}", f"svc-{i:05d}") for i in range(3000)]
    _seed_records(ui, names)
    _seed_allocations(ui, names, "10.9", 256)
    with ui.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE service_records, allocations")
        conn.commit()
    with read_only_factory(ui.sessions)() as session:
        for i in range(12):
            lines, total = catalog.service_lines(session, limit=50, offset=(0, 2950)[i % 2])
            assert total == 3000 and len(lines) == 50
        (statement,) = (
            session.connection()
            .exec_driver_sql(
                "SELECT statement FROM pg_prepared_statements"
                " WHERE strpos(statement, 'held' || '_ip') > 0"
            )
            .one()
        )
    assert re.search(r"LIMIT 50\b", statement), statement
    assert not re.search(r"LIMIT \$", statement), statement


@pytest.mark.parametrize("offset", [0, 24, 50, 51, 76, 90, 100, 101, 150])
def test_every_offset_shows_the_rows_at_that_position(ui: Ui, offset: int) -> None:
    """Around the middle of the list (where PostgreSQL's page switches to walking the index
    from the end), at the last partial page and past the end: the rows at that position, in
    order, and the same total; also with a filter."""
    names = [(f"ns-{i % 3}", f"svc-{i:03d}") for i in range(101)]
    _seed_records(ui, names)
    everything = [f"{ns}/{n}" for ns, n in sorted(names)]
    b = ui.signed_in("read")
    html = b.get(f"/services?offset={offset}&limit=25").text
    assert _listed(html) == everything[offset : offset + 25]
    if offset < 101:
        assert "of 101 Services" in html
    ns1 = [k for k in everything if k.startswith("ns-1/")]  # 34
    html = b.get(f"/services?namespace=ns-1&offset={offset // 3}&limit=10").text
    assert _listed(html) == ns1[offset // 3 : offset // 3 + 10]
    if offset // 3 < 34:
        assert "of 34 Services" in html


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
def test_postgres_walks_to_a_late_page_from_the_end_of_the_index(ui: Ui) -> None:
    """A page in the second half of the list walks the (namespace, name) index backwards from
    the end (50 entries for the last page of 3,000) instead of past every earlier entry; the
    forward walk is not executed."""
    names = [(f"ns-{i % 50:02d}", f"svc-{i:05d}") for i in range(3000)]
    _seed_records(ui, names)
    lists = catalog.service_list(
        namespace=False, q="", pool=False, state=None, reason=False, postgresql=True
    )
    with ui.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE service_records, allocations")
        for offset, walked in ((2950, "Backward"), (100, "forward")):
            sql = str(
                lists.page.params(limit=50, offset=offset).compile(
                    conn, compile_kwargs={"literal_binds": True}
                )
            )
            plan = [r[0] for r in conn.exec_driver_sql(f"EXPLAIN (ANALYZE, TIMING OFF) {sql}")]
            scans = [
                line
                for line in plan
                if "Index Only Scan" in line and "uq_service_records_namespace_name" in line
            ]
            ran = [s for s in scans if "never executed" not in s]  # the other walk: not run
            assert len(ran) == 1 and ("Backward" in ran[0]) == (walked == "Backward"), plan
            assert f"actual rows={50 if walked == 'Backward' else 150} " in ran[0], plan


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
def test_postgres_serves_name_contains_from_the_trigram_indexes(ui: Ui) -> None:
    """The Services filter and the search's name match use pg_trgm's indexes, not a scan of
    every name (which is what made the namespace search 18x /healthz at 10,000 Services)."""
    names = [(f"ns-{i % 50:02d}", f"svc-{i:05d}") for i in range(3000)]
    _seed_records(ui, names)
    _seed_allocations(ui, names, "10.9", 256)
    with ui.engine.connect() as conn:
        # What is asserted is that the index *can* serve the predicate as spelled (operator
        # class, ILIKE, partial-index WHERE). Which plan wins for 3,000 fresh rows depends on
        # whether autovacuum has analysed them yet, so the planner is told scans are not an
        # option; a predicate the index cannot serve would still show a Seq Scan.
        conn.exec_driver_sql("ANALYZE service_records, allocations")
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # this transaction only
        for stmt in (
            catalog.service_query(q="svc-0099"),
            select(ServiceRecord.id).where(
                (ServiceRecord.namespace == "ns-07")
                | catalog.name_contains(ServiceRecord.name, "ns-07")
            ),
            select(Allocation.id).where(
                catalog.live(),
                (Allocation.service_namespace == "ns-07")
                | catalog.name_contains(Allocation.service_name, "ns-07"),
            ),
        ):
            compiled = stmt.compile(conn, compile_kwargs={"literal_binds": True})
            plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {compiled}"))
            assert "_name_trgm" in plan, plan


def test_word_search_lists_namespace_and_name_matches_once_in_order(ui: Ui) -> None:
    make_pool(ui.sessions, "p", "127.1.0.0/24")
    for ns, name in (("web", "b"), ("web", "web-x"), ("a", "myweb"), ("z", "web"), ("a", "x")):
        add_service(ui.sessions, ns, name, pool="p")
    html = ui.signed_in("read").get("/search?q=web").text
    services, allocations = html.split('id="sr-alloc"')
    order = ["a/myweb", "web/b", "web/web-x", "z/web"]
    assert re.findall(r'href="/services/([^"]+)">', services) == order
    assert re.findall(r'href="/services/([^"]+)">', allocations) == order


def _statements_of(ui: Ui, url: str) -> tuple[str, list[str]]:
    """The page at ``url`` and the SQL statements the server ran for it."""
    b = ui.signed_in("read")
    b.get(url)  # warm: the session's first statements are not the page's
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        html = b.get(url).text
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    return html, seen


def test_full_pages_carry_their_totals_in_the_rows_on_postgres(ui: Ui) -> None:
    """The Services page and the search's large sections say how many rows there are in all;
    on PostgreSQL the total comes with the rows (a scalar subquery), not from a second round
    trip; SQLite counts separately, only when the page is full. The session check reads the
    token's columns, not its secret hash."""
    names = [(f"ns-{i % 3}", f"svc-{i:04d}") for i in range(130)]
    _seed_records(ui, names)
    _seed_allocations(ui, names, "10.9", 256)  # 10.9.0.0 to 10.9.0.129
    postgresql = ui.engine.dialect.name == "postgresql"
    standalone = re.compile(r"^SELECT count\(\*\)", re.IGNORECASE)
    for url, shown in (
        ("/services", "1\N{EN DASH}50 of 130 Services"),
        ("/services?offset=100", "101\N{EN DASH}130 of 130 Services"),
        ("/search?q=ns-1", "18 more — narrow the search."),  # 43 in ns-1, 25 shown
    ):
        html, seen = _statements_of(ui, url)
        assert shown in html, url
        counts = [s for s in seen if standalone.match(s)]
        if url.startswith("/search"):  # SQLite's counts join the small sections' (one statement)
            probe = [s for s in seen if s.startswith("SELECT (SELECT count(*)")]
            assert counts == [] and len(probe) == (0 if postgresql else 1), seen
        else:
            assert (counts == []) if postgresql else counts, (url, seen)
        token_checks = [s for s in seen if "FROM api_tokens" in s]
        assert len(token_checks) == 1 and "secret_hash" not in token_checks[0], seen
    html, seen = _statements_of(ui, "/services?q=svc-012")  # 10 rows: nothing to count
    assert len(_listed(html)) == 10
    assert not any(standalone.match(s) for s in seen), seen


def _search_statements(seen: list[str]) -> list[str]:
    """The statements of a search page that are the search's (not BEGIN, not the session
    check)."""
    return [s for s in seen if s != "BEGIN" and "FROM api_tokens" not in s]


def test_word_search_counts_its_small_sections_in_one_statement(ui: Ui) -> None:
    """Reservations, ExternalName mappings, Ingress routes and pools are counted in one
    statement (a scalar subquery each), which says their totals; a section's rows are read
    only when it has some. A namespace with nothing but Services costs three statements
    (Services, Allocations, the counts) instead of one per section; on PostgreSQL two, the
    Allocations rows carrying the counts, unless there are no allocations."""
    make_pool(ui.sessions, "sm-pool", "127.6.0.0/24")
    make_pool(ui.sessions, "other", "127.7.0.0/24")
    for name in ("a", "b", "c"):
        add_service(ui.sessions, "sm", name, pool="sm-pool")
    add_service(ui.sessions, "lone", "x", pool="other")
    with transaction(ui.sessions) as s:
        for i in range(2):
            create_reservation(
                session=s,
                pool_name="sm-pool",
                owner="pipeline",
                actor=Actor("t"),
                policy=IPPolicy(),
                ip=f"127.6.0.{200 + i}",
                service_namespace="sm",
                service_name=f"r{i}",
            )
        s.add_all(
            ExternalNameMapping(namespace="sm", name=f"en-{i:02d}", external_name="x.example")
            for i in range(27)
        )
        s.add(
            IngressRoute(
                namespace="web",
                ingress_name="site",
                host="sm.example.com",
                backend_service="front",
                backend_port="80",
                node_port=30080,
            )
        )
    html, seen = _statements_of(ui, "/search?q=sm")
    pills = dict(re.findall(r'id="sr-(\w+)">[^<]*<span class="pill">(\d+)</span>', html))
    assert pills == {"pools": "1", "svc": "3", "alloc": "3", "res": "2", "en": "27", "ing": "1"}
    assert html.count("x.example") == 25 and "127.6.0.201" in html and "sm.example.com" in html
    postgresql = ui.engine.dialect.name == "postgresql"
    ours = _search_statements(seen)
    probes = [s for s in ours if s.startswith("SELECT (SELECT count(*)")]
    assert not any(re.match(r"SELECT count\(\*\)", s) for s in ours), ours
    assert len(probes) == (0 if postgresql else 1), ours
    for table in ("reservations", "external_names", "ingress_routes", "pools"):
        assert len([s for s in ours if s.startswith(f"SELECT {table}.")]) == 1, (table, ours)
    html, seen = _statements_of(ui, "/search?q=lone")
    assert "lone/x" in html and 'id="sr-res"' not in html and 'id="sr-pools"' not in html
    assert len(_search_statements(seen)) == (2 if postgresql else 3), seen
    html, seen = _statements_of(ui, "/search?q=en-0")  # no allocations to carry the counts
    pills = dict(re.findall(r'id="sr-(\w+)">[^<]*<span class="pill">(\d+)</span>', html))
    assert pills == {"en": "10"}, pills
    ours = _search_statements(seen)
    assert len(ours) == 4 and ours[2].startswith("SELECT (SELECT count(*)"), ours


@pytest.mark.parametrize(
    ("q", "expect", "escaped"),
    [
        ("WEB", ["a/web_2", "a/webx2"], False),  # case ignored
        ("b_2", ["a/web_2"], True),  # "_" is a character, not a wildcard
        ("100%", ["a/cpu-100%25"], True),  # and "%" too
    ],
    ids=["upper case", "underscore", "percent"],
)
def test_word_search_escapes_its_pattern_only_when_it_has_to(
    ui: Ui, q: str, expect: list[str], escaped: bool
) -> None:
    """The word is matched as a case-insensitive substring. On SQLite a word without ``/``,
    ``%`` or ``_`` has nothing to escape and its ``LIKE`` goes without ``ESCAPE '/'`` (10-15 %
    of a scan of every name); one with them keeps it, and they match literally."""
    _seed_records(ui, [("a", "web_2"), ("a", "webx2"), ("a", "cpu-100%"), ("a", "cpu-1000")])
    html, seen = _statements_of(ui, f"/search?q={quote(q)}")
    services = html[html.index('id="sr-svc"') :]
    assert re.findall(r'href="/services/([^"]+)">', services) == expect
    if ui.engine.dialect.name == "sqlite":
        likes = [s for s in _search_statements(seen) if " LIKE " in s]
        assert likes and all(("ESCAPE" in s) is escaped for s in likes), likes


def test_ip_search_picks_pools_by_their_ranges_without_reading_exclusions(ui: Ui) -> None:
    """Which pools hold an address is a matter of their ranges (an excluded address is still
    in its pool's range, as before): one statement for the pools, none per pool."""
    make_pool(ui.sessions, "a", "127.1.0.0/29", exclusions=["127.1.0.1"])
    make_pool(ui.sessions, "b", "127.1.0.8/29", exclusions=["127.1.0.9"])
    make_pool(ui.sessions, "c", "127.1.0.16/29")
    html, seen = _statements_of(ui, "/search?q=127.1.0.0/28")
    assert re.findall(r'<a href="/pools/([^"]+)"><strong>', html) == ["a", "b"]
    assert not any("FROM exclusions" in s for s in seen), seen
    assert len([s for s in seen if "FROM pools" in s]) == 1, seen
    html, _ = _statements_of(ui, "/search?q=127.1.0.9")
    assert re.findall(r'<a href="/pools/([^"]+)"><strong>', html) == ["b"]


def test_lists_read_their_services_addresses_in_the_page_statement(ui: Ui) -> None:
    """The Services page and the search's Services sections bring each Service's live
    addresses in the statement that reads the page (a left join): a dual-stack Service shows
    both addresses, IPv4 first; a released address is not shown; a Service without any is
    pending; and no second statement reads the page's allocations."""
    _seed_records(ui, [("ds", "both"), ("ds", "none"), ("ds", "one")])
    rows = [
        ("both", "10.9.0.2", 4, True),
        ("both", "fd00::2", 6, True),
        ("both", "10.9.0.1", 4, False),  # released: history only
        ("one", "10.9.0.3", 4, True),
    ]
    with transaction(ui.sessions) as s:
        s.execute(
            insert(Allocation),
            [
                {
                    "ip": ip,
                    "ip_key": f"{family}{i:033d}",
                    "pool_name": "p",
                    "family": family,
                    "service_namespace": "ds",
                    "service_name": name,
                    "ports": [],
                    "active": active,
                    "allocated_at": utcnow(),
                }
                for i, (name, ip, family, active) in enumerate(rows)
            ],
        )
    for url in ("/services?namespace=ds", "/search?q=ds", "/search?q=10.9.0.2"):
        html, seen = _statements_of(ui, url)
        table = html[html.index('href="/services/ds/both"') :]
        both = table[: table.index("</tr>")]
        assert re.findall(r'href="/search\?q=([^"]+)"', both) == ["10.9.0.2", "fd00%3A%3A2"], url
        if "10.9.0.2" not in url:
            none = table[table.index('href="/services/ds/none"') :]
            assert "&lt;pending&gt;" in none[: none.index("</tr>")], url
            one = table[table.index('href="/services/ds/one"') :]
            assert "10.9.0.3" in one[: one.index("</tr>")], url
        held = [s for s in seen if "FROM allocations" in s and "LEFT OUTER JOIN" not in s]
        joined = [s for s in seen if "LEFT OUTER JOIN allocations" in s]
        if url.startswith("/services"):
            assert held == [] and len(joined) == 1, seen
        else:  # the search's own Allocations section reads allocations, nothing else does
            assert len(joined) == 1 and all(" IN (" not in s for s in held), seen


def test_a_read_page_takes_one_thread_pool_hop(shop: Ui, monkeypatch: pytest.MonkeyPatch) -> None:
    """The session check and the page's reads run in the route's own hop to the thread pool
    (``guard.PageRead``); the session's close follows the answer, in a hop of its own, as
    before. ``/healthz`` takes two before its answer: its route and the validation of its
    response model. The check still runs on every request (a revoked token's next page is the
    sign-in page: ``test_auth.test_revoking_the_token_ends_its_sessions``). Counted with a
    pass-through wrapper of anyio's hand-over (the real one runs)."""
    hops: list[str] = []
    real = anyio.to_thread.run_sync

    async def counting(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(repr(func))
        return await real(func, *args, **kwargs)

    b = shop.signed_in("read")
    b.get("/services")
    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    counts = {}
    for url in ("/healthz", "/services", "/search?q=shop", "/audit", "/", "/history"):
        hops.clear()
        r = b.get(url)
        assert r.status_code == (403 if url == "/audit" else 200), url
        # The close of the session runs after the answer: it may land in either window.
        counts[url] = len([h for h in hops if "Session.close" not in h])
    healthz = counts.pop("/healthz")
    assert set(counts.values()) == {1} and healthz >= 1, (healthz, counts, hops)


def test_a_rendered_page_leaves_its_rows_to_reference_counting() -> None:
    """The templates import their macros without the page's context (``pager`` and
    ``live_attrs`` take ``url_with`` and ``here`` as arguments): a macro module imported
    ``with context`` holds a copy of the page's variables in a reference cycle, so every row
    of every page waited for the cyclic GC, which then had to walk them (~500 objects per
    Services page; most of the dashboard's GC time)."""
    request = StarletteRequest(
        {"type": "http", "method": "GET", "path": "/services", "query_string": b"", "headers": []}
    )
    request.state.ui_user = UiUser(1, "t", ("admin",), "csrf")
    rows = [
        catalog.ServiceLine("ns", f"svc-{i}", ["10.0.0.1"], ["p"], [], "", "", "Satisfied", "")
        for i in range(50)
    ]
    filters = dict.fromkeys(("namespace", "q", "pool", "state", "reason"))
    page = {"rows": rows, "page": Page(rows, 500, 50, 0), "filters": filters}
    page |= {"states": (), "reasons": ()}
    renderer = Renderer(make_environment(), poll_seconds=10)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        html = renderer.render(request, "services.html", page).body.decode()
        del page, rows
        gc.collect()
        kept = [o for o in gc.garbage if isinstance(o, (catalog.ServiceLine, Page))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert 'rel="next"' in html and 'hx-get="/services"' in html and "ns/svc-49" in html
    assert kept == []


@pytest.mark.parametrize(
    "text",
    ["svc-00001", "10.20.0.1", "fd00::2", "a b", "ns/name", "100%", "ü", "", "x&y", "~_.-"],
)
def test_the_urlencode_filter_says_what_jinjas_says(text: str) -> None:
    """The dashboard's ``urlencode`` takes a shortcut for text that needs no quoting; its
    output is Jinja's, character for character."""
    assert url_quoted(text) == do_urlencode(text)
    env = make_environment()
    assert env.from_string("{{ x | urlencode }}").render(x=text) == str(escape(do_urlencode(text)))


def test_word_search_counts_live_allocations_only(ui: Ui) -> None:
    """The search's Allocations section counts the live allocations whose namespace is the
    word or whose name contains it (SQLite tests the names in the index first, then reads only
    the matches' rows): released ones are history and are not counted."""
    names = [("cnt", f"svc-{i:03d}") for i in range(30)] + [("other", "cnt-x")]
    _seed_records(ui, names)
    _seed_allocations(ui, names, "10.8", 200, released=frozenset(range(0, 30, 4)))  # 8 of the 30
    html = ui.signed_in("read").get("/search?q=cnt").text
    section = html[html.index('id="sr-alloc"') :]
    assert re.search(r'Allocations <span class="pill">23</span>', section), section[:300]
    services = html[html.index('id="sr-svc"') :]
    assert re.search(r'Services <span class="pill">31</span>', services), services[:300]
