"""Engine and session factory. One engine per process and URL.

SQLite runs with WAL, foreign keys on, and ``BEGIN IMMEDIATE`` so concurrent writers queue on
the database lock instead of failing half-way; PostgreSQL runs at READ COMMITTED with the
unique constraints in ``models`` as the arbiter.

Reads that never write (a dashboard page, a GET) take ``read_only_factory(...)`` sessions: a
plain deferred ``BEGIN`` on SQLite, which takes no write lock (WAL readers neither wait for
writers nor hold them up); on PostgreSQL, autocommit statements on a pool of connections opened
with ``default_transaction_read_only = on``: no ``BEGIN``/``ROLLBACK`` round trips (at READ
COMMITTED each statement had its own snapshot inside a transaction too) and the server still
refuses any write. Such a session also refuses to flush changes, so a read path cannot write by
accident.

PostgreSQL connections are checked on checkout only when they sat idle in the pool for longer
than ``IDLE_PING_AFTER`` seconds (one ``SELECT 1``; a dead one is replaced transparently),
instead of ``pool_pre_ping``'s round trip on every checkout: a connection used moments ago is
alive unless the server was cut in between, which the first statement then reports (and the
pool is invalidated, as SQLAlchemy does on any disconnect error).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from threading import Lock
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, UOWTransaction, sessionmaker

from lbprovider.config import get_settings

READ_ONLY = "lbprovider_read_only"
"""Execution option of a read-only engine view (see ``read_only_factory``)."""


IDLE_PING_AFTER = 5.0
"""Seconds a pooled PostgreSQL connection may sit idle before its next checkout pings it."""

_IDLE_SINCE = "lbprovider_idle_since"
_idle_after: weakref.WeakKeyDictionary[Engine, float] = weakref.WeakKeyDictionary()


def make_engine(
    url: str, *, pool_size: int = 10, idle_ping_after: float = IDLE_PING_AFTER
) -> Engine:
    """A configured engine for ``url`` (sqlite:///... or postgresql+psycopg://...)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return _pg_engine(url, pool_size, idle_ping_after)


def _pg_engine(url: str, pool_size: int, idle_ping_after: float, **kwargs: Any) -> Engine:
    # LIFO: back-to-back units of work get the connection used last, whose backend has the
    # statements prepared and its caches warm, and which needs no idle ping. The default FIFO
    # rotated them over every pooled connection, so each had to warm up on its own: a
    # reconcile's transaction took 5-6 ms instead of 2.7 ms for its first ~25 runs after start
    # (bench/RESULTS.md, Controller Round 6). Connections beyond the ones in use stay idle.
    engine = create_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_use_lifo=True, **kwargs
    )
    event.listen(engine, "checkin", _mark_idle)
    event.listen(engine, "checkout", _ping_if_idle(idle_ping_after))
    _idle_after[engine] = idle_ping_after
    return engine


def _mark_idle(_dbapi_conn: Any, record: Any) -> None:
    if record is not None:
        record.info[_IDLE_SINCE] = time.monotonic()


def _ping_if_idle(after: float) -> Any:
    def checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since < after:
            return  # fresh from connect, or used moments ago
        try:
            cur = dbapi_conn.cursor()
            try:
                cur.execute("SELECT 1")
            finally:
                cur.close()
            if not dbapi_conn.autocommit:
                dbapi_conn.rollback()  # the ping began a transaction: leave none behind
        except Exception as e:  # any failure: the pool drops it and connects anew
            raise DisconnectionError(f"idle connection failed its ping: {e}") from e

    return checkout


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _sqlite_on_begin)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_on_begin(conn: Any) -> None:
    # A write takes the lock up front (no deadlock on a later upgrade); a read needs none.
    read_only = conn.get_execution_options().get(READ_ONLY, False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


@lru_cache(maxsize=8)
def get_engine(url: str | None = None) -> Engine:
    settings = get_settings()
    return make_engine(url or settings.database_url, pool_size=settings.db_pool_size)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception."""
    with factory() as session, session.begin():
        yield session


@contextmanager
def connection_transaction(factory: sessionmaker[Session]) -> Iterator[Connection]:
    """``transaction`` without the ORM: one unit of work on a pooled Core connection of
    ``factory``'s engine (``Engine.begin``), committed on success, rolled back on any exception.

    The same transaction as ``transaction``'s (same pool, checkout ping, ``BEGIN IMMEDIATE`` on
    SQLite, engine and connection listeners, error wrapping, a disconnect invalidating the
    connection), minus what only an ORM ``Session`` does: its begin, commit and close cost about
    as much client CPU as the rest of a short transaction together. For callers that write
    through Core statements (the allocation path: ``services.allocations.allocate_service``
    takes either); ``session_on(conn)`` gives an ORM session inside it where one is needed."""
    engine = factory.kw["bind"]
    with engine.begin() as conn:
        yield conn


Unit = Session | Connection
"""What a unit of work runs on: an ORM session (``transaction``) or a Core connection in its
transaction (``connection_transaction``)."""


def connection_of(unit: Unit) -> Connection:
    """The connection (in its transaction) ``unit`` runs on."""
    return unit if isinstance(unit, Connection) else unit.connection()


def engine_of(unit: Unit) -> Engine:
    """The engine ``unit``'s connections come from."""
    if isinstance(unit, Connection):
        return unit.engine
    bind = unit.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


def is_postgresql(unit: Unit) -> bool:
    """Whether ``unit`` runs on PostgreSQL (else SQLite)."""
    bind = unit if isinstance(unit, Connection) else unit.get_bind()
    return bind.dialect.name == "postgresql"


def session_on(conn: Connection) -> Session:
    """An ORM session joined to ``conn``'s transaction: its flushes and savepoints run in it,
    and it never commits or ends it (``conn``'s owner does). Close it when done."""
    return Session(bind=conn, expire_on_commit=False)


class ReadOnlyViolation(RuntimeError):
    """A read-only session was asked to write: a programming error, never a user's."""


class ReadOnlySession(Session):
    """A session of ``read_only_factory``: flushing a change raises ``ReadOnlyViolation``."""


@event.listens_for(ReadOnlySession, "before_flush")
def _refuse_flush(session: Session, _flush: UOWTransaction, _instances: Any) -> None:
    raise ReadOnlyViolation("this session only reads; write in transaction(...) instead")


_read_engines: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()
_read_engines_lock = Lock()


def read_only_engine(engine: Engine) -> Engine:
    """An engine for reads only, like ``engine``: on SQLite ``engine``'s pool with a deferred
    ``BEGIN``; on PostgreSQL a pool of its own (made once per engine, disposed with it) of
    autocommit connections opened with ``default_transaction_read_only = on``."""
    if engine.dialect.name != "postgresql":
        return engine.execution_options(**{READ_ONLY: True})
    with _read_engines_lock:
        reads = _read_engines.get(engine)
        if reads is None:
            reads = _pg_read_engine(engine)
            _read_engines[engine] = reads
            event.listen(engine, "engine_disposed", lambda _e: reads.dispose())
    return reads


def _pg_read_engine(engine: Engine) -> Engine:
    size = engine.pool.size()  # type: ignore[attr-defined]
    reads = _pg_engine(
        engine.url.render_as_string(hide_password=False),
        size,
        _idle_after.get(engine, IDLE_PING_AFTER),
        isolation_level="AUTOCOMMIT",
        connect_args={"options": "-c default_transaction_read_only=on"},
    )
    return reads.execution_options(**{READ_ONLY: True})


def read_only_factory(factory: sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions like ``factory``'s for reads only: deferred ``BEGIN`` on SQLite (same pool),
    read-only autocommit connections on PostgreSQL (see ``read_only_engine``), no flush. Make
    it once, next to ``factory``."""
    options = {k: v for k, v in factory.kw.items() if k != "bind"}
    return sessionmaker(read_only_engine(factory.kw["bind"]), class_=ReadOnlySession, **options)


@contextmanager
def read_transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One read: a session of ``factory`` (a ``read_only_factory``) whose transaction ends with
    a rollback (nothing to keep), also on success."""
    with factory() as session:
        yield session
