"""Server-side pagination for dashboard tables: ``limit``/``offset`` in the URL, next to the
filters, so a page of a filtered list is a link. Counting and slicing go through
``lbprovider.services.queries``; nothing here builds SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from fastapi import Request
from sqlalchemy import Select
from sqlalchemy.orm import Session

from lbprovider.services.queries import count_rows, page_rows, total_in

T = TypeVar("T")


class Fetch(Protocol):
    def __call__(
        self, session: Session, stmt: Select[Any], /, *, limit: int, offset: int
    ) -> Sequence[Any]: ...


LIMITS = (25, 50, 100, 200)
DEFAULT_LIMIT = 50
MAX_OFFSET = 2**31 - 1


@dataclass(frozen=True)
class Page(Generic[T]):
    rows: Sequence[T]
    total: int
    limit: int
    offset: int

    @property
    def first(self) -> int:
        return self.offset + 1 if self.rows else 0

    @property
    def last(self) -> int:
        return self.offset + len(self.rows)

    @property
    def prev_offset(self) -> int | None:
        return max(self.offset - self.limit, 0) if self.offset > 0 else None

    @property
    def next_offset(self) -> int | None:
        return self.offset + self.limit if self.last < self.total else None


def int_param(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query_params.get(name, "")
    if not raw.isdigit() or len(raw) > 10:
        return default
    return min(max(int(raw), low), high)


def window(request: Request, prefix: str = "") -> tuple[int, int]:
    """The ``limit`` and ``offset`` the URL asks for (defaults, clamped)."""
    limit = int_param(request, f"{prefix}limit", DEFAULT_LIMIT, low=1, high=LIMITS[-1])
    offset = int_param(request, f"{prefix}offset", 0, low=0, high=MAX_OFFSET)
    return limit, offset


def page_of(
    session: Session,
    stmt: Select[Any],
    request: Request,
    prefix: str = "",
    *,
    fetch: Fetch | None = None,
) -> Page[Any]:
    """The page the URL asks for. ``fetch(session, stmt, limit=, offset=)`` reads the rows
    (default: ``stmt``'s entities); the total is counted over ``stmt`` only when the page is
    not the whole list, and not at all when the rows carry it (``queries.window_total``)."""
    limit, offset = window(request, prefix)
    rows = (fetch or page_rows)(session, stmt, limit=limit, offset=offset)
    total = total_in(rows)
    if total is None:
        total = count_rows(session, stmt) if (offset or len(rows) >= limit) else len(rows)
    return Page(rows, total, limit, offset)
