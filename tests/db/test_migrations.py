"""The Alembic revisions and the SQLAlchemy models describe the same schema, on both databases."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from lbprovider.db import migrate
from lbprovider.db.models import Base, include_for
from lbprovider.db.session import make_engine
from tests.conftest import scratch_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'mig.db'}"
    else:
        server = request.getfixturevalue("pg_server_url")
        with scratch_database(server, f"lbp_mig_{os.getpid()}") as url:
            engine = make_engine(url)
            yield url, engine
            engine.dispose()
        return
    engine = make_engine(url)
    yield url, engine
    engine.dispose()


def alembic_config(url: str) -> Config:
    """The same configuration ``lbprovider db upgrade`` uses (not alembic.ini)."""
    return migrate.alembic_config(url)


def test_models_and_migrations_agree(empty_db: tuple[str, Engine]) -> None:
    url, engine = empty_db
    command.upgrade(alembic_config(url), "head")
    with engine.connect() as conn:
        include = include_for(conn.dialect.name)  # PostgreSQL-only indexes are not on SQLite
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": include}
        )
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"


def test_upgrade_downgrade_upgrade(empty_db: tuple[str, Engine]) -> None:
    url, engine = empty_db
    cfg = alembic_config(url)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    command.upgrade(cfg, "head")
    assert {"pools", "allocations", "ledger", "audit_log"} <= set(inspect(engine).get_table_names())


def test_cli_db_upgrade(empty_db: tuple[str, Engine]) -> None:
    url, engine = empty_db
    out = subprocess.run(
        [sys.executable, "-m", "lbprovider", "db", "upgrade"],
        env={"LBP_DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd="/",
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "pools" in inspect(engine).get_table_names()


FUNCTION_DEF = (
    "SELECT pg_get_functiondef(p.oid) FROM pg_proc p "
    "JOIN pg_namespace n ON n.oid = p.pronamespace "
    "WHERE n.nspname = 'public' AND p.proname = 'lbp_lock_if_free'"
)


@pytest.mark.postgres
def test_the_lock_function_of_migrations_and_models_is_the_same(
    pg_server_url: str, pg_engine: Engine
) -> None:
    """``lbp_lock_if_free`` (PostgreSQL only; autogenerate does not compare functions) as
    migration 0003 makes it and as ``create_all`` does (``models.LOCK_IF_FREE_SQL``)."""
    from sqlalchemy import text

    with scratch_database(pg_server_url, f"lbp_migfn_{os.getpid()}") as url:
        command.upgrade(alembic_config(url), "head")
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                migrated = conn.execute(text(FUNCTION_DEF)).scalar()
            command.downgrade(alembic_config(url), "0002")
            with engine.connect() as conn:
                assert conn.execute(text(FUNCTION_DEF)).scalar() is None
        finally:
            engine.dispose()
    with pg_engine.connect() as conn:
        created = conn.execute(text(FUNCTION_DEF)).scalar()
    assert migrated is not None and migrated == created
