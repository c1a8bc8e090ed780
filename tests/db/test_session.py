"""Sessions: writes queue on SQLite's lock (``BEGIN IMMEDIATE``), reads take no lock and cannot
write, on both databases; the public names keep working."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.exc import DBAPIError

from lbprovider.db.models import Base, Pool
from lbprovider.db.session import (
    ReadOnlyViolation,
    connection_transaction,
    engine_of,
    is_postgresql,
    make_engine,
    read_only_engine,
    read_only_factory,
    read_transaction,
    session_factory,
    session_on,
    transaction,
)


def add_pool(engine: Engine, name: str) -> None:
    with transaction(session_factory(engine)) as session:
        session.add(Pool(name=name, ranges=["10.0.0.0/30"]))


def pool_names(engine: Engine) -> list[str]:
    with read_transaction(read_only_factory(session_factory(engine))) as session:
        return list(session.scalars(select(Pool.name).order_by(Pool.name)))


def test_a_read_sees_what_writes_committed(engine: Engine) -> None:
    add_pool(engine, "a")
    add_pool(engine, "b")
    assert pool_names(engine) == ["a", "b"]


def test_a_read_session_refuses_to_flush_a_change(engine: Engine) -> None:
    reads = read_only_factory(session_factory(engine))
    with read_transaction(reads) as session:
        session.add(Pool(name="sneaky", ranges=["10.0.0.0/30"]))
        with pytest.raises(ReadOnlyViolation):
            session.flush()
    assert pool_names(engine) == []


@pytest.mark.postgres
def test_a_read_transaction_is_read_only_on_postgresql(pg_engine: Engine) -> None:
    """Even SQL that bypasses the ORM cannot write inside a read on PostgreSQL."""
    reads = read_only_factory(session_factory(pg_engine))
    with read_transaction(reads) as session, pytest.raises(DBAPIError, match="read-only"):
        session.execute(insert(Pool).values(name="sneaky", ranges=["10.0.0.0/30"]))
    # The pooled connection is a normal read-write one again for the next writer.
    with transaction(session_factory(pg_engine)) as session:
        assert session.scalar(text("SHOW transaction_read_only")) == "off"


def test_a_sqlite_read_holds_no_write_lock(tmp_path: Path) -> None:
    """A page read in progress neither waits for nor blocks a writer (WAL + deferred BEGIN)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    Base.metadata.create_all(engine)
    add_pool(engine, "before")
    try:
        reads = read_only_factory(session_factory(engine))
        with read_transaction(reads) as reader:
            assert list(reader.scalars(select(Pool.name))) == ["before"]
            started = time.monotonic()
            add_pool(engine, "during")  # would wait 30 s behind a BEGIN IMMEDIATE reader
            assert time.monotonic() - started < 5
            # The read keeps its snapshot until it ends.
            assert list(reader.scalars(select(Pool.name))) == ["before"]
        assert pool_names(engine) == ["before", "during"]
    finally:
        engine.dispose()


def test_sqlite_writers_still_queue_on_the_lock(tmp_path: Path) -> None:
    """``transaction`` takes SQLite's write lock at BEGIN: a second writer waits for the first
    to commit instead of failing half-way."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    Base.metadata.create_all(engine)
    sessions = session_factory(engine)
    second_done = threading.Event()

    def second_writer() -> None:
        add_pool(engine, "second")
        second_done.set()

    try:
        with transaction(sessions) as first:
            first.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: the lock is taken here
            thread = threading.Thread(target=second_writer)
            thread.start()
            assert not second_done.wait(0.5)
            first.add(Pool(name="first", ranges=["10.0.0.0/30"]))
        assert second_done.wait(10)
        thread.join(10)
        assert pool_names(engine) == ["first", "second"]
    finally:
        engine.dispose()


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        pid = conn.scalar(text("SELECT pg_backend_pid()"))
        assert isinstance(pid, int)
        return pid


def _terminate(admin: Engine, pid: int) -> None:
    with admin.connect() as conn:
        assert conn.scalar(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        deadline = time.monotonic() + 10
        while conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}):
            assert time.monotonic() < deadline, "backend did not exit"
            conn.rollback()
            time.sleep(0.02)


@pytest.mark.postgres
@pytest.mark.parametrize("reads", [False, True], ids=["writes", "reads"])
def test_an_idle_connection_killed_server_side_is_replaced_on_checkout(
    pg_url: str, pg_engine: Engine, reads: bool
) -> None:
    """A pooled connection the server dropped while it sat idle is pinged on its next checkout
    and replaced: the caller never sees the dead one (also on the read-only pool)."""
    engine = make_engine(pg_url, pool_size=1, idle_ping_after=0.2)
    used = read_only_engine(engine) if reads else engine
    try:
        first = _backend_pid(used)
        _terminate(pg_engine, first)
        time.sleep(0.3)
        assert _backend_pid(used) != first
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("reads", [False, True], ids=["writes", "reads"])
def test_back_to_back_units_of_work_reuse_the_last_connection(pg_url: str, reads: bool) -> None:
    """With several idle connections in the pool, the next unit of work gets the one used
    last (its backend warm, no idle ping), not the one idle longest (also on the read pool)."""
    engine = make_engine(pg_url, pool_size=3, idle_ping_after=60)
    used = read_only_engine(engine) if reads else engine
    try:
        held = [used.connect() for _ in range(3)]  # three connections, checked in in order
        pids = [c.exec_driver_sql("SELECT pg_backend_pid()").scalar() for c in held]
        for c in held:
            c.close()
        assert [_backend_pid(used) for _ in range(3)] == [pids[-1]] * 3
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_connection_used_moments_ago_is_not_pinged(pg_url: str, pg_engine: Engine) -> None:
    """No ping round trip on a busy connection: a server-side kill right after use surfaces
    once as a disconnect error on the next statement, and the pool reconnects after it."""
    engine = make_engine(pg_url, pool_size=1, idle_ping_after=60)
    try:
        first = _backend_pid(engine)
        _terminate(pg_engine, first)
        with pytest.raises(DBAPIError) as caught:
            _backend_pid(engine)
        assert caught.value.connection_invalidated
        assert _backend_pid(engine) != first
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_postgresql_read_runs_without_a_transaction_and_stays_read_only(
    pg_engine: Engine,
) -> None:
    """Reads on PostgreSQL run as autocommit statements (no BEGIN/ROLLBACK round trips): each
    statement is its own transaction, and the server still refuses writes on that pool."""
    reads = read_only_factory(session_factory(pg_engine))
    with read_transaction(reads) as session:
        session.execute(text("SELECT 1"))
        time.sleep(0.01)
        # Inside a transaction the second statement would start after the transaction did.
        assert session.scalar(text("SELECT transaction_timestamp() = statement_timestamp()"))
        assert session.scalar(text("SHOW transaction_read_only")) == "on"
        with pytest.raises(DBAPIError, match="read-only"):
            session.execute(text("CREATE TABLE sneaky (id int)"))
    assert read_only_engine(pg_engine) is read_only_engine(pg_engine)


def test_a_connection_transaction_commits_or_rolls_back_as_a_whole(engine: Engine) -> None:
    sessions = session_factory(engine)
    with connection_transaction(sessions) as conn:
        assert conn.in_transaction() and engine_of(conn) is engine
        assert is_postgresql(conn) == (engine.dialect.name == "postgresql")
        conn.execute(insert(Pool), {"name": "kept", "ranges": ["10.0.0.0/30"]})
    with pytest.raises(RuntimeError), connection_transaction(sessions) as conn:
        conn.execute(insert(Pool), {"name": "core", "ranges": ["10.0.0.4/30"]})
        with session_on(conn) as orm:  # an ORM write joined to the same transaction
            orm.add(Pool(name="orm", ranges=["10.0.0.8/30"]))
            orm.flush()
        assert conn.in_transaction()
        raise RuntimeError("roll back both")
    assert pool_names(engine) == ["kept"]


def test_sqlite_connection_transactions_queue_on_the_lock_too(tmp_path: Path) -> None:
    """``connection_transaction`` begins as ``transaction`` does (``BEGIN IMMEDIATE``)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    Base.metadata.create_all(engine)
    sessions = session_factory(engine)
    second_done = threading.Event()

    def second_writer() -> None:
        with connection_transaction(sessions) as conn:
            conn.execute(insert(Pool), {"name": "second", "ranges": ["10.0.0.4/30"]})
        second_done.set()

    try:
        with connection_transaction(sessions) as first:
            first.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: the lock is taken here
            thread = threading.Thread(target=second_writer)
            thread.start()
            assert not second_done.wait(0.5)
            first.execute(insert(Pool), {"name": "first", "ranges": ["10.0.0.0/30"]})
        assert second_done.wait(10)
        thread.join(10)
        assert pool_names(engine) == ["first", "second"]
    finally:
        engine.dispose()
