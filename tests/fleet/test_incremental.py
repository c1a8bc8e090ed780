"""The incremental compiler and the delta protocol: what a change costs follows the change,
and the result is exactly what a full compile gives (SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.config import Settings
from lbprovider.db.models import Allocation, ServiceRecord
from lbprovider.db.session import transaction
from lbprovider.db.types import utcnow
from lbprovider.fleet.compile import Compiled, StateCache, compile_fleet
from lbprovider.fleet.models import FleetDelta, FleetState
from lbprovider.services.fleet import set_serving

from .helpers import add_service, make_pool, remove_service, service_data, set_node

SETTINGS = Settings(database_url="sqlite://")


def both(sessions: sessionmaker[Session], cache: StateCache) -> tuple[Compiled, Compiled]:
    """(incremental, full) compilations of the database as it is now."""
    with transaction(sessions) as s:
        return cache.compiled(s), compile_fleet(s, SETTINGS)


def assert_same(sessions: sessionmaker[Session], cache: StateCache) -> Compiled:
    inc, full = both(sessions, cache)
    assert inc.routes == full.routes
    assert dict(inc.by_service) == dict(full.by_service)
    assert dict(inc.problems) == dict(full.problems)
    assert dict(inc.no_routes) == dict(full.no_routes)
    assert inc.nodes == full.nodes
    assert inc.state_for("edge-1", enabled=True) == full.state_for("edge-1", enabled=True)
    return inc


def test_every_kind_of_change_compiles_as_a_full_compile_would(
    sessions: sessionmaker[Session],
) -> None:
    make_pool(sessions, "127.24.0.1-127.24.0.60")
    set_node(sessions, "node-a", "127.0.0.2")
    cache = StateCache(SETTINGS)
    for i in range(20):
        add_service(sessions, service_data(f"s{i}", [(80, 30000 + i)]))
    assert_same(sessions, cache)
    loads = cache._compiler.full_loads  # the first compile read everything
    add_service(sessions, service_data("new", [(80, 31000)]))  # a new Service
    assert_same(sessions, cache)
    add_service(sessions, service_data("s3", [(80, 32003), (443, 32443)]))  # a changed one
    assert_same(sessions, cache)
    remove_service(sessions, "s4")  # released: its routes go, its record stays
    assert_same(sessions, cache)
    with transaction(sessions) as s:  # a record deleted outright
        s.delete(s.scalars(select(ServiceRecord).where(ServiceRecord.name == "s5")).one())
    assert_same(sessions, cache)
    add_service(sessions, service_data("bad", [(80, 30000)], options={"balance": "nope"}))
    inc = assert_same(sessions, cache)
    assert "balance" in inc.problems["shop/bad"]
    with transaction(sessions) as s:  # only the serving flag: nothing to recompile
        s.execute(update(ServiceRecord).values(serving=True, updated_at=utcnow()))
    routes = cache._compiler._entries[("shop", "s1")].routes
    assert_same(sessions, cache)
    assert cache._compiler._entries[("shop", "s1")].routes is routes
    set_node(sessions, "node-b", "127.0.0.3")  # a node joins
    assert [n.name for n in assert_same(sessions, cache).nodes] == ["node-a", "node-b"]
    assert cache._compiler.full_loads == loads  # none of that read everything again


def test_a_clash_and_its_end_compile_as_a_full_compile_would(
    sessions: sessionmaker[Session],
) -> None:
    make_pool(sessions, "127.25.0.1-127.25.0.20")
    set_node(sessions, "node-a", "127.0.0.2")
    cache = StateCache(SETTINGS)
    (ip,) = add_service(sessions, service_data("a", [(80, 30001)]))
    add_service(sessions, service_data("b", [(80, 30002)]))
    assert_same(sessions, cache)
    with transaction(sessions) as s:  # a corrupt row: b's allocation moved onto a's address
        s.execute(update(Allocation).where(Allocation.service_name == "b").values(ip=ip))
        s.execute(
            update(ServiceRecord).where(ServiceRecord.name == "b").values(updated_at=utcnow())
        )
    # An allocation edited in place (no mark moves) is found by the periodic reconciliation.
    cache._compiler._reconciled = float("-inf")  # as if RECONCILE_SECONDS had passed
    inc = assert_same(sessions, cache)
    assert (
        inc.problems["shop/a"]
        == inc.problems["shop/b"]
        == ("another Service claims the same VIP:port")
    )
    assert inc.routes == ()
    remove_service(sessions, "b")
    inc = assert_same(sessions, cache)
    assert [r.service for r in inc.routes] == ["shop/a"]


def test_a_row_committed_out_of_order_is_found_by_the_reconciliation(
    sessions: sessionmaker[Session],
) -> None:
    """An update whose stamp is older than one already compiled (two writers committing out of
    order) is invisible to the high-water marks; the reconciliation finds it."""
    make_pool(sessions, "127.26.0.1-127.26.0.20")
    set_node(sessions, "node-a", "127.0.0.2")
    cache = StateCache(SETTINGS)
    add_service(sessions, service_data("a", [(80, 30001)]))
    before = utcnow()
    add_service(sessions, service_data("b", [(80, 30002)]))
    assert_same(sessions, cache)
    with transaction(sessions) as s:
        s.execute(
            update(ServiceRecord)
            .where(ServiceRecord.name == "a")
            .values(ports=[{"name": "p", "protocol": "TCP", "port": 81, "nodePort": 30001}])
            .values(updated_at=before)
        )
        s.execute(update(ServiceRecord).where(ServiceRecord.name == "b").values(serving=True))
    cache._compiler._reconciled = float("-inf")  # as if RECONCILE_SECONDS had passed
    inc = assert_same(sessions, cache)
    assert {r.port for r in inc.by_service["shop/a"]} == {81}


def test_a_delta_rebuilds_the_next_state_exactly(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "127.27.0.1-127.27.0.200")
    set_node(sessions, "node-a", "127.0.0.2")
    cache = StateCache(SETTINGS)
    for i in range(100):
        add_service(sessions, service_data(f"s{i}", [(80, 30000 + i)]))

    def current() -> FleetState:
        with transaction(sessions) as s:
            return cache.state(s, "edge-1")

    base = current()
    add_service(sessions, service_data("new", [(80, 31000)]))
    add_service(sessions, service_data("s7", [(8080, 31007)]))
    remove_service(sessions, "s9")
    now = current()
    delta = FleetDelta.between(base, now)
    assert {r.service for r in delta.upsert} == {"shop/new", "shop/s7"}
    assert len(delta.remove) == 2  # s7's old route and s9's
    # over the wire, then rebuilt on the agent's copy of the base
    wire = FleetDelta.model_validate_json(delta.model_dump_json())
    held = FleetState.model_validate_json(base.model_dump_json())
    rebuilt = wire.apply_to(held)
    assert rebuilt == now and rebuilt.version == now.version == rebuilt.content_digest()
    assert len(wire.model_dump_json()) < len(now.model_dump_json()) / 20
    try:
        wire.apply_to(now)
    except ValueError as e:
        assert "not against this state" in str(e)
    else:
        raise AssertionError("a delta applied to another base")


def sqlite_cache(sessions: sessionmaker[Session], services: int) -> StateCache:
    """:func:`filled_cache`, compiled, on SQLite only (the plans checked are SQLite's)."""
    if sessions.kw["bind"].dialect.name != "sqlite":
        pytest.skip("the plan checked is SQLite's")
    cache = filled_cache(sessions, services)
    assert_same(sessions, cache)
    return cache


def filled_cache(sessions: sessionmaker[Session], services: int) -> StateCache:
    """A cache, not yet compiled, over ``services`` one-port Services (``shop/s<i>``) on one
    node."""
    make_pool(sessions, "127.28.0.1-127.28.0.60")
    set_node(sessions, "node-a", "127.0.0.2")
    cache = StateCache(SETTINGS)
    for i in range(services):
        add_service(sessions, service_data(f"s{i}", [(80, 30000 + i)]))
    return cache


def refresh_statements(
    sessions: sessionmaker[Session], cache: StateCache, wanted: Callable[[str], bool]
) -> list[tuple[str, Any]]:
    """The statements (text, parameters) matching ``wanted`` that an incremental refresh of
    ``cache`` runs, no reconciliation being due."""
    engine = sessions.kw["bind"]
    seen: list[tuple[str, Any]] = []

    def statement(conn: Any, cursor: Any, text: str, params: Any, *rest: Any) -> None:
        if wanted(text):
            seen.append((text, params))

    cache._compiler._reconciled = time.monotonic()
    event.listen(engine, "before_cursor_execute", statement)
    try:
        with transaction(sessions) as s:
            cache.compiled(s)
    finally:
        event.remove(engine, "before_cursor_execute", statement)
    return seen


def query_plan(sessions: sessionmaker[Session], text: str, params: Any) -> str:
    """SQLite's ``EXPLAIN QUERY PLAN`` for one statement, its steps joined by `` | ``."""
    with sessions.kw["bind"].connect() as conn:
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {text}", params)
        return " | ".join(row[3] for row in rows)


def test_a_change_reads_allocations_by_key_not_every_live_one(
    sessions: sessionmaker[Session],
) -> None:
    """The allocations a change reads again (new ones, a changed Service's) are found by
    primary key or by Service, never by walking the index of every live allocation (SQLite
    chose ``ix_allocations_active_key`` when ``active`` was in the WHERE clause: at 10,000
    Services that was milliseconds per change on the long-poll's path)."""
    cache = sqlite_cache(sessions, 30)
    add_service(sessions, service_data("new", [(80, 31000)]))  # a new allocation
    add_service(sessions, service_data("s3", [(80, 32003), (443, 32443)]))  # a changed one
    remove_service(sessions, "s4")
    seen = refresh_statements(
        sessions,
        cache,
        lambda text: text.lstrip().upper().startswith("SELECT") and "FROM allocations" in text,
    )
    inc = assert_same(sessions, cache)
    assert {r.port for r in inc.by_service["shop/s3"]} == {80, 443}
    assert "shop/new" in inc.by_service and not inc.by_service.get("shop/s4")
    incremental = [(t, p) for t, p in seen if "count(" not in t and "allocations.id >" in t]
    incremental += [(t, p) for t, p in seen if "allocations.service_name =" in t]
    assert incremental, "a change reads new and changed allocations"
    for text, params in incremental:
        plan = query_plan(sessions, text, params)
        assert "ix_allocations_active_key" not in plan, (text, plan)


def test_a_change_is_found_through_indexes_not_by_reading_every_record(
    sessions: sessionmaker[Session],
) -> None:
    """The change stamp's ``max(updated_at)`` and ``max(released_at)`` and the incremental
    compile's ``updated_at > mark OR id > mark`` are index reads (SQLite's plan), not scans of
    every record and allocation: the long-poll runs them on every commit, at 10,000 Services."""
    cache = sqlite_cache(sessions, 5)
    remove_service(sessions, "s1")  # a release: released_at moves
    add_service(sessions, service_data("s2", [(80, 31002)]))  # an update: updated_at moves
    seen = refresh_statements(
        sessions, cache, lambda text: "service_records" in text and "updated_at" in text
    )
    assert_same(sessions, cache)
    plans = {text: query_plan(sessions, text, params) for text, params in seen}
    stamp = [p for t, p in plans.items() if "max(service_records.updated_at)" in t]
    since = [p for t, p in plans.items() if "service_records.updated_at >" in t]
    assert stamp and since, plans
    for plan in stamp:
        assert "COVERING INDEX ix_service_records_updated_at" in plan, plan
        assert "COVERING INDEX ix_allocations_released_at" in plan, plan
    for plan in since:
        assert "MULTI-INDEX OR" in plan and "ix_service_records_updated_at" in plan, plan


def test_a_serving_only_write_keeps_the_compilation_and_the_hosts_states(
    sessions: sessionmaker[Session],
) -> None:
    """A report's ``serving`` write stamps the records it changes (the change stamp moves) but
    changes nothing the fleet compiles: the long-poll gets the same Compiled and the same
    host state back, not a new compilation and a new 10,000-route state of the same version
    (which had cost the API a state build per report, beside the next change). A real change
    after it still makes new ones."""
    cache = filled_cache(sessions, 5)
    with transaction(sessions) as s:
        compiled, state = cache.compiled(s), cache.state(s, "edge-1")
    cache._compiler._reconciled = time.monotonic()  # no reconciliation due
    with transaction(sessions) as s:
        assert set_serving(session=s, states={"shop/s1": (True, "served by edge-1")}) == 1
    with transaction(sessions) as s:
        assert cache.refresh(s) is compiled  # on main: a new Compiled
        assert cache.state(s, "edge-1") is state  # on main: built again, same version
    add_service(sessions, service_data("s9", [(80, 30009)]))
    with transaction(sessions) as s:
        assert cache.refresh(s) is not compiled
        now = cache.state(s, "edge-1")
    assert now.version != state.version and "shop/s9" in {r.service for r in now.routes}
    assert_same(sessions, cache)
