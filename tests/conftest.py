"""Fixtures shared by every test area: databases (SQLite and a real PostgreSQL), settings.

PostgreSQL is real: when ``LBP_TEST_PG_URL`` is unset, ``scripts/postgres.sh`` starts Debian's
cluster (installing it if missing) and creates the test database — the suite never skips it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.models import Base
from lbprovider.db.session import make_engine, session_factory

ROOT = Path(__file__).resolve().parent.parent

# Speed is the benchmarks' business (bench/), not the tests': Hypothesis' per-example deadline
# (200 ms) measured the shared 2-core machine, not the code, and failed range-math tests under load.
hypothesis_settings.register_profile("lbprovider", deadline=None)
hypothesis_settings.load_profile("lbprovider")


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """URL of the PostgreSQL database the test command prepared (started on demand)."""
    url = os.environ.get("LBP_TEST_PG_URL")
    if not url:
        out = subprocess.run(
            ["bash", str(ROOT / "scripts" / "postgres.sh")],
            check=True,
            capture_output=True,
            text=True,
        )
        url = out.stdout.strip().splitlines()[-1]
        os.environ["LBP_TEST_PG_URL"] = url
    return url


@contextmanager
def scratch_database(server_url: str, name: str) -> Iterator[str]:
    """Create database ``name`` on the server of ``server_url``; drop it afterwards."""
    admin = make_engine(server_url)
    try:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            conn.execute(text(f"CREATE DATABASE {name}"))
        try:
            yield server_url.rsplit("/", 1)[0] + "/" + name
        finally:
            with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    finally:
        # Also when a DROP fails: a pooled connection left for the garbage collector is reported
        # as an unraisable warning in whichever later test happens to collect it.
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A database of this test session's own (several runs may share one server)."""
    with scratch_database(pg_server_url, f"lbp_test_{os.getpid()}") as url:
        yield url


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url, pool_size=20)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def _truncate(engine: Engine) -> None:
    names = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A fresh, empty database with the schema: once on SQLite, once on PostgreSQL."""
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path / 'test.db'}")
        Base.metadata.create_all(eng)
        yield eng
        eng.dispose()
        return
    pg = request.getfixturevalue("pg_engine")
    _truncate(pg)
    yield pg
    _truncate(pg)


@pytest.fixture
def db_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)
