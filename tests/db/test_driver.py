"""``db.driver``: statements on the psycopg cursor behave, to their callers, like SQLAlchemy's.

Named-tuple rows, the session's own transaction, listeners that still see the statement, and
driver errors surfacing as SQLAlchemy's exceptions (a disconnect invalidating the connection)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import IntegrityError, OperationalError

from lbprovider.db.driver import DriverStatement, fetch_all
from lbprovider.db.session import (
    connection_of,
    connection_transaction,
    session_factory,
    transaction,
)

pytestmark = pytest.mark.postgres


@pytest.fixture(params=["session", "connection"])
def unit(request: pytest.FixtureRequest) -> Any:
    """The unit of work a statement runs in: an ORM session or a Core connection."""
    return transaction if request.param == "session" else connection_transaction


INSERT = DriverStatement(
    text("INSERT INTO driver_t (k, v) VALUES (:k, :v) RETURNING k, v, txid_current() AS tx")
)


@pytest.fixture
def table(pg_engine: Engine) -> Engine:
    with pg_engine.begin() as c:
        c.execute(text("DROP TABLE IF EXISTS driver_t"))
        c.execute(text("CREATE TABLE driver_t (k int PRIMARY KEY, v text)"))
    return pg_engine


def test_rows_are_named_tuples_and_run_in_the_sessions_transaction(
    table: Engine, unit: Any
) -> None:
    sessions = session_factory(table)
    with pytest.raises(RuntimeError), unit(sessions) as s:
        (row,) = fetch_all(s, INSERT, {"k": 1, "v": "one"})
        assert (row.k, row.v) == (1, "one")
        assert connection_of(s).execute(text("SELECT txid_current()")).scalar() == row.tx
        raise RuntimeError("roll back")
    with sessions() as t:
        assert t.execute(text("SELECT count(*) FROM driver_t")).scalar() == 0


def test_listeners_see_the_statement(table: Engine, unit: Any) -> None:
    seen: list[str] = []

    def before(_c: Any, _cur: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement)

    event.listen(table, "before_cursor_execute", before)
    try:
        with unit(session_factory(table)) as s:
            fetch_all(s, INSERT, {"k": 1, "v": "one"})
    finally:
        event.remove(table, "before_cursor_execute", before)
    assert seen == [INSERT.sql] and "%(k)s" in INSERT.sql


def test_one_cursor_serves_a_connection(table: Engine, unit: Any) -> None:
    """Kept with the pooled connection (warm dumper and loader caches), not made per call."""
    cursors: list[object] = []

    def before(_c: Any, cur: Any, statement: str, *_rest: Any) -> None:
        if statement == INSERT.sql:
            cursors.append(cur)

    sessions = session_factory(table)
    event.listen(table, "before_cursor_execute", before)
    try:
        with unit(sessions) as s:
            fetch_all(s, INSERT, {"k": 1, "v": "one"})
            fetch_all(s, INSERT, {"k": 2, "v": "two"})
    finally:
        event.remove(table, "before_cursor_execute", before)
    assert len(cursors) == 2 and cursors[0] is cursors[1]


def test_a_constraint_violation_is_sqlalchemys_integrity_error(table: Engine, unit: Any) -> None:
    sessions = session_factory(table)
    with pytest.raises(IntegrityError), unit(sessions) as s:
        fetch_all(s, INSERT, {"k": 1, "v": "one"})
        fetch_all(s, INSERT, {"k": 1, "v": "again"})
    with unit(sessions) as s:  # the pool's connection is fine afterwards
        assert fetch_all(s, INSERT, {"k": 2, "v": "two"})[0].k == 2


def test_a_killed_connection_is_invalidated(table: Engine, unit: Any) -> None:
    sessions = session_factory(table)
    with pytest.raises(OperationalError) as caught, unit(sessions) as s:
        pid = connection_of(s).execute(text("SELECT pg_backend_pid()")).scalar()
        with table.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        fetch_all(s, INSERT, {"k": 1, "v": "one"})
    assert caught.value.connection_invalidated
    with unit(sessions) as s:
        assert fetch_all(s, INSERT, {"k": 3, "v": "three"})[0].k == 3
