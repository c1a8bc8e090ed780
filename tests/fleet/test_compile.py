"""The compiler: a deterministic FleetState whose version moves only with its content, and
every Service value checked before it becomes a route (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.config import Settings
from lbprovider.db.session import make_engine, read_transaction, session_factory, transaction
from lbprovider.fleet import compile as compile_module
from lbprovider.fleet.compile import COMMIT_CHECK_SECONDS, CommitWatch, StateCache, compile_fleet
from lbprovider.fleet.models import FleetState
from lbprovider.services.records import upsert_service_record

from .helpers import add_service, make_pool, remove_service, service_data, set_node

SETTINGS = Settings(database_url="sqlite://")


def state(sessions: sessionmaker[Session], host: str = "edge-1") -> FleetState:
    with transaction(sessions) as s:
        return compile_fleet(s, SETTINGS).state_for(host, enabled=True)


@pytest.fixture
def fleet(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    make_pool(sessions, "127.20.0.1-127.20.0.50")
    set_node(sessions, "node-b", "127.0.0.3")
    set_node(sessions, "node-a", "127.0.0.2")
    return sessions


def test_routes_nodes_and_vips_of_a_service(fleet: sessionmaker[Session]) -> None:
    ips = add_service(fleet, service_data("web", [(80, 30080), (443, 30443)]))
    st = state(fleet)
    assert [(r.address, r.port, r.node_port) for r in st.routes] == [
        (ips[0], 80, 30080),
        (ips[0], 443, 30443),
    ]
    assert [r.service for r in st.routes] == ["shop/web", "shop/web"]
    assert [(n.name, n.address, n.state) for n in st.nodes] == [
        ("node-a", "127.0.0.2", "ready"),
        ("node-b", "127.0.0.3", "ready"),
    ]
    assert st.vips == ips
    assert st.version == st.content_digest() and len(st.version) == 20


def test_version_is_stable_and_moves_only_with_content(fleet: sessionmaker[Session]) -> None:
    add_service(fleet, service_data("web"))
    first = state(fleet)
    # Same content, compiled again (and a no-op rewrite of the record): same version.
    add_service(fleet, service_data("web"))
    assert state(fleet).version == first.version
    add_service(fleet, service_data("web", [(80, 30081)]))
    moved = state(fleet)
    assert moved.version != first.version
    add_service(fleet, service_data("web"))
    assert state(fleet).version == first.version
    assert state(fleet, "edge-2").version != first.version  # the host is part of the content


def test_insertion_order_does_not_change_the_state(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "127.21.0.1-127.21.0.9")
    add_service(sessions, service_data("b", [(81, 30081)]))
    add_service(sessions, service_data("a", [(80, 30080)]))
    set_node(sessions, "n2", "127.0.0.3")
    set_node(sessions, "n1", "127.0.0.2")
    one = state(sessions)
    keys = [(tuple(int(x) for x in r.address.split(".")), r.port) for r in one.routes]
    assert keys == sorted(keys) and len(keys) == 2
    assert [n.name for n in one.nodes] == ["n1", "n2"]
    assert state(sessions).model_dump_json() == one.model_dump_json()


def test_cordoned_node_drains_and_a_leaving_node_is_left_out(fleet: sessionmaker[Session]) -> None:
    add_service(fleet, service_data("web"))
    set_node(fleet, "node-a", "127.0.0.2", draining=True)
    set_node(fleet, "node-b", "127.0.0.3", eligible=False, reason="being deleted")
    set_node(fleet, "node-c", None)  # type: ignore[arg-type]
    assert [(n.name, n.state) for n in state(fleet).nodes] == [("node-a", "draining")]


def test_options_from_annotations_and_spec(fleet: sessionmaker[Session]) -> None:
    options = {
        "proxy_protocol": "v2",
        "balance": "leastconn",
        "maxconn": 5,
        "timeout_client_ms": 30000,
        "timeout_server_ms": None,
        "timeout_connect_ms": 1500,
    }
    add_service(
        fleet,
        service_data(
            "web",
            options=options,
            source_ranges=["10.0.0.0/8", "192.168.1.7/24", "10.0.0.0/8"],
            session_affinity="ClientIP",
        ),
    )
    o = state(fleet).routes[0].options
    assert (o.proxy_protocol, o.balance, o.maxconn) == ("v2", "leastconn", 5)
    assert (o.timeout_client_ms, o.timeout_server_ms, o.timeout_connect_ms) == (30000, None, 1500)
    assert o.source_ranges == ("10.0.0.0/8", "192.168.1.0/24")
    assert o.source_affinity is True


def test_local_policy_routes_carry_the_health_check_node_port(fleet: sessionmaker[Session]) -> None:
    add_service(
        fleet,
        service_data("web", external_traffic_policy="Local", health_check_node_port=31999),
    )
    assert [r.health_check_node_port for r in state(fleet).routes] == [31999]
    with transaction(fleet) as s:
        compiled = compile_fleet(s, SETTINGS)
    assert compiled.problems == {}


def test_udp_and_sctp_ports_are_not_routes_but_tcp_ones_are(fleet: sessionmaker[Session]) -> None:
    data = service_data(
        "dns", [(53, 30053), (54, 30054), (55, 30055)], protocols={53: "UDP", 55: "SCTP"}
    )
    add_service(fleet, data)
    add_service(fleet, service_data("voice", [(5060, 30060)], protocols={5060: "UDP"}))
    with transaction(fleet) as s:
        compiled = compile_fleet(s, SETTINGS)
    assert [(r.service, r.port) for r in compiled.routes] == [("shop/dns", 54)]
    assert "UDP and SCTP are not supported" in compiled.no_routes["shop/voice"]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"options": {"proxy_protocol": "v3"}}, "proxy-protocol"),
        ({"options": {"balance": "static-rr"}}, "balance"),
        ({"options": {"maxconn": -1}}, "maxconn"),
        ({"options": {"timeout_client_ms": 0}}, "timeout-client"),
        ({"source_ranges": ["10.0.0.0/8\nbind :1"]}, "loadBalancerSourceRanges"),
        ({"external_traffic_policy": "Local"}, "healthCheckNodePort"),
        ({"ports": [{"protocol": "TCP", "port": 80}]}, "no nodePort"),
    ],
    ids=[
        "proxy v3",
        "static-rr",
        "negative maxconn",
        "zero timeout",
        "CIDR with newline",
        "Local without hc port",
        "TCP port without nodePort",
    ],
)
def test_bad_values_are_left_out_and_named(
    fleet: sessionmaker[Session], change: dict[str, object], problem: str
) -> None:
    add_service(fleet, service_data("good", [(81, 30081)]))
    add_service(fleet, service_data("bad"))  # allocated while valid, then the record goes bad
    with transaction(fleet) as s:
        data = service_data("bad")
        for key, value in change.items():
            setattr(data, key, value)
        upsert_service_record(session=s, data=data)
        compiled = compile_fleet(s, SETTINGS)
    assert [r.service for r in compiled.routes] == ["shop/good"]
    assert problem in compiled.problems["shop/bad"]


def test_removed_service_leaves_the_state(fleet: sessionmaker[Session]) -> None:
    empty = state(fleet)
    add_service(fleet, service_data("web"))
    assert state(fleet).routes
    remove_service(fleet, "web")
    assert state(fleet).version == empty.version


def test_cache_recompiles_only_when_the_database_changed(fleet: sessionmaker[Session]) -> None:
    cache = StateCache(SETTINGS)
    with transaction(fleet) as s:
        one = cache.compiled(s)
        assert cache.compiled(s) is one
    add_service(fleet, service_data("web"))
    with transaction(fleet) as s:
        two = cache.compiled(s)
        assert two is not one and [r.service for r in two.routes] == ["shop/web"]
        assert cache.state(s, "edge-1") is cache.state(s, "edge-1")
    set_node(fleet, "node-a", "127.0.0.9")
    with transaction(fleet) as s:
        assert cache.state(s, "edge-1").nodes[0].address == "127.0.0.9"
    remove_service(fleet, "web")
    with transaction(fleet) as s:
        assert cache.state(s, "edge-1").routes == ()


def test_on_a_sqlite_file_an_unmoved_database_is_not_stamped_again(
    fleet: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long-poll check reads no change stamp while nothing was committed (SQLite's commit
    counter vouches for the compilation); any commit, from this engine or another process's,
    is compiled at the next check; the stamp is still read every STAMP_AT_LEAST_EVERY."""
    engine = fleet.kw["bind"]
    if engine.dialect.name != "sqlite":
        pytest.skip("the commit counter is SQLite's (PostgreSQL reads the stamp every time)")
    stamps: list[str] = []

    def statement(conn: object, cursor: object, text: str, *rest: object) -> None:
        if "max(service_records.updated_at)" in text:
            stamps.append(text)

    event.listen(engine, "before_cursor_execute", statement)
    cache = StateCache(SETTINGS)
    readers = cache.readers(fleet)
    try:
        add_service(fleet, service_data("web"))
        with read_transaction(readers) as s:
            first = cache.state(s, "edge-1")
        assert stamps, "the first check reads the stamp"
        stamps.clear()
        for _ in range(20):
            with read_transaction(readers) as s:
                assert cache.state(s, "edge-1") is first
        assert stamps == []  # on main: one stamp per check
        add_service(fleet, service_data("api"))  # a commit through this engine's pool
        with read_transaction(readers) as s:
            second = cache.state(s, "edge-1")
        assert {r.service for r in second.routes} == {"shop/web", "shop/api"}
        other = make_engine(engine.url.render_as_string(hide_password=False))
        try:  # a commit by another engine (another process's connection)
            add_service(session_factory(other), service_data("db"))
        finally:
            other.dispose()
        with read_transaction(readers) as s:
            third = cache.state(s, "edge-1")
        assert "shop/db" in {r.service for r in third.routes}
        with transaction(fleet) as s:  # a write transaction's caller sees the same
            assert cache.compiled(s) is cache.compiled(s)
        monkeypatch.setattr(compile_module, "STAMP_AT_LEAST_EVERY", 0.0)
        add_service(fleet, service_data("mq"))  # compiled with a vouching that ends at once
        with read_transaction(readers) as s:
            assert "shop/mq" in {r.service for r in cache.state(s, "edge-1").routes}
        stamps.clear()
        with read_transaction(readers) as s:
            cache.state(s, "edge-1")
        assert stamps, "read again once the counter's vouching expired"
    finally:
        event.remove(engine, "before_cursor_execute", statement)


def test_a_hosts_new_state_is_built_once_when_asked_for_at_once(
    fleet: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long-poll and a report asking for the same new state together: one builds it, the
    other gets the same object."""
    import threading

    from lbprovider.fleet.compile import Compiled

    cache = StateCache(SETTINGS)
    add_service(fleet, service_data("web"))
    with transaction(fleet) as s:
        cache.compiled(s)
    built: list[str] = []
    original = Compiled.state_for

    def slow(self: Compiled, host: str, *, enabled: bool) -> FleetState:
        built.append(host)
        time.sleep(0.3)
        return original(self, host, enabled=enabled)

    monkeypatch.setattr(Compiled, "state_for", slow)
    got: list[FleetState] = []

    def ask() -> None:
        with transaction(fleet) as s:
            got.append(cache.state(s, "edge-1"))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 3 and got[0] is got[1] is got[2]
    assert built == ["edge-1"]  # on main: once per asking thread


def test_waiting_long_polls_share_one_reader_of_the_commit_counter(tmp_path: Path) -> None:
    """Twenty waiters on a quiet SQLite file cost one counter read every COMMIT_CHECK_SECONDS
    between them (not one each) and return at their deadline; a commit by another connection
    wakes every one of them within milliseconds."""
    path = tmp_path / "watched.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
    reads: list[int] = []

    class Counted(CommitWatch):
        def version(self) -> int | None:
            reads.append(1)
            return super().version()

    engine = make_engine(f"sqlite:///{path}")
    watch = Counted(engine)

    def commit() -> None:
        with sqlite3.connect(path) as other:
            other.execute("INSERT INTO t VALUES (1)")

    async def wait_all() -> tuple[float, float]:
        seen = watch.version()
        assert seen is not None
        reads.clear()
        started = time.monotonic()
        await asyncio.gather(*(watch.wait_moved(seen, started + 0.2) for _ in range(20)))
        quiet = time.monotonic() - started
        waiting = [
            asyncio.create_task(watch.wait_moved(seen, time.monotonic() + 5)) for _ in range(20)
        ]
        await asyncio.sleep(0.05)
        await asyncio.to_thread(commit)
        committed = time.monotonic()
        await asyncio.gather(*waiting)
        return quiet, time.monotonic() - committed

    try:
        quiet, woke = asyncio.run(wait_all())
    finally:
        watch.close()
        engine.dispose()
    assert quiet >= 0.2
    # one reader: at most one read per COMMIT_CHECK_SECONDS over the 0.25 s (a reader per
    # waiter read twenty times as often)
    assert len(reads) <= 0.25 / COMMIT_CHECK_SECONDS + 10, len(reads)
    assert woke < 0.5, woke
