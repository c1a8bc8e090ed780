"""Allocation on a Core connection (``db.session.connection_transaction``), no ORM session.

The allocation path takes either unit of work. The tests of ``test_allocations``,
``test_steady_state`` and ``test_claim_path`` run here again with ``helpers.allocate`` on a
connection (sticky addresses, the hold, sharing, moves, refreshes, the three-statement claim);
the tests below check what only this unit does: no ORM session on the hot path, a session
joined to the connection for savepoint writes, and one transaction either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.models import Allocation, AllocationPort, IPLease, LedgerEntry
from lbprovider.db.session import connection_transaction, session_factory, transaction
from lbprovider.ipam.allocator import Reason
from lbprovider.services.allocations import allocate_service, release_service
from tests.services import helpers
from tests.services.helpers import ACTOR, POLICY, allocate, count, ledger, make_pool, svc_request
from tests.services.test_allocations import *  # noqa: F403  (run again, on a connection)
from tests.services.test_claim_path import *  # noqa: F403
from tests.services.test_steady_state import *  # noqa: F403


@pytest.fixture(autouse=True)
def on_a_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(helpers, "UNIT", [connection_transaction])


@pytest.fixture
def orm_sessions(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Session]]:
    """Every ORM session created while the test runs."""
    made: list[Session] = []
    init = Session.__init__

    def counting(self: Session, *args: Any, **kw: Any) -> None:
        made.append(self)
        init(self, *args, **kw)

    monkeypatch.setattr(Session, "__init__", counting)
    yield made


def _statements(engine: Engine) -> tuple[list[str], Any]:
    seen: list[str] = []

    def record(_c: Any, _cur: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement.lstrip().split(None, 1)[0].upper())

    event.listen(engine, "before_cursor_execute", record)
    return seen, record


@pytest.mark.postgres
def test_a_new_service_on_postgresql_needs_no_orm_session(
    pg_engine: Engine, orm_sessions: list[Session]
) -> None:
    from tests.conftest import _truncate

    _truncate(pg_engine)
    sessions = session_factory(pg_engine)
    make_pool(sessions, "web", "127.20.0.0/24")
    allocate(sessions, "warm")  # pool specs cached from here on
    orm_sessions.clear()
    out = allocate(sessions, "shop", ports=(80, 443))
    assert out.reason is Reason.SATISFIED and out.changed and out.ips == ("127.20.0.1",)
    assert orm_sessions == []
    assert count(sessions, AllocationPort) == 3 and count(sessions, LedgerEntry) == 2
    _truncate(pg_engine)


def test_a_savepoint_write_uses_a_session_joined_to_the_connection(
    sessions: sessionmaker[Session], orm_sessions: list[Session]
) -> None:
    """Joining a shared address goes through the savepoint path: on a connection, with an ORM
    session made on it for that write, closed afterwards, committed by the connection."""
    make_pool(sessions, "web", "127.20.0.0/30")
    a = allocate(sessions, "dns-tcp", sharing_key="dns", ports=(53,))
    orm_sessions.clear()
    req = replace(svc_request("dns-udp", sharing_key="dns"), ports=frozenset({("UDP", 53)}))
    with connection_transaction(sessions) as conn:
        b = allocate_service(session=conn, request=req, actor=ACTOR, policy=POLICY)
        assert conn.in_transaction()
        made = [s for s in orm_sessions if s.bind is conn]
        assert len(made) == 1 and not made[0].in_transaction(), "joined, then closed"
    assert a.ips == b.ips and b.changed
    assert [action for action, *_ in ledger(sessions, service_name="dns-udp")] == ["allocated"]
    assert count(sessions, IPLease) == 1 and count(sessions, AllocationPort) == 2


@pytest.mark.parametrize("path", ["clean claim", "savepoint"])
def test_an_error_after_the_allocation_rolls_all_of_it_back(
    sessions: sessionmaker[Session], path: str
) -> None:
    make_pool(sessions, "web", "127.20.0.0/30")
    if path == "savepoint":
        allocate(sessions, "dns-tcp", sharing_key="dns", ports=(53,))
    before = (count(sessions, Allocation), count(sessions, LedgerEntry))
    req = replace(svc_request("shop", sharing_key="dns"), ports=frozenset({("UDP", 53)}))
    with pytest.raises(RuntimeError), connection_transaction(sessions) as conn:
        out = allocate_service(session=conn, request=req, actor=ACTOR, policy=POLICY)
        assert out.changed
        raise RuntimeError("the caller failed after allocating")
    assert (count(sessions, Allocation), count(sessions, LedgerEntry)) == before
    assert allocate(sessions, "shop").changed, "nothing was left behind"


def test_a_steady_service_on_a_connection_writes_nothing(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "web", "127.20.0.0/30")
    first = allocate(sessions, "shop")
    engine = sessions.kw["bind"]
    seen, record = _statements(engine)
    try:
        again = allocate(sessions, "shop")
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert again.ips == first.ips and not again.changed
    assert not [s for s in seen if s in ("INSERT", "UPDATE", "DELETE", "SAVEPOINT")], seen


def test_release_and_sticky_reallocation_across_units(sessions: sessionmaker[Session]) -> None:
    """A release in an ORM transaction, the same Service back on a connection: the same IP."""
    make_pool(sessions, "web", "127.20.0.0/24")
    ip = allocate(sessions, "shop").ips
    with transaction(sessions) as s:
        release_service(session=s, namespace="default", name="shop", actor=ACTOR, reason="gone")
    assert allocate(sessions, "newcomer").ips != ip
    assert allocate(sessions, "shop").ips == ip
