"""``/api/v1/fleet/hosts/{name}/state`` and ``.../status``: the agent protocol over HTTP.

An agent token reaches only its own host (an admin token any host). The state route
long-polls: it answers at once when the host's state version differs from ``version`` (or
``If-None-Match``), else ``304`` after ``wait`` seconds (capped by
``fleet_long_poll_max_seconds``); the ETag is the version. With ``delta=true`` the answer is
a ``FleetDelta`` against ``version`` when the API still keeps that state (header
``X-Fleet-Delta`` names the base), else the whole state as without it. Authentication runs
in its own short read-only transaction so a waiting poll holds no database lock and takes
no write lock. Logic lives in
``lbprovider.fleet``.
"""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials

from lbprovider.api.auth import bearer, current_token, require_host_agent
from lbprovider.api.deps import ContextDep
from lbprovider.api.problems import problem_responses
from lbprovider.db.session import read_transaction
from lbprovider.fleet.compile import StateCache
from lbprovider.fleet.models import FleetState, HostStatus, StatusAck
from lbprovider.fleet.protocol import accept_status, state_answer, wait_for_state

router = APIRouter(prefix="/fleet", tags=["fleet"])
_cache_lock = threading.Lock()

HostName = Annotated[
    str,
    Path(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9._-]+$", description="Fleet host."),
]


def state_cache(request: Request, ctx: ContextDep) -> StateCache:
    """One compiled-state cache per app."""
    with _cache_lock:
        cache = getattr(request.app.state, "fleet_states", None)
        if cache is None:
            cache = StateCache(ctx.settings)
            request.app.state.fleet_states = cache
    assert isinstance(cache, StateCache)
    return cache


CacheDep = Annotated[StateCache, Depends(state_cache)]


def host_agent(
    request: Request,
    ctx: ContextDep,
    cache: CacheDep,
    name: HostName,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The host name, once the token may act for it (401/403/429 otherwise). The token is
    read in a read-only transaction: on SQLite a write one (``BEGIN IMMEDIATE``) would wait
    for the write lock behind every creation and report, before the long-poll even looks."""
    with read_transaction(cache.readers(ctx.sessions)) as session:
        token = current_token(request, session, ctx, credentials)
        require_host_agent(token, name)
    return name


HostDep = Annotated[str, Depends(host_agent)]


@router.get(
    "/hosts/{name}/state",
    response_model=FleetState,
    responses={
        304: {"description": "No newer state within `wait` seconds."},
        **problem_responses(401, 403, 422, 429),
    },
)
async def get_state(
    host: HostDep,
    ctx: ContextDep,
    cache: CacheDep,
    version: Annotated[str, Query(max_length=64, description="The version the agent has.")] = "",
    wait: Annotated[float, Query(ge=0, le=3600, description="Seconds to wait for news.")] = 0,
    delta: Annotated[
        bool, Query(description="Answer with a FleetDelta against `version` when possible.")
    ] = False,
    if_none_match: Annotated[str | None, Header(max_length=80)] = None,
) -> Response:
    known = version or (if_none_match or "").strip().strip('"')
    state = await wait_for_state(
        sessions=ctx.sessions,
        cache=cache,
        host=host,
        known_version=known,
        wait=min(wait, ctx.settings.fleet_long_poll_max_seconds),
        poll=ctx.settings.fleet_state_poll_seconds,
    )
    if state is None:
        return Response(status_code=304, headers={"ETag": f'"{known}"'})
    body, headers = state_answer(cache=cache, state=state, known_version=known, delta=delta)
    return Response(body, media_type="application/json", headers=headers)


@router.post("/hosts/{name}/status", responses=problem_responses(401, 403, 422, 429))
def post_status(host: HostDep, body: HostStatus, ctx: ContextDep, cache: CacheDep) -> StatusAck:
    # no request transaction: accept_status prepares in a read-only one, then writes briefly
    return accept_status(
        sessions=ctx.sessions, cache=cache, settings=ctx.settings, host=host, report=body
    )
