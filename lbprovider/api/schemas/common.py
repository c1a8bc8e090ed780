"""Field types shared by every schema: bounded, NUL-free text and UTC-safe timestamps.

Bounds match the database columns, so an over-long or unstorable value is refused as 422 with
its field named instead of failing inside PostgreSQL.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import IntEnum
from typing import Annotated, Generic, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    Field,
    StringConstraints,
)

NO_NUL = r"^[^\x00]*$"

T = TypeVar("T")


Str63 = Annotated[str, StringConstraints(max_length=63, pattern=NO_NUL)]
Str100 = Annotated[str, StringConstraints(max_length=100, pattern=NO_NUL)]
Str253 = Annotated[str, StringConstraints(max_length=253, pattern=NO_NUL)]
Text4k = Annotated[str, StringConstraints(max_length=4096, pattern=NO_NUL)]
"""Strings bounded like their columns, without NUL (PostgreSQL refuses NUL in text)."""


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError as e:
        raise ValueError("timestamp is out of range") from e


RFC3339_START = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]")


def _text_only(value: object) -> object:
    """Timestamps are RFC 3339 text: pydantic would otherwise read 0.5 as a Unix time."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not RFC3339_START.match(value):
        raise ValueError("give an RFC 3339 timestamp with an offset, e.g. 2030-01-01T00:00:00Z")
    return value


UTCDatetime = Annotated[AwareDatetime, BeforeValidator(_text_only), AfterValidator(_to_utc)]
"""A timestamp with an explicit offset (naive ones are refused), stored in UTC."""


class AddressFamily(IntEnum):
    """IPv4 or IPv6 (query parameters send the number)."""

    v4 = 4
    v6 = 6


class Page(BaseModel, Generic[T]):
    """A page of results, NetBox-style: ``count`` of all matches, links to neighbour pages."""

    count: int = Field(description="Rows matching the filters, over all pages.")
    limit: int
    offset: int
    next: str | None = Field(description="URL of the next page, null on the last.")
    previous: str | None = Field(description="URL of the previous page, null on the first.")
    results: list[T]
