"""The PostgreSQL claim path under contention: few round trips, and a lost race writes nothing.

A new Service's address costs two statements: the prelude (holdings, pool stamp, hints,
high-water marks) and the scan that locks the first free candidate and claims it
(``state.SCAN_CLAIM_PG``); when the scan may not claim (a later attempt, IPv6, an earlier
candidate the allocator might take), a separate claim follows (three statements). Each test
here fails if one of those steps falls back to per-candidate round trips, needs a savepoint, or
could leave half a claim behind.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, delete, event, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.models import (
    Allocation,
    AllocationPort,
    IPLease,
    LedgerEntry,
    Pool,
    Reservation,
)
from lbprovider.db.session import session_factory, transaction
from lbprovider.db.types import utcnow
from lbprovider.ipam.allocator import Reason
from lbprovider.services import allocations
from lbprovider.services.allocations import allocate_service
from tests.services.helpers import (
    ACTOR,
    POLICY,
    allocate,
    count,
    make_pool,
    statements,
    svc_request,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg(pg_engine: Engine) -> Iterator[sessionmaker[Session]]:
    from tests.conftest import _truncate

    _truncate(pg_engine)
    yield session_factory(pg_engine)
    _truncate(pg_engine)


def test_a_new_service_costs_two_statements_and_no_savepoint(
    pg: sessionmaker[Session],
) -> None:
    make_pool(pg, "web", "127.20.0.0/24")
    allocate(pg, "warm")  # the pool specs are cached from here on
    with statements(pg) as seen:
        out = allocate(pg, "shop", ports=(80, 443))
    assert out.reason is Reason.SATISFIED and out.ips == ("127.20.0.1",) and out.changed
    assert len(seen) == 2, seen
    assert not [s for s in seen if "SAVEPOINT" in s.upper()]
    assert count(pg, AllocationPort) == 3 and count(pg, IPLease) == 2
    assert count(pg, LedgerEntry) == 2


def test_the_scan_steps_over_an_address_another_writer_holds(pg: sessionmaker[Session]) -> None:
    make_pool(pg, "web", "127.20.0.0/24")
    allocate(pg, "warm")
    engine = pg.kw["bind"]
    with engine.connect() as other:
        other.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended('127.20.0.1', 0))")
        )  # a concurrent allocator deciding on the next address
        with statements(pg) as seen:
            out = allocate(pg, "shop")
        other.rollback()
    assert out.ips == ("127.20.0.2",)
    assert len(seen) == 2, "skipping a locked candidate costs no extra round trip"
    assert allocate(pg, "later").ips == ("127.20.0.3",), "order continues after the high water"


def _plan_for(session: Session, name: str) -> Any:
    request = svc_request(name)
    plan = allocations._decide(session, request, POLICY, utcnow(), 1, random.Random(), False, None)
    assert not isinstance(plan, allocations.Outcome)
    claim = allocations._single_clean_claim(session, plan, False)
    assert claim is not None, "a new Service's free address takes the one-statement claim"
    return plan, claim


def test_a_claim_whose_address_was_taken_meanwhile_writes_nothing(
    pg: sessionmaker[Session],
) -> None:
    """What a commit between the scan's snapshot and its lock looks like to the claim."""
    make_pool(pg, "web", "127.20.0.0/24")
    with transaction(pg) as s:
        plan, claim = _plan_for(s, "shop")
        with pg() as other, other.begin():  # committed by a writer we raced
            other.add(Reservation(ip=claim.ip, ip_key="x", pool_id=1, family=4, owner="ops"))
        with pytest.raises(allocations._LostRace):
            allocations._claim_clean(s, plan, claim, ACTOR, utcnow(), "test")
        assert s.scalar(select(func.count()).select_from(Allocation)) == 0
        assert s.scalar(select(func.count()).select_from(LedgerEntry)) == 0
    # the transaction stayed usable, and deciding again gives the next free address
    assert allocate(pg, "shop").ips == ("127.20.0.1",)
    assert count(pg, IPLease) == 1 and count(pg, AllocationPort) == 1


def test_a_claim_into_a_pool_deleted_meanwhile_writes_nothing(pg: sessionmaker[Session]) -> None:
    make_pool(pg, "web", "127.20.0.0/24")
    with transaction(pg) as s:
        plan, claim = _plan_for(s, "shop")
        with pg() as other, other.begin():
            other.execute(delete(Pool))
        with pytest.raises(allocations._LostRace):
            allocations._claim_clean(s, plan, claim, ACTOR, utcnow(), "test")
        retry = allocate_service(session=s, request=svc_request("shop"), actor=ACTOR, policy=POLICY)
        assert retry.reason is Reason.NO_POOL
    assert count(pg, Allocation) == 0 and count(pg, LedgerEntry) == 0


def test_the_hot_statements_skip_sqlalchemys_execute_layer(pg: sessionmaker[Session]) -> None:
    """Prelude, scan and claim run on the psycopg cursor (``db.driver``): SQLAlchemy's
    ``Connection.execute`` (statement compilation, result metadata) sees none of them."""
    make_pool(pg, "web", "127.20.0.0/24")
    allocate(pg, "warm")
    engine = pg.kw["bind"]
    executed: list[object] = []

    def record(_c: Any, clause: object, *_rest: Any) -> None:
        executed.append(clause)

    event.listen(engine, "before_execute", record)
    try:
        with statements(pg) as seen:
            out = allocate(pg, "shop")
    finally:
        event.remove(engine, "before_execute", record)
    assert out.changed and len(seen) == 2, seen
    assert executed == [], executed


def test_hints_read_on_the_driver_path_are_in_utc(pg: sessionmaker[Session]) -> None:
    from datetime import UTC

    from lbprovider.services.allocations import release_service
    from lbprovider.services.state import load_holdings

    make_pool(pg, "web", "127.20.0.0/24")
    allocate(pg, "shop")
    with transaction(pg) as s:
        release_service(session=s, namespace="default", name="shop", actor=ACTOR, reason="t")
    with transaction(pg) as s:
        hints = load_holdings(s, "default", "shop", utcnow()).hints
    assert hints is not None
    ip, at = hints.sticky[4]
    assert ip == "127.20.0.0" and at.tzinfo is UTC


def test_the_hot_statements_take_no_array_parameters(pg: sessionmaker[Session]) -> None:
    """Candidates and ports travel as one string each (split by the server): dumping Python
    lists as arrays cost the client more than every other parameter together."""
    make_pool(pg, "web", "127.20.0.0/24")
    allocate(pg, "warm")
    engine = pg.kw["bind"]
    params: list[dict[str, Any]] = []

    def record(_c: Any, _cur: Any, _statement: str, parameters: Any, *_rest: Any) -> None:
        params.append(dict(parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        out = allocate(pg, "shop", ports=(80, 443))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert out.changed and len(params) == 2
    arrays = [(k, v) for p in params for k, v in p.items() if isinstance(v, list | tuple)]
    assert arrays == []
    with pg() as s:
        ports = s.execute(
            select(AllocationPort.protocol, AllocationPort.port)
            .where(AllocationPort.ip == out.ips[0])
            .order_by(AllocationPort.port)
        ).all()
    assert [tuple(p) for p in ports] == [("TCP", 80), ("TCP", 443)]


def test_the_scans_generic_plan_uses_the_address_indexes(pg: sessionmaker[Session]) -> None:
    """With the tables (nearly) empty and never analysed, as in a fresh database, the plan
    psycopg's prepared scan settles on reaches every table by its address index: a sequential
    scan there was kept, once cached, until autovacuum analysed the table, and read the whole
    allocations table for every scan meanwhile."""
    from lbprovider.services.state import SCAN_PG

    sql = SCAN_PG.sql.replace("%(ips)s", "$1::text").replace("%(now)s", "$2::timestamptz")
    engine = pg.kw["bind"]
    with engine.connect() as c:
        c.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        c.exec_driver_sql("PREPARE scan_plan AS " + sql)
        plan = "\n".join(
            row[0]
            for row in c.exec_driver_sql(
                "EXPLAIN EXECUTE scan_plan('127.20.0.1,127.20.0.2', now())"
            )
        )
        c.exec_driver_sql("DEALLOCATE scan_plan")
        c.rollback()
    for table in ("allocations", "reservations", "released_ips"):
        assert f"Seq Scan on {table}" not in plan, plan


def test_the_scan_claim_steps_over_an_address_reserved_for_someone_else(
    pg: sessionmaker[Session],
) -> None:
    """A candidate the allocator refuses (reserved by an operator) does not stop the scan from
    claiming the next one: still two statements."""
    from lbprovider.services.reservations import create_reservation

    make_pool(pg, "web", "127.20.0.0/24")
    allocate(pg, "warm")
    with transaction(pg) as s:
        r = create_reservation(
            session=s, pool_name="web", owner="ops", actor=ACTOR, policy=POLICY, ip="127.20.0.1"
        )
        assert r.ip == "127.20.0.1"
    with statements(pg) as seen:
        out = allocate(pg, "shop")
    assert out.ips == ("127.20.0.2",) and len(seen) == 2, seen


def test_an_ipv6_service_claims_in_a_statement_of_its_own(
    pg: sessionmaker[Session],
) -> None:
    make_pool(pg, "v6", "fd00::/120")
    allocate(pg, "warm", families=(6,))
    with statements(pg) as seen:
        out = allocate(pg, "shop", families=(6,))
    assert out.ips == ("fd00::1",) and len(seen) == 3, seen


def test_the_lock_sees_what_was_committed_after_the_statement_began(
    pg: sessionmaker[Session],
) -> None:
    """``lbp_lock_if_free`` (the scan claim's lock) checks the address in a snapshot of its
    own: a reservation committed while the statement ran, invisible to the statement's own
    snapshot, still makes the address not free."""
    import threading
    import time

    make_pool(pg, "web", "127.20.0.0/24")
    engine = pg.kw["bind"]
    probe = text(
        "SELECT (SELECT count(*) FROM reservations WHERE ip = :ip) AS before, "
        "pg_sleep(:pause) IS NULL AS slept, lbp_lock_if_free(:ip, now()) AS free"
    )
    with engine.connect() as c:
        assert c.execute(probe, {"ip": "127.20.0.8", "pause": 0}).one()[2] is True
        c.rollback()
    result: list[Any] = []

    def run() -> None:
        with engine.connect() as c:
            result.append(c.execute(probe, {"ip": "127.20.0.9", "pause": 1.0}).one())
            c.rollback()

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.3)
    with pg() as other, other.begin():
        other.add(Reservation(ip="127.20.0.9", ip_key="x", pool_id=1, family=4, owner="ops"))
    thread.join(10)
    before, _slept, free = result[0]
    assert before == 0, "the statement's own snapshot predates the reservation"
    assert free is False


def test_the_scan_claims_generic_plan_uses_the_address_indexes(pg: sessionmaker[Session]) -> None:
    """The same for ``SCAN_CLAIM_PG`` (the scan that claims), whose occupancy reads are the
    scan's."""
    import re

    from lbprovider.services.state import SCAN_CLAIM_PG

    names: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    sql = re.sub(r"%\((\w+)\)s", number, SCAN_CLAIM_PG.sql)
    values = {
        "ips": "'127.20.0.1,127.20.0.2'",
        "now": "now()",
        "at": "now()",
        "pool_id": "1",
        "ports": "'[]'",
        "reason": "NULL",
        "key": "NULL",
    }
    args = ", ".join(values.get(n, "'x'") for n in names)
    engine = pg.kw["bind"]
    with engine.connect() as c:
        c.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        c.exec_driver_sql("PREPARE scan_claim_plan AS " + sql)
        plan = "\n".join(
            row[0] for row in c.exec_driver_sql(f"EXPLAIN EXECUTE scan_claim_plan({args})")
        )
        c.exec_driver_sql("DEALLOCATE scan_claim_plan")
        c.rollback()
    for table in ("allocations", "reservations", "released_ips"):
        assert f"Seq Scan on {table}" not in plan, plan
