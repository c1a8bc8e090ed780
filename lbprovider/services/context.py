"""Who is acting and under which request id: carried into every ledger and audit row."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from lbprovider.config import Settings


@dataclass(frozen=True)
class Actor:
    name: str
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


CONTROLLER = Actor("controller")


@dataclass(frozen=True)
class IPPolicy:
    """The IPAM timings from settings."""

    hold: timedelta = timedelta(hours=1)
    quarantine: timedelta = timedelta(minutes=1)

    @classmethod
    def from_settings(cls, settings: Settings) -> IPPolicy:
        return cls(
            hold=timedelta(seconds=settings.sticky_hold_seconds),
            quarantine=timedelta(seconds=settings.quarantine_seconds),
        )
