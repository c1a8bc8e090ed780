"""The figures ``/metrics`` shows from the database: Services by condition and serving state,
and per fleet host what its last heartbeat said (applied version, reloads, backend servers by
state).

Why here: collectors must not hold SQL, and a scrape must stay cheap however many Services
there are, so Services are counted with one GROUP BY and hosts (tens, not thousands) are read
as rows. What it must not do: return anything keyed by Service or IP — every figure is an
aggregate whose label set stays bounded (reason, serving, host, state).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lbprovider.db.models import FleetHost, ServiceRecord


@dataclass(frozen=True)
class ServiceCount:
    """How many Services carry this IPAllocated reason and this serving state."""

    reason: str  # the IPAllocated condition reason ("" before the first decision)
    serving: bool
    count: int


@dataclass(frozen=True)
class HostFigures:
    """One fleet host as its last heartbeat left it."""

    name: str
    enabled: bool
    heartbeat_age_seconds: float | None  # None: never reported
    in_sync: bool  # applied the version it last fetched, with nothing pending
    reloads: int
    failed_reloads: int
    worker_exits: int
    errors: int
    pending: int
    servers: dict[str, int] = field(default_factory=dict)  # HAProxy server state -> count


def count_services(*, session: Session) -> list[ServiceCount]:
    """Services by condition reason and serving state (one aggregate query)."""
    rows = session.execute(
        select(ServiceRecord.condition_reason, ServiceRecord.serving, func.count())
        .group_by(ServiceRecord.condition_reason, ServiceRecord.serving)
        .order_by(ServiceRecord.condition_reason, ServiceRecord.serving)
    )
    return [ServiceCount(str(reason or ""), bool(serving), int(n)) for reason, serving, n in rows]


def host_figures(*, session: Session, now: datetime) -> list[HostFigures]:
    """Every fleet host's figures, by name."""
    hosts = session.scalars(select(FleetHost).order_by(FleetHost.name))
    return [_figures(host, now) for host in hosts]


def _figures(host: FleetHost, now: datetime) -> HostFigures:
    status: dict[str, Any] = host.status if isinstance(host.status, dict) else {}
    seen = host.last_heartbeat
    desired = str(status.get("desired_version") or "")
    pending = _list(status, "pending")
    return HostFigures(
        name=host.name,
        enabled=host.enabled,
        heartbeat_age_seconds=None if seen is None else max(0.0, (now - seen).total_seconds()),
        in_sync=bool(host.applied_version) and host.applied_version == desired and not pending,
        reloads=_int(status, "reloads"),
        failed_reloads=_int(status, "failed_reloads"),
        worker_exits=len(_list(status, "worker_exits")),
        errors=len(_list(status, "errors")),
        pending=len(pending),
        servers=dict(
            Counter(_state(s.get("state")) for s in _list(status, "servers") if isinstance(s, dict))
        ),
    )


def _state(raw: object) -> str:
    """HAProxy's server status without its detail: "UP 1/3" -> "UP", "MAINT (via x)" -> "MAINT",
    so the label keeps HAProxy's few values."""
    text = str(raw or "").strip()
    if text.lower().startswith("no check"):
        return "no check"
    return text.split(" ")[0].upper() if text else "unknown"


def _int(status: dict[str, Any], key: str) -> int:
    value = status.get(key)
    return value if isinstance(value, int) else 0


def _list(status: dict[str, Any], key: str) -> list[Any]:
    value = status.get(key)
    return value if isinstance(value, list) else []
