"""The cheap paths of allocation: steady state without writes, and the pool-spec cache.

Both are only worth having if they change nothing a user can see: the same addresses, the same
reasons, a ledger row for every change, and an edited pool obeyed by the very next decision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.models import Allocation, AllocationPort, Reservation
from lbprovider.db.session import transaction
from lbprovider.ipam.allocator import Reason
from lbprovider.services.allocations import allocate_service
from lbprovider.services.loadbalancers import converge_service
from lbprovider.services.pools import fields_of, get_pool, update_pool
from lbprovider.services.records import ServiceData, get_record
from lbprovider.services.state import cached_pool_specs
from tests.services.helpers import ACTOR, POLICY, allocate, count, ledger, make_pool, svc_request

WRITES = ("INSERT", "UPDATE", "DELETE", "SAVEPOINT", "RELEASE")


@contextmanager
def statements(sessions: sessionmaker[Session]) -> Iterator[list[str]]:
    """Every SQL statement the engine runs inside the block."""
    engine = sessions.kw["bind"]
    assert isinstance(engine, Engine)
    seen: list[str] = []

    def record(_c: Any, _cur: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement.lstrip().split(None, 1)[0].upper())

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def writes(seen: list[str]) -> list[str]:
    return [s for s in seen if s in WRITES]


def test_held_and_unchanged_is_decided_with_reads_only(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "web", "127.20.0.0/24")
    first = allocate(sessions, "shop", ports=(80, 443))
    with statements(sessions) as seen:
        again = allocate(sessions, "shop", ports=(80, 443))
    assert again.ips == first.ips and again.reason is Reason.SATISFIED and not again.changed
    assert writes(seen) == [], seen
    reads = [s for s in seen if s != "BEGIN"]  # SQLite's BEGIN IMMEDIATE is a statement
    assert len(reads) == 1, f"steady state should be one read, saw {seen}"
    assert len(ledger(sessions)) == 1


def test_steady_state_notices_changed_ports(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "web", "127.20.0.0/24")
    first = allocate(sessions, "shop", ports=(80,))
    changed = allocate(sessions, "shop", ports=(80, 8443))
    assert changed.ips == first.ips and changed.changed
    with sessions() as s:
        ports = s.scalars(select(AllocationPort.port).order_by(AllocationPort.port)).all()
        assert ports == [80, 8443]
        assert s.scalars(select(Allocation.ports)).one() == [["TCP", 80], ["TCP", 8443]]


def test_steady_state_notices_a_requested_pool(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "web", "127.20.0.0/24")
    make_pool(sessions, "edge", "127.21.0.0/24")
    assert allocate(sessions, "shop", requested_pool="web").ips == ("127.20.0.0",)
    moved = allocate(sessions, "shop", requested_pool="edge")
    assert moved.changed and moved.ips == ("127.21.0.0",)
    assert [a for a, *_ in ledger(sessions)] == ["allocated", "reassigned", "reassigned"]


def test_steady_state_reports_a_failed_request_and_keeps_the_address(
    sessions: sessionmaker[Session],
) -> None:
    make_pool(sessions, "web", "127.20.0.0/24")
    first = allocate(sessions, "shop")
    with statements(sessions) as seen:
        bad = allocate(sessions, "shop", requested_pool="missing")
    assert bad.reason is Reason.NO_POOL and bad.ips == first.ips and not bad.changed
    assert writes(seen) == []


def test_steady_state_sees_a_sharing_key_that_no_longer_matches(
    sessions: sessionmaker[Session],
) -> None:
    make_pool(sessions, "web", "127.20.0.0/24")
    a = allocate(sessions, "dns-tcp", sharing_key="dns", ports=(53,))
    with transaction(sessions) as s:
        req = replace(svc_request("dns-udp", sharing_key="dns"), ports=frozenset({("UDP", 53)}))
        assert allocate_service(session=s, request=req, actor=ACTOR, policy=POLICY).ips == a.ips
    # dns-udp asks for another key while dns-tcp still holds the address under "dns".
    with transaction(sessions) as s:
        req = replace(svc_request("dns-udp", sharing_key="other"), ports=frozenset({("UDP", 53)}))
        out = allocate_service(session=s, request=req, actor=ACTOR, policy=POLICY)
    assert out.reason is Reason.ALREADY_ALLOCATED and out.ips == a.ips and not out.changed


def test_pool_cache_obeys_an_edit_committed_elsewhere(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "web", "127.20.0.0/29")
    assert allocate(sessions, "a").ips == ("127.20.0.0",)
    with sessions() as s, s.begin():
        specs, _ = cached_pool_specs(s)
        again, _ = cached_pool_specs(s)
        assert again is specs, "an unchanged stamp reuses the parsed specs"
    with transaction(sessions) as s:
        data = replace(fields_of(get_pool(session=s, name="web")), exclusions=["127.20.0.1"])
        update_pool(session=s, name="web", data=data, actor=ACTOR, policy=POLICY)
    assert allocate(sessions, "b").ips == ("127.20.0.2",), "the new exclusion is obeyed"
    with transaction(sessions) as s:
        data = replace(fields_of(get_pool(session=s, name="web")), disabled=True)
        update_pool(session=s, name="web", data=data, actor=ACTOR, policy=POLICY)
    assert allocate(sessions, "c").reason is Reason.NO_POOL, "a drained pool gives nothing new"
    assert allocate(sessions, "a").ips == ("127.20.0.0",), "and keeps what it gave"


def test_pool_cache_sees_a_pool_created_and_deleted(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "web", "127.20.0.0/30")
    allocate(sessions, "a")
    make_pool(sessions, "edge", "127.21.0.0/30")
    assert allocate(sessions, "b", requested_pool="edge").ips == ("127.21.0.0",)


def test_reservation_made_after_the_first_read_is_respected(
    sessions: sessionmaker[Session],
) -> None:
    make_pool(sessions, "web", "127.20.0.0/24")
    allocate(sessions, "a")
    with transaction(sessions) as s:
        pool = get_pool(session=s, name="web")
        s.add(
            Reservation(
                ip="127.20.0.1", ip_key="4:7f140001", pool_id=pool.id, family=4, owner="pipeline"
            )
        )
    assert allocate(sessions, "b").ips == ("127.20.0.2",)


def service_data(name: str) -> ServiceData:
    return ServiceData(namespace="default", name=name, uid=f"uid-default-{name}", ports=[])


def converge(sessions: sessionmaker[Session], name: str, status: tuple[str, ...] = ()) -> Any:
    with transaction(sessions) as s:
        return converge_service(
            session=s,
            data=service_data(name),
            request=svc_request(name),
            status_ips=status,
            actor=ACTOR,
            policy=POLICY,
        )


def test_converged_service_costs_three_reads_and_no_write(
    sessions: sessionmaker[Session],
) -> None:
    make_pool(sessions, "web", "127.20.0.0/24")
    first = converge(sessions, "shop")
    assert first.outcome.changed
    with statements(sessions) as seen:
        again = converge(sessions, "shop", status=first.outcome.ips)
    assert again.outcome.ips == first.outcome.ips and not again.outcome.changed
    assert writes(seen) == [], seen
    assert seen.count("SELECT") <= 3, seen
    with sessions() as s:
        rec = get_record(s, "default", "shop")
        assert rec is not None and rec.condition_reason == "Satisfied"
    assert count(sessions, Allocation) == 1


def test_a_new_services_record_is_one_insert_with_its_condition(
    sessions: sessionmaker[Session],
) -> None:
    """converge_service writes the record once, after the decision (Core, no ORM flush):
    no UPDATE for the condition, and a later change of the condition is one UPDATE."""
    make_pool(sessions, "web", "127.20.0.0/24")
    engine = sessions.kw["bind"]
    touched: list[str] = []

    def record(_c: Any, _cur: Any, statement: str, *_rest: Any) -> None:
        if "service_records" in statement:
            touched.append(statement.lstrip().split(None, 1)[0].upper())

    event.listen(engine, "before_cursor_execute", record)
    try:
        first = converge(sessions, "shop")
        assert first.outcome.reason is Reason.SATISFIED
        assert [s for s in touched if s in WRITES] == ["INSERT"], touched
        with sessions() as s:
            rec = get_record(s, "default", "shop")
            assert rec is not None
            assert (rec.condition_reason, rec.condition_message) == (
                "Satisfied",
                first.outcome.decision.message,
            )
            assert rec.uid == service_data("shop").uid
        touched.clear()
        converge(sessions, "shop", status=first.outcome.ips)
        assert [s for s in touched if s in WRITES] == [], touched
    finally:
        event.remove(engine, "before_cursor_execute", record)
