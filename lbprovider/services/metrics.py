"""The figures ``/metrics`` shows from the database: Services by condition and serving state,
and per fleet host what its last heartbeat said (applied version and how long it has lagged the
served one, reloads and their duration, runtime-API commands, backend servers by state).

Why here: collectors must not hold SQL, and a scrape must stay cheap however many Services
there are, so Services are counted with one GROUP BY and hosts (tens, not thousands) are read
as rows. What it must not do: return anything keyed by Service or IP — every figure is an
aggregate whose label set stays bounded (reason, serving, host, state).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lbprovider.db.models import FleetHost, ServiceRecord
from lbprovider.services.fleet import OUT_OF_SYNC_SINCE


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
    in_sync: bool  # applied the version it should serve, with nothing pending
    version_lag_seconds: float | None  # since applied first differed from desired; 0 in sync
    reloads: int
    failed_reloads: int
    worker_exits: int
    errors: int
    pending: int
    servers: dict[str, int] = field(default_factory=dict)  # HAProxy server state -> count
    runtime_commands: int = 0  # the agent's counters, since it started
    reloads_timed: int = 0
    reload_seconds: float = 0.0
    reload_seconds_last: float | None = None


def count_services(*, session: Session) -> list[ServiceCount]:
    """Services by condition reason and serving state (one aggregate query)."""
    rows = session.execute(
        select(ServiceRecord.condition_reason, ServiceRecord.serving, func.count())
        .group_by(ServiceRecord.condition_reason, ServiceRecord.serving)
        .order_by(ServiceRecord.condition_reason, ServiceRecord.serving)
    )
    return [ServiceCount(str(reason or ""), bool(serving), int(n)) for reason, serving, n in rows]


def host_figures(
    *, session: Session, now: datetime, desired: Callable[[FleetHost], str] | None = None
) -> list[HostFigures]:
    """Every fleet host's figures, by name. ``desired(host)``: the version the API would serve
    the host now (the fleet compiles it; this layer cannot); without it, the version the host
    last fetched stands in."""
    hosts = session.scalars(select(FleetHost).order_by(FleetHost.name))
    return [_figures(host, now, desired) for host in hosts]


def _figures(
    host: FleetHost, now: datetime, desired_of: Callable[[FleetHost], str] | None
) -> HostFigures:
    status: dict[str, Any] = host.status if isinstance(host.status, dict) else {}
    seen = host.last_heartbeat
    fetched = str(status.get("desired_version") or "")
    desired = desired_of(host) if desired_of is not None else fetched
    applied = host.applied_version
    pending = _list(status, "pending")
    last = status.get("reload_seconds_last")
    return HostFigures(
        name=host.name,
        enabled=host.enabled,
        heartbeat_age_seconds=None if seen is None else _since(seen, now),
        in_sync=bool(applied) and applied == desired and not pending,
        version_lag_seconds=_version_lag(status, applied == desired, seen, now),
        reloads=_int(status, "reloads"),
        failed_reloads=_int(status, "failed_reloads"),
        worker_exits=len(_list(status, "worker_exits")),
        errors=len(_list(status, "errors")),
        pending=len(pending),
        servers=dict(
            Counter(_state(s.get("state")) for s in _list(status, "servers") if isinstance(s, dict))
        ),
        runtime_commands=_int(status, "runtime_commands_total"),
        reloads_timed=_int(status, "reloads_timed"),
        reload_seconds=_float(status.get("reload_seconds_total")) or 0.0,
        reload_seconds_last=_float(last),
    )


def _version_lag(
    status: dict[str, Any], same: bool, seen: datetime | None, now: datetime
) -> float | None:
    """Seconds the applied version has differed from the desired one: from the first report
    that showed it (stored by the API), or — when the desired state changed after the last
    report — from that report, the earliest it can have started (so a host that stopped
    reporting shows a growing lag). 0 when they are equal; None for a host that never
    reported."""
    if same:
        return 0.0
    since = _instant(status.get(OUT_OF_SYNC_SINCE)) or seen
    return None if since is None else _since(since, now)


def _since(then: datetime, now: datetime) -> float:
    return max(0.0, (now - then).total_seconds())


def _instant(raw: object) -> datetime | None:
    if not isinstance(raw, str):
        return None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


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


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _list(status: dict[str, Any], key: str) -> list[Any]:
    value = status.get(key)
    return value if isinstance(value, list) else []
