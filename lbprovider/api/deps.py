"""Per-request plumbing shared by every router: the app context and one DB transaction.

A request gets exactly one session inside ``transaction(...)``: everything a route writes
commits together *before* the answer is sent (``scope="function"``), or rolls back on any
error. Routers must not open sessions of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Protocol, cast

from fastapi import Depends, Query, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.config import Settings
from lbprovider.db.session import transaction
from lbprovider.services.context import IPPolicy


@dataclass
class ApiContext:
    """What an app instance holds: one per ``create_app`` call, never module-global."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    policy: IPPolicy
    limiter: AuthLimiter


class AuthLimiter(Protocol):
    """What ``lbprovider.api.auth.FailedAuthLimiter`` offers (declared here to avoid a cycle)."""

    def retry_after(self, client: str) -> int: ...

    def failed(self, client: str) -> None: ...


def get_context(request: Request) -> ApiContext:
    return cast(ApiContext, request.app.state.api)


ContextDep = Annotated[ApiContext, Depends(get_context)]


def db_session(ctx: ContextDep) -> Iterator[Session]:
    with transaction(ctx.sessions) as session:
        yield session


SessionDep = Annotated[Session, Depends(db_session, scope="function")]


@dataclass(frozen=True)
class PageParams:
    limit: int
    offset: int


def page_params(
    limit: Annotated[int, Query(ge=1, le=1000, description="Rows per page.")] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1, description="Rows to skip.")] = 0,
) -> PageParams:
    return PageParams(limit=limit, offset=offset)


PageDep = Annotated[PageParams, Depends(page_params)]
