"""The FastAPI application of ``/api/v1``: wiring only (routers, errors, middleware, lifespan).

``create_app`` builds an independent app (own engine unless given, own metrics registry, own
failed-auth limiter), so tests and ``lbprovider serve`` run the same code. This package must not
import Kubernetes, HAProxy, the controller, the agent or the lab (import-linter contract).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from sqlalchemy import Engine

from lbprovider.api.auth import FailedAuthLimiter
from lbprovider.api.deps import ApiContext
from lbprovider.api.health import router as health_router
from lbprovider.api.idempotency import install_replay_handler
from lbprovider.api.metrics import make_registry
from lbprovider.api.openapi import install_openapi
from lbprovider.api.problems import install_problem_handlers
from lbprovider.api.requestid import RequestIdMiddleware
from lbprovider.api.routers import (
    catalog,
    fleet,
    fleet_agent,
    pools,
    records,
    reservations,
    tokens,
)
from lbprovider.api.sweeper import sweep_forever
from lbprovider.config import Settings, get_settings
from lbprovider.db.session import make_engine, session_factory
from lbprovider.fleet.compile import StateCache
from lbprovider.services.context import IPPolicy
from lbprovider.ui import include_ui

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """The API app. ``engine`` given: the caller owns (and disposes) it."""
    settings = settings or get_settings()
    owns_engine = engine is None
    db = engine or make_engine(settings.database_url, pool_size=settings.db_pool_size)
    # One failed-auth counter for the API and the dashboard sign-in: a guesser gets one budget.
    limiter = FailedAuthLimiter(settings.auth_fail_limit)
    ctx = ApiContext(
        settings=settings,
        engine=db,
        sessions=session_factory(db),
        policy=IPPolicy.from_settings(settings),
        limiter=limiter,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(
            sweep_forever(ctx.sessions, settings.reservation_sweep_seconds)
        )
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            if owns_engine:
                db.dispose()

    app = FastAPI(
        title="lbprovider",
        version="1",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.api = ctx
    app.state.fleet_states = StateCache(settings)  # the agent protocol's (routers/fleet_agent)
    app.state.metrics = make_registry(ctx.sessions, app.state.fleet_states)
    for module in (pools, reservations, records, catalog, tokens, fleet, fleet_agent):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(health_router)
    install_problem_handlers(app)
    install_replay_handler(app)
    install_openapi(app)
    app.add_middleware(RequestIdMiddleware)
    include_ui(app, settings=settings, sessions=ctx.sessions, policy=ctx.policy, limiter=limiter)
    return app
