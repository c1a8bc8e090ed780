"""Limit/offset paging with ``count`` and neighbour links, over any stable-ordered query."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fastapi import Request
from sqlalchemy import Select
from sqlalchemy.orm import Session

from lbprovider.api.deps import PageParams
from lbprovider.services.queries import count_rows, page_rows

R = TypeVar("R")
T = TypeVar("T")


def links(request: Request, page: PageParams, count: int) -> dict[str, Any]:
    nxt = page.offset + page.limit
    prev = max(page.offset - page.limit, 0)
    return {
        "count": count,
        "limit": page.limit,
        "offset": page.offset,
        "next": str(request.url.include_query_params(offset=nxt)) if nxt < count else None,
        "previous": (
            str(request.url.include_query_params(offset=prev)) if page.offset > 0 else None
        ),
    }


def paginate(
    request: Request,
    session: Session,
    stmt: Select[R],
    page: PageParams,
    convert: Callable[[R], T],
) -> dict[str, Any]:
    """The page's fields for a ``Page`` schema: counted and sliced in the database."""
    rows = page_rows(session, stmt, limit=page.limit, offset=page.offset)
    results = [convert(r) for r in rows]
    return {**links(request, page, count_rows(session, stmt)), "results": results}


def paginate_list(
    request: Request, items: Sequence[R], page: PageParams, convert: Callable[[R], T]
) -> dict[str, Any]:
    """The same over an already filtered list (pools: the family filter reads the ranges)."""
    rows = items[page.offset : page.offset + page.limit]
    return {**links(request, page, len(items)), "results": [convert(r) for r in rows]}
