"""Hot statements on the DBAPI (psycopg) cursor, past SQLAlchemy's execute and result layer.

The allocation path runs three statements per new Service (``services.state.PRELUDE``,
``SCAN_PG``, ``services.allocations.CLAIM_CLEAN_PG``). Through ``Connection.execute`` each one
costs about as much client CPU in SQLAlchemy (compiled-cache lookup, parameter processing,
result metadata) as in psycopg itself; here the statement is compiled once to psycopg's format
and run on the session's own connection, in its transaction, on one cursor kept with the pooled
connection, with psycopg's prepared statements (``prepare_threshold``) as before. Rows come back
as named tuples (``row.kind``, as from SQLAlchemy), with the driver's own values: no result
processors run, so a caller gets what psycopg loads (e.g. ``timestamptz`` in the connection's
time zone).

What stays the same for everybody else: ``before_cursor_execute`` / ``after_cursor_execute``
listeners see these statements as they see any other, and a driver error surfaces as the
matching SQLAlchemy exception (``IntegrityError`` ...), a disconnect invalidating the
connection as SQLAlchemy does. PostgreSQL only; callers keep their SQLAlchemy path for SQLite.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import exc
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import TextualSelect

from lbprovider.db.session import Unit, connection_of

# One cursor per pooled connection, kept in its ``info`` (which lives as long as the DBAPI
# connection): a fresh cursor per statement starts with cold dumper and loader caches.
_CURSOR = "lbprovider_driver_cursor"
_DIALECT = PGDialect_psycopg()  # type: ignore[no-untyped-call]


class DriverStatement:
    """A ``text()`` statement compiled once to psycopg's ``%(name)s`` format."""

    __slots__ = ("sql",)

    def __init__(self, clause: TextClause | TextualSelect) -> None:
        self.sql: str = str(clause.compile(dialect=_DIALECT))


def fetch_all(unit: Unit, statement: DriverStatement, params: Mapping[str, Any]) -> list[Any]:
    """Run ``statement`` on the connection of ``unit`` (a session or a connection; PostgreSQL),
    in its transaction; every row as a named tuple."""
    conn = connection_of(unit)
    pooled = conn.connection
    raw: psycopg.Connection[Any] = cast(Any, pooled.driver_connection)
    sql = statement.sql
    cur: psycopg.Cursor[Any] | None = pooled.info.get(_CURSOR)
    if cur is None or cur.connection is not raw or cur.closed:
        cur = pooled.info[_CURSOR] = raw.cursor(row_factory=namedtuple_row)
    dispatch = conn.dispatch
    for before in dispatch.before_cursor_execute:
        before(conn, cur, sql, params, None, False)
    try:
        cur.execute(sql, params)
        rows = cur.fetchall()
    except psycopg.Error as e:
        pooled.info.pop(_CURSOR, None)
        cur.close()
        gone = conn.dialect.is_disconnect(cast(Any, e), pooled, cast(Any, cur))
        if gone:
            conn.invalidate(e)
        raise exc.DBAPIError.instance(
            sql, params, e, psycopg.Error, connection_invalidated=gone, dialect=conn.dialect
        ) from e
    for after in dispatch.after_cursor_execute:
        after(conn, cur, sql, params, None, False)
    return rows
