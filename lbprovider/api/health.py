"""``/healthz`` (the process answers), ``/readyz`` (database reachable and migrations at head)
and ``/metrics``. No token: probes and scrapers must not need secrets. Nothing here writes."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from lbprovider.api.deps import ContextDep
from lbprovider.api.problems import problem_responses
from lbprovider.services.errors import DomainError

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"

router = APIRouter(tags=["health"])


class NotReady(DomainError):
    slug = "not-ready"
    status = 503
    title = "Not ready"


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    revision: str


@lru_cache(maxsize=4)
def migration_heads(location: str = str(MIGRATIONS)) -> frozenset[str]:
    """The head revision(s) of the Alembic script directory shipped with this code."""
    cfg = Config()
    cfg.set_main_option("script_location", location)
    return frozenset(ScriptDirectory.from_config(cfg).get_heads())


def database_revisions(engine: Engine) -> frozenset[str]:
    """The revision(s) stamped in the database (empty when never migrated)."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        return frozenset(MigrationContext.configure(conn).get_current_heads())


def check_ready(engine: Engine) -> str:
    try:
        current = database_revisions(engine)
    except SQLAlchemyError as e:
        logger.warning("database unreachable", extra={"event": "not_ready", "error": str(e)})
        raise NotReady("the database is unreachable", field="database") from None
    heads = migration_heads()
    if current != heads:
        have = ", ".join(sorted(current)) or "none"
        raise NotReady(
            f"database schema at revision {have}, code expects {', '.join(sorted(heads))}; "
            "run `lbprovider db upgrade`",
            field="database",
        )
    return ", ".join(sorted(current))


@router.get("/healthz")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", responses=problem_responses(503))
def readyz(ctx: ContextDep) -> Readiness:
    return Readiness(status="ready", revision=check_ready(ctx.engine))


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
