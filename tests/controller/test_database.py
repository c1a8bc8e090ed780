"""The database goes away and comes back: reconciles back off, no status changes, recovery."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from lbprovider.db.session import make_engine, session_factory

from .conftest import StartController
from .helpers import condition, create_service, db_ips, get_service, ip_of, make_pool, wait_until
from .tcpproxy import TCPProxy


@pytest.mark.postgres
def test_database_outage_backs_off_changes_nothing_and_recovers(
    core: Any, pg_engine: Engine, start_controller: StartController
) -> None:
    from tests.conftest import _truncate

    _truncate(pg_engine)
    url = make_url(pg_engine.url.render_as_string(hide_password=False))
    proxy = TCPProxy((url.host or "127.0.0.1", url.port or 5432)).start()
    engine = make_engine(url.set(host="127.0.0.1", port=proxy.port).render_as_string(False))
    try:
        sessions = session_factory(engine)
        make_pool(sessions, "pg", "127.0.17.1-127.0.17.9")
        ctl = start_controller(sessions)
        create_service(core, "before")
        first = wait_until(lambda: ip_of(core, "before"))
        assert first

        proxy.cut()
        create_service(core, "during")
        before = get_service(core, "before")
        assert wait_until(lambda: ctl.queues["services"].retries >= 3, timeout=10)

        during = get_service(core, "during")
        assert during is not None and ip_of(core, "during") is None
        assert condition(during, "lbprovider.io/IPAllocated") is None  # no status written
        assert get_service(core, "before") == before

        proxy.start()  # same port: the database is back
        assert wait_until(lambda: ip_of(core, "during"), timeout=15)
        assert ip_of(core, "before") == first
        assert db_ips(sessions, "during") == [ip_of(core, "during")]
        ctl.stop()
    finally:
        proxy.cut()
        engine.dispose()
        _truncate(pg_engine)
