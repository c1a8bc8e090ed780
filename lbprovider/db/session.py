"""Engine and session factory. One engine per process and URL.

SQLite runs with WAL, foreign keys on, and ``BEGIN IMMEDIATE`` so concurrent writers queue on
the database lock instead of failing half-way; PostgreSQL runs at READ COMMITTED with the
unique constraints in ``models`` as the arbiter.

Reads that never write (a dashboard page, a GET) take ``read_only_factory(...)`` sessions: a
plain deferred ``BEGIN`` on SQLite, which takes no write lock (WAL readers neither wait for
writers nor hold them up), and ``READ ONLY`` transactions on PostgreSQL. Such a session refuses
to flush changes, so a read path cannot write by accident.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, UOWTransaction, sessionmaker

from lbprovider.config import get_settings

READ_ONLY = "lbprovider_read_only"
"""Execution option of a read-only engine view (see ``read_only_factory``)."""


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """A configured engine for ``url`` (sqlite:///... or postgresql+psycopg://...)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


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


class ReadOnlyViolation(RuntimeError):
    """A read-only session was asked to write: a programming error, never a user's."""


class ReadOnlySession(Session):
    """A session of ``read_only_factory``: flushing a change raises ``ReadOnlyViolation``."""


@event.listens_for(ReadOnlySession, "before_flush")
def _refuse_flush(session: Session, _flush: UOWTransaction, _instances: Any) -> None:
    raise ReadOnlyViolation("this session only reads; write in transaction(...) instead")


def read_only_engine(engine: Engine) -> Engine:
    """``engine``'s pool and settings, with transactions that only read."""
    options: dict[str, Any] = {READ_ONLY: True}
    if engine.dialect.name == "postgresql":
        options["postgresql_readonly"] = True
    return engine.execution_options(**options)


def read_only_factory(factory: sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions like ``factory``'s (same engine and pool) for reads only: deferred ``BEGIN`` on
    SQLite, ``READ ONLY`` on PostgreSQL, no flush. Make it once, next to ``factory``."""
    options = {k: v for k, v in factory.kw.items() if k != "bind"}
    return sessionmaker(read_only_engine(factory.kw["bind"]), class_=ReadOnlySession, **options)


@contextmanager
def read_transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One read: a session of ``factory`` (a ``read_only_factory``) whose transaction ends with
    a rollback (nothing to keep), also on success."""
    with factory() as session:
        yield session
