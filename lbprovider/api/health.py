"""``/healthz`` (the process answers), ``/readyz`` (database reachable and migrations at head)
and ``/metrics``. No token: probes and scrapers must not need secrets. Nothing here writes."""

from __future__ import annotations

import logging
from functools import lru_cache

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from lbprovider.api.deps import ContextDep
from lbprovider.api.problems import problem_responses
from lbprovider.db import migrate
from lbprovider.services.errors import DomainError

logger = logging.getLogger(__name__)

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


@lru_cache(maxsize=1)
def migration_head() -> str | None:
    """The head revision of the migrations shipped with this code (read once)."""
    return migrate.head_revision()


def check_ready(engine: Engine) -> str:
    """The database's revision when reachable and at head; ``NotReady`` otherwise."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        current = migrate.current_revision(engine)
    except SQLAlchemyError as e:
        logger.warning("database unreachable", extra={"event": "not_ready", "error": str(e)})
        raise NotReady("the database is unreachable", field="database") from None
    head = migration_head()
    if current != head:
        raise NotReady(
            f"database schema at revision {current or 'none'}, code expects {head}; "
            "run `lbprovider db upgrade`",
            field="database",
        )
    return current or ""


@router.get("/healthz")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", responses=problem_responses(503))
def readyz(ctx: ContextDep) -> Readiness:
    return Readiness(status="ready", revision=check_ready(ctx.engine))


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
