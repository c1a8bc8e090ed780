"""The agent protocol over real HTTP: long-poll (at once when newer, 304 after the wait, capped),
ETag = version, an agent token sees only its own host, and reports drive ``serving``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.api.app import create_app
from lbprovider.db.models import FleetHost, ServiceRecord
from lbprovider.db.session import READ_ONLY, read_only_engine, transaction
from lbprovider.db.types import utcnow
from lbprovider.fleet import protocol
from lbprovider.fleet.compile import compile_fleet
from lbprovider.fleet.models import (
    FleetDelta,
    FleetState,
    HostStatus,
    RouteCounters,
    RouteSpec,
    StatusAck,
)
from lbprovider.fleet.serving import live_hosts, serving_states
from lbprovider.services.fleet import fleet_hosts, host_stamps, status_text
from tests.api.conftest import LiveServer, api_settings, make_token

from .helpers import add_service, make_pool, service_data, set_node


@dataclass
class Proto:
    url: str
    sessions: sessionmaker[Session]
    agent: httpx.Client
    admin: httpx.Client
    other: httpx.Client

    def state(self, client: httpx.Client | None = None, **params: object) -> httpx.Response:
        return (client or self.agent).get("/api/v1/fleet/hosts/edge-1/state", params=params)

    def report(self, status: HostStatus, host: str = "edge-1") -> httpx.Response:
        return self.agent.post(
            f"/api/v1/fleet/hosts/{host}/status",
            content=status.model_dump_json(),
            headers={"Content-Type": "application/json"},
        )


@pytest.fixture
def proto(engine: Engine, sessions: sessionmaker[Session]) -> Iterator[Proto]:
    url = engine.url.render_as_string(hide_password=False)
    settings = api_settings(
        url,
        fleet_long_poll_max_seconds=1.0,
        fleet_state_poll_seconds=0.05,
        fleet_host_stale_seconds=30.0,
    )
    server = LiveServer(create_app(settings, engine=engine)).start()
    tokens = {
        "agent": make_token(sessions, "agent-1", ["agent"], host="edge-1"),
        "admin": make_token(sessions, "root", ["admin"]),
        "other": make_token(sessions, "agent-2", ["agent"], host="edge-2"),
    }
    clients = {
        k: httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {v}"}, timeout=10)
        for k, v in tokens.items()
    }
    make_pool(sessions, "127.22.0.1-127.22.0.9")
    set_node(sessions, "node-1", "127.0.0.2")
    try:
        yield Proto(server.url, sessions, clients["agent"], clients["admin"], clients["other"])
    finally:
        for c in clients.values():
            c.close()
        server.stop()


def test_first_poll_answers_at_once_with_etag(proto: Proto) -> None:
    r = proto.state(wait=5)
    assert r.status_code == 200
    state = FleetState.model_validate(r.json())
    assert r.headers["ETag"] == f'"{state.version}"'
    assert state.host == "edge-1" and state.version == state.content_digest()


def test_same_version_waits_then_304(proto: Proto) -> None:
    version = proto.state().json()["version"]
    started = time.monotonic()
    r = proto.state(version=version, wait=0.4)
    assert r.status_code == 304 and 0.35 <= time.monotonic() - started < 3
    assert r.headers["ETag"] == f'"{version}"'
    started = time.monotonic()
    r = proto.agent.get(
        "/api/v1/fleet/hosts/edge-1/state",
        params={"wait": 30},
        headers={"If-None-Match": f'"{version}"'},
    )
    assert r.status_code == 304
    assert time.monotonic() - started < 2.5  # capped by fleet_long_poll_max_seconds (1 s)


def test_waiting_poll_answers_as_soon_as_a_service_appears(proto: Proto) -> None:
    version = proto.state().json()["version"]
    with httpx.Client(base_url=proto.url, headers=proto.agent.headers, timeout=10) as c:
        import threading

        got: list[httpx.Response] = []
        t = threading.Thread(target=lambda: got.append(proto.state(c, version=version, wait=5)))
        t.start()
        time.sleep(0.2)
        started = time.monotonic()
        (ip,) = add_service(proto.sessions, service_data("web", [(80, 30080)]))
        t.join()
    assert got[0].status_code == 200 and time.monotonic() - started < 1.0
    assert [r["address"] for r in got[0].json()["routes"]] == [ip]


def test_agent_token_reaches_only_its_own_host(proto: Proto) -> None:
    assert proto.state(proto.other).status_code == 403
    assert proto.other.post("/api/v1/fleet/hosts/edge-1/status", json={}).status_code == 403
    assert proto.state(proto.admin).status_code == 200
    assert httpx.get(proto.url + "/api/v1/fleet/hosts/edge-1/state").status_code == 401


def test_reports_register_the_host_and_drive_serving(proto: Proto) -> None:
    add_service(proto.sessions, service_data("web", [(80, 30080)]))
    state = FleetState.model_validate(proto.state().json())
    route = state.routes[0]

    def serving() -> tuple[bool, str]:
        with transaction(proto.sessions) as s:
            rec = s.scalar(select(ServiceRecord).where(ServiceRecord.name == "web"))
            assert rec is not None
            return rec.serving, rec.serving_message

    ack = proto.report(HostStatus(applied_version="old", applied_routes={}))
    assert ack.status_code == 200 and ack.json()["desired_version"] == state.version
    assert serving() == (False, f"fleet host edge-1 has not applied {route.key} yet")
    failing = HostStatus(
        applied_version=state.version,
        applied_routes={route.route_id: route.digest()},
        route_errors={route.route_id: "connection closed at once"},
        errors=["reload failed"],
    )
    proto.report(failing)
    assert serving() == (
        False,
        f"fleet host edge-1 does not serve {route.key}: connection closed at once",
    )
    with transaction(proto.sessions) as s:
        host = s.scalar(select(FleetHost).where(FleetHost.name == "edge-1"))
        assert host is not None and host.error == "reload failed"
        assert host.applied_version == state.version and host.last_heartbeat is not None
    # applied_routes omitted (None) keeps the stored set.
    proto.report(HostStatus(applied_version=state.version))
    assert serving() == (True, "served by 1 fleet host")
    # A changed NodePort is "not applied" until the host reports the new digest.
    add_service(proto.sessions, service_data("web", [(80, 30081)]))
    proto.report(HostStatus(applied_version=state.version))
    assert serving()[0] is False and "has not applied" in serving()[1]


def test_every_live_host_must_serve_a_vip(proto: Proto) -> None:
    add_service(proto.sessions, service_data("web", [(80, 30080)]))
    route = FleetState.model_validate(proto.state().json()).routes[0]
    done = HostStatus(applied_routes={route.route_id: route.digest()})
    proto.report(done)
    second = proto.other.post(
        "/api/v1/fleet/hosts/edge-2/status",
        content=HostStatus(applied_routes={}).model_dump_json(),
        headers={"Content-Type": "application/json"},
    )
    assert second.status_code == 200
    with transaction(proto.sessions) as s:
        rec = s.scalar(select(ServiceRecord).where(ServiceRecord.name == "web"))
        assert rec is not None and not rec.serving
        assert rec.serving_message == f"fleet host edge-2 has not applied {route.key} yet"
        host = s.scalar(select(FleetHost).where(FleetHost.name == "edge-2"))
        assert host is not None
        host.enabled = False  # an operator takes edge-2 out: it no longer holds Services back
    proto.report(done)
    with transaction(proto.sessions) as s:
        rec = s.scalar(select(ServiceRecord).where(ServiceRecord.name == "web"))
        assert rec is not None and rec.serving
    disabled = proto.other.get("/api/v1/fleet/hosts/edge-2/state").json()
    assert disabled["enabled"] is False and disabled["routes"] == []


def test_delta_against_a_kept_version_rebuilds_the_new_state(proto: Proto) -> None:
    add_service(proto.sessions, service_data("a", [(80, 30080)]))
    first = FleetState.model_validate(proto.state().json())
    add_service(proto.sessions, service_data("b", [(80, 30081)]))
    r = proto.state(version=first.version, wait=5, delta="true")
    assert r.status_code == 200 and r.headers["X-Fleet-Delta"] == first.version
    delta = FleetDelta.model_validate(r.json())
    assert [u.service for u in delta.upsert] == ["shop/b"] and delta.remove == ()
    whole = proto.state(version=first.version)  # the same answer without delta=true
    assert "X-Fleet-Delta" not in whole.headers
    state = FleetState.model_validate(whole.json())
    assert delta.apply_to(first) == state
    assert r.headers["ETag"] == whole.headers["ETag"] == f'"{state.version}"'
    # the long-poll contract holds with delta=true: same version waits, then 304
    assert proto.state(version=state.version, wait=0.3, delta="true").status_code == 304


def test_delta_against_an_unknown_version_is_the_whole_state(proto: Proto) -> None:
    add_service(proto.sessions, service_data("a", [(80, 30080)]))
    r = proto.state(version="0" * 20, delta="true")
    assert r.status_code == 200 and "X-Fleet-Delta" not in r.headers
    state = FleetState.model_validate(r.json())
    assert state.version == state.content_digest() and len(state.routes) == 1


def _stored(proto: Proto, host: str = "edge-1") -> dict[str, object]:
    with transaction(proto.sessions) as s:
        row = s.scalar(select(FleetHost).where(FleetHost.name == host))
        assert row is not None and isinstance(row.status, dict)
        return dict(row.status)


def _serving_of(proto: Proto) -> dict[str, tuple[bool, str]]:
    with transaction(proto.sessions) as s:
        return {r.name: (r.serving, r.serving_message) for r in s.scalars(select(ServiceRecord))}


SECTIONS = ("applied_routes", "route_backends", "counters")


def test_a_delta_report_stores_what_the_whole_report_would(proto: Proto) -> None:
    for name, port in (("a", 80), ("b", 81), ("c", 82)):
        add_service(proto.sessions, service_data(name, [(port, 30080)]))
    state = FleetState.model_validate(proto.state().json())
    ra, rb, rc = state.routes
    counters = {r.key: RouteCounters(conn_cnt=1) for r in (ra, rb)}
    first = HostStatus(
        applied_version="v1",
        applied_routes={ra.route_id: ra.digest(), rb.route_id: "stale-digest"},
        route_backends={ra.route_id: "be_a", rb.route_id: "be_b"},
        counters=counters,
        report_id="run-1",
    )
    ack = StatusAck.model_validate(proto.report(first).json())
    assert ack.deltas and not ack.resend_full
    assert _serving_of(proto)["a"][0] and not _serving_of(proto)["b"][0]
    # b's digest fixed, a's route dropped from both sections, c added, one counter gone
    delta = HostStatus(
        applied_version=state.version,
        applied_routes={rb.route_id: rb.digest(), rc.route_id: rc.digest()},
        route_backends={rc.route_id: "be_c"},
        counters={rc.key: RouteCounters(conn_cnt=7)},
        gone_routes=[ra.route_id],
        gone_counters=[ra.key],
        report_id="run-2",
        base_report="run-1",
    )
    ack = StatusAck.model_validate(proto.report(delta).json())
    assert ack.deltas and not ack.resend_full
    after_delta, serving_after_delta = _stored(proto), _serving_of(proto)
    assert after_delta["applied_routes"] == {rb.route_id: rb.digest(), rc.route_id: rc.digest()}
    assert after_delta["route_backends"] == {rb.route_id: "be_b", rc.route_id: "be_c"}
    assert set(after_delta["counters"]) == {rb.key, rc.key}  # type: ignore[arg-type]
    assert after_delta["report_id"] == "run-2"
    assert not {"base_report", "gone_routes", "gone_counters"} & after_delta.keys()
    assert serving_after_delta["a"] == (False, f"fleet host edge-1 has not applied {ra.key} yet")
    assert serving_after_delta["b"][0] and serving_after_delta["c"][0]
    # the same content as one whole report: the same row, the same serving
    whole = HostStatus(
        applied_version=state.version,
        applied_routes={rb.route_id: rb.digest(), rc.route_id: rc.digest()},
        route_backends={rb.route_id: "be_b", rc.route_id: "be_c"},
        counters={rb.key: RouteCounters(conn_cnt=1), rc.key: RouteCounters(conn_cnt=7)},
        report_id="run-3",
    )
    proto.report(whole)
    after_whole = _stored(proto)
    assert {k: after_whole[k] for k in SECTIONS} == {k: after_delta[k] for k in SECTIONS}
    assert _serving_of(proto) == serving_after_delta


def test_a_delta_against_an_unknown_base_is_refused_and_asks_for_a_whole_report(
    proto: Proto,
) -> None:
    add_service(proto.sessions, service_data("web", [(80, 30080)]))
    route = FleetState.model_validate(proto.state().json()).routes[0]
    proto.report(HostStatus(applied_routes={}, report_id="run-1"))
    claims = HostStatus(
        applied_routes={route.route_id: route.digest()},
        report_id="run-9",
        base_report="run-8",  # a report the API never took (e.g. lost, or another API's DB)
    )
    ack = StatusAck.model_validate(proto.report(claims).json())
    assert ack.resend_full
    stored = _stored(proto)
    assert stored["applied_routes"] == {} and stored["report_id"] == ""
    assert _serving_of(proto)["web"][0] is False  # the delta's content was not believed
    # nor is a delta against the report that was stored before the refusal
    ack = StatusAck.model_validate(
        proto.report(claims.model_copy(update={"base_report": "run-1"})).json()
    )
    assert ack.resend_full and _serving_of(proto)["web"][0] is False
    ack = StatusAck.model_validate(
        proto.report(claims.model_copy(update={"base_report": ""})).json()
    )
    assert not ack.resend_full and _serving_of(proto)["web"] == (True, "served by 1 fleet host")


def _engines(engine: Engine) -> list[Engine]:
    """``engine`` and, on PostgreSQL, its read-only pool (a SQLite read-only view shares
    ``engine``'s events)."""
    if engine.dialect.name != "postgresql":
        return [engine]
    return [engine, read_only_engine(engine)]


def test_a_report_recomputes_serving_of_the_services_it_touches_only(
    proto: Proto, engine: Engine
) -> None:
    for i in range(6):
        add_service(proto.sessions, service_data(f"s{i}", [(80 + i, 30080)]))
    routes = FleetState.model_validate(proto.state().json()).routes
    applied = {r.route_id: r.digest() for r in routes}
    proto.report(HostStatus(applied_routes=applied, report_id="run-1"))  # the basis: all
    assert all(ok for ok, _ in _serving_of(proto).values())
    add_service(proto.sessions, service_data("new", [(90, 30080)]))
    new = next(r for r in FleetState.model_validate(proto.state().json()).routes if r.port == 90)
    broken = routes[0]
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    watched = _engines(engine)  # a report prepares in a read-only transaction
    for e in watched:
        event.listen(e, "before_cursor_execute", seen)
    try:
        proto.report(
            HostStatus(
                applied_routes={},
                route_errors={broken.route_id: "connection refused"},
                report_id="run-2",
                base_report="run-1",
            )
        )
    finally:
        for e in watched:
            event.remove(e, "before_cursor_execute", seen)
    reads = [
        s for s in statements if "serving_message" in s and s.lstrip().upper().startswith("SELECT")
    ]
    assert reads and all("IN" in s.upper() for s in reads), reads  # not every record
    serving = _serving_of(proto)
    assert serving["new"] == (False, f"fleet host edge-1 has not applied {new.key} yet")
    assert serving["s0"] == (
        False,
        f"fleet host edge-1 does not serve {broken.key}: connection refused",
    )
    assert all(serving[f"s{i}"][0] for i in range(1, 6))
    # the same as recomputing every Service from the stored reports
    with transaction(proto.sessions) as s:
        views = live_hosts(fleet_hosts(session=s), now=utcnow(), stale=timedelta(seconds=30))
        full = serving_states(compile_fleet(s, api_settings("sqlite://")), views)
    assert {k.split("/")[1]: v for k, v in full.items()} == serving


def test_a_report_stored_by_another_api_is_read_from_the_row(proto: Proto) -> None:
    add_service(proto.sessions, service_data("web", [(80, 30080)]))
    route = FleetState.model_validate(proto.state().json()).routes[0]
    applied = {route.route_id: route.digest()}
    proto.report(HostStatus(applied_routes=applied, report_id="run-1"))
    assert _serving_of(proto)["web"][0]
    # another API replica (same database) stores a newer report of the host: nothing applied
    with transaction(proto.sessions) as s:
        row = s.scalar(select(FleetHost).where(FleetHost.name == "edge-1"))
        assert row is not None
        row.status = {**row.status, "applied_routes": {}, "report_id": "run-2"}
    # a delta against the report this API stored is refused: the row holds another one
    ack = StatusAck.model_validate(
        proto.report(HostStatus(applied_routes={}, report_id="run-3", base_report="run-1")).json()
    )
    assert ack.resend_full
    assert _stored(proto)["applied_routes"] == {}
    # and serving follows the row (heartbeat-only whole report: sections kept from the row)
    proto.report(HostStatus(applied_routes=None, report_id="run-4"))
    assert _serving_of(proto)["web"] == (
        False,
        f"fleet host edge-1 has not applied {route.key} yet",
    )


def _write_transactions(engine: Engine) -> tuple[list[list[str]], object]:
    """Statements of each write transaction on ``engine`` (read-only ones left out), and a
    function that stops recording."""
    done: list[list[str]] = []
    open_: dict[int, list[str]] = {}

    def begin(conn: Connection) -> None:
        if not conn.get_execution_options().get(READ_ONLY, False):
            open_[id(conn)] = []

    def statement(conn: Connection, _cur: object, text: str, *_args: object) -> None:
        if id(conn) in open_ and not text.lstrip().upper().startswith("BEGIN"):
            open_[id(conn)].append(text)

    def end(conn: Connection) -> None:
        if (seen := open_.pop(id(conn), None)) is not None:
            done.append(seen)

    hooks = [("begin", begin), ("before_cursor_execute", statement)]
    hooks += [("commit", end), ("rollback", end)]
    for name, fn in hooks:
        event.listen(engine, name, fn)

    def stop() -> None:
        for name, fn in hooks:
            event.remove(engine, name, fn)

    return done, stop


def test_a_report_writes_in_a_short_transaction_prepared_before_it(
    proto: Proto, engine: Engine
) -> None:
    """The merge, the serialisation and the serving decision run before the write
    transaction: it holds the write lock for two checks and the writes only (no compile, no
    read of a stored status or of Service records)."""
    for i in range(4):
        add_service(proto.sessions, service_data(f"s{i}", [(80 + i, 30080)]))
    routes = FleetState.model_validate(proto.state().json()).routes
    applied = {r.route_id: r.digest() for r in routes}
    proto.report(HostStatus(applied_routes=applied, report_id="run-1"))
    done, stop = _write_transactions(engine)
    try:
        ack = StatusAck.model_validate(
            proto.report(
                HostStatus(
                    applied_routes={},
                    route_errors={routes[0].route_id: "connection refused"},
                    report_id="run-2",
                    base_report="run-1",
                )
            ).json()
        )
    finally:
        stop()
    assert not ack.resend_full
    writes = [t for t in done if any("UPDATE fleet_hosts" in s for s in t)]
    assert len(writes) == 1, done
    (write,) = writes
    assert len(write) <= 4, write  # change stamp, host stamps, the row, the serving rows
    assert not any("FROM service_records WHERE" in s for s in write), write
    assert not any("fleet_hosts.status AS" in s for s in write), write
    assert _serving_of(proto)["s0"][0] is False
    assert _stored(proto)["route_errors"] == {routes[0].route_id: "connection refused"}


def creations_between_prepares(
    proto: Proto, monkeypatch: pytest.MonkeyPatch, count: int
) -> tuple[RouteSpec, list[int]]:
    """A Service "web" and its registered host; then, once installed, a Service created
    (port 81) after each of the next ``count`` report prepares, before their write. Returns
    web's route and the list the prepares are counted in."""
    add_service(proto.sessions, service_data("web", [(80, 30080)]))
    route = FleetState.model_validate(proto.state().json()).routes[0]
    proto.report(HostStatus(applied_routes={}, report_id="r0"))  # registers the host
    prepared = protocol._prepare
    calls: list[int] = []

    def racing(*args: Any, **kwargs: Any) -> Any:
        out = prepared(*args, **kwargs)
        calls.append(1)
        if len(calls) <= count:
            add_service(proto.sessions, service_data(f"late{len(calls)}", [(81, 30080)]))
        return out

    monkeypatch.setattr(protocol, "_prepare", racing)
    return route, calls


def test_a_change_between_prepare_and_write_is_prepared_again(
    proto: Proto, monkeypatch: pytest.MonkeyPatch
) -> None:
    route, calls = creations_between_prepares(proto, monkeypatch, 1)
    proto.report(HostStatus(applied_routes={route.route_id: route.digest()}, report_id="r1"))
    assert len(calls) == 2
    late = next(r for r in FleetState.model_validate(proto.state().json()).routes if r.port == 81)
    assert _serving_of(proto) == {
        "web": (True, "served by 1 fleet host"),
        "late1": (False, f"fleet host edge-1 has not applied {late.key} yet"),
    }


def test_a_report_beside_a_burst_of_creations_is_not_done_under_the_write_lock(
    proto: Proto, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Five Services created, one after each of a report's first five prepares (a burst: at
    10,000 Services a prepare takes about as long as the gap between two creations): the
    sixth prepare holds and is written; the report never falls back to preparing inside the
    write transaction, where it held the next creation's commit (with 3 tries it did)."""
    caplog.set_level(logging.INFO, logger=protocol.__name__)
    route, calls = creations_between_prepares(proto, monkeypatch, 5)
    proto.report(HostStatus(applied_routes={route.route_id: route.digest()}, report_id="r1"))
    assert len(calls) == 6
    assert not [r for r in caplog.records if getattr(r, "event", "") == "host_status_whole"]
    assert _serving_of(proto)["web"] == (True, "served by 1 fleet host")
    assert _stored(proto)["report_id"] == "r1"


def test_a_report_outdated_at_every_try_is_done_whole_in_one_transaction(
    proto: Proto, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=protocol.__name__)
    add_service(proto.sessions, service_data("web", [(80, 30080)]))
    route = FleetState.model_validate(proto.state().json()).routes[0]
    applied = {route.route_id: route.digest()}
    proto.report(HostStatus(applied_routes=applied, report_id="r1"))
    prepared = protocol._prepare
    whole = protocol.accept_status_in
    calls: list[str] = []

    def racing(*args: Any, **kwargs: Any) -> Any:
        out = prepared(*args, **kwargs)
        if "whole" in calls:  # the whole path's own prepare, inside its write transaction
            return out
        calls.append("prepare")
        with transaction(proto.sessions) as s:  # another writer stores the host's row
            row = s.scalar(select(FleetHost).where(FleetHost.name == "edge-1"))
            assert row is not None
            row.last_heartbeat = utcnow()
        return out

    def counted(**kwargs: Any) -> Any:
        calls.append("whole")
        return whole(**kwargs)

    monkeypatch.setattr(protocol, "_prepare", racing)
    monkeypatch.setattr(protocol, "accept_status_in", counted)
    ack = StatusAck.model_validate(
        proto.report(
            HostStatus(
                applied_routes={}, report_id="r2", base_report="r1", gone_routes=[route.route_id]
            )
        ).json()
    )
    assert calls == ["prepare"] * protocol.PREPARE_TRIES + ["whole"]
    assert [r for r in caplog.records if getattr(r, "event", "") == "host_status_whole"]
    assert not ack.resend_full
    assert _stored(proto)["report_id"] == "r2"
    assert _serving_of(proto)["web"] == (
        False,
        f"fleet host edge-1 has not applied {route.key} yet",
    )


def test_status_text_parses_back_to_the_status() -> None:
    status: dict[str, Any] = {
        "report_id": "r1",
        "errors": ["connexion refusée ✗"],
        "applied_routes": {"a": "d" * 64},
        "counters": {"a": {"sessions": 2**70}},
        "ratio": float("inf"),
    }
    text = status_text(status)
    assert text.startswith('{"report_id":"r1",')  # compact: pydantic_core, not json.dumps
    assert "refusée ✗" in text and json.loads(text) == status
    odd = {"error": "\ud800"}  # a lone surrogate: UTF-8 cannot hold it, json.dumps can
    assert json.loads(status_text(odd)) == odd


def test_a_prepared_report_is_read_back_by_every_reader(proto: Proto) -> None:
    add_service(proto.sessions, service_data("web", [(80, 30080)]))
    route = FleetState.model_validate(proto.state().json()).routes[0]
    proto.report(HostStatus(applied_routes={}, report_id="r0"))  # registers the host
    reason = "connexion refusée ✗"
    report = HostStatus(
        applied_routes={route.route_id: route.digest()},
        route_errors={route.route_id: reason},
        errors=[reason],
        report_id="r1",
    )
    proto.report(report)
    stored = _stored(proto)
    assert stored["route_errors"] == {route.route_id: reason}
    assert stored["applied_routes"] == {route.route_id: route.digest()}
    with transaction(proto.sessions) as s:
        (stamp,) = [h for h in host_stamps(session=s) if h.name == "edge-1"]
        assert stamp.report_id == "r1"  # json_extract / ->> on the stored text
        assert HostStatus.model_validate(
            {k: v for k, v in stored.items() if k in HostStatus.model_fields}
        ).errors == [reason]
    assert _serving_of(proto)["web"] == (
        False,
        f"fleet host edge-1 does not serve {route.key}: {reason}",
    )
    hosts = proto.admin.get("/api/v1/fleet/hosts")  # the API's read of the stored status
    assert hosts.status_code == 200 and reason in hosts.json()["results"][0]["error"], hosts.text


def test_on_sqlite_a_waiting_poll_sees_a_commit_within_milliseconds_not_a_poll_later(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    """With a 2 s poll interval, a long-poll on a SQLite file answers a new Service within a
    fraction of it (the commit counter wakes it); PostgreSQL still checks every poll."""
    if engine.dialect.name != "sqlite":
        pytest.skip("the commit counter is SQLite's")
    url = engine.url.render_as_string(hide_password=False)
    settings = api_settings(url, fleet_long_poll_max_seconds=10.0, fleet_state_poll_seconds=2.0)
    server = LiveServer(create_app(settings, engine=engine)).start()
    token = make_token(sessions, "agent-1", ["agent"], host="edge-1")
    make_pool(sessions, "127.22.0.1-127.22.0.9")
    set_node(sessions, "node-1", "127.0.0.2")
    headers = {"Authorization": f"Bearer {token}"}
    path = "/api/v1/fleet/hosts/edge-1/state"
    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=15) as c:
            version = c.get(path).json()["version"]
            import threading

            took: list[float] = []
            got: list[httpx.Response] = []

            def poll() -> None:
                got.append(c.get(path, params={"version": version, "wait": 8}))
                took.append(time.monotonic() - started)

            t = threading.Thread(target=poll)
            t.start()
            time.sleep(0.3)  # the poll checked, then waits for its next check (2 s later)
            started = time.monotonic()
            (ip,) = add_service(sessions, service_data("web", [(80, 30080)]))
            t.join()
        assert got[0].status_code == 200
        assert [r["address"] for r in got[0].json()["routes"]] == [ip]
        assert took[0] < 0.5, took  # on main: the next poll, ~1.7 s later
    finally:
        server.stop()


def test_a_state_request_is_answered_while_another_writer_holds_the_write_lock(
    proto: Proto, engine: Engine
) -> None:
    """Authentication and the long-poll only read: a state request does not queue behind a
    writer (on SQLite, the write lock a creation or a report holds)."""
    version = proto.state().json()["version"]
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("SELECT 1")  # begun BEGIN IMMEDIATE: the write lock, held
        else:
            conn.exec_driver_sql("BEGIN")
            conn.exec_driver_sql("LOCK TABLE api_tokens, fleet_hosts IN EXCLUSIVE MODE")
        try:
            started = time.monotonic()
            r = proto.agent.get(
                "/api/v1/fleet/hosts/edge-1/state",
                params={"version": version, "wait": 0},
                timeout=5,
            )
            took = time.monotonic() - started
        finally:
            conn.rollback()
    assert r.status_code == 304 and took < 2.0, took  # on main: waited for the lock (timeout)
