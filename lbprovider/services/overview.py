"""What needs an operator's attention, in one read: Services pending and why, pools filling up,
fleet hosts out of date or unhealthy, and the last ledger rows. Also the fleet host view the
dashboard renders from ``FleetHost.status``.

``FleetHost.status`` is written by the fleet agents; its shape is read tolerantly here (missing
keys mean "not reported yet", never an error) so the dashboard renders whatever is there. Reads
only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lbprovider.db.models import FleetHost, LedgerEntry, Pool
from lbprovider.db.types import utcnow
from lbprovider.services.audit import ledger_query
from lbprovider.services.catalog import ServiceRow, pending_query, service_rows
from lbprovider.services.pools import Utilisation, utilisation
from lbprovider.services.queries import count_rows

WARN_PERCENT = 75.0
CRITICAL_PERCENT = 90.0
HEARTBEAT_STALE = timedelta(seconds=60)
HAPROXY_STATES = ("UP", "DOWN", "DRAIN", "MAINT", "NOLB")


def level(percent: float) -> str:
    """``ok`` / ``warn`` (≥ 75 %) / ``critical`` (≥ 90 %): the colour of a utilisation bar."""
    if percent >= CRITICAL_PERCENT:
        return "critical"
    if percent >= WARN_PERCENT:
        return "warn"
    return "ok"


@dataclass(frozen=True)
class PoolUse:
    pool: Pool
    families: list[Utilisation]

    @property
    def peak(self) -> float:
        return max((u.percent for u in self.families), default=0.0)

    @property
    def level(self) -> str:
        return level(self.peak)


def pool_uses(session: Session, pools: Iterable[Pool]) -> list[PoolUse]:
    return [PoolUse(p, utilisation(session=session, pool=p)) for p in pools]


@dataclass(frozen=True)
class BackendServer:
    backend: str
    server: str
    state: str
    check: str


@dataclass(frozen=True)
class HostView:
    """A fleet host as the dashboard shows it."""

    host: FleetHost
    heartbeat_age: timedelta | None
    vips: list[str]
    servers: list[BackendServer]
    desired_version: str
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems


def host_view(host: FleetHost, *, now: datetime, newest_version: str = "") -> HostView:
    status: Mapping[str, Any] = host.status if isinstance(host.status, dict) else {}
    age = now - host.last_heartbeat if host.last_heartbeat else None
    desired = str(status.get("desired_version") or newest_version or "")
    servers = _servers(status)
    problems = []
    if not host.enabled:
        problems.append("disabled")
    if age is None:
        problems.append("never reported")
    elif age > HEARTBEAT_STALE:
        problems.append(f"no heartbeat for {int(age.total_seconds())} s")
    if host.error:
        problems.append(host.error)
    if desired and host.applied_version and host.applied_version != desired:
        problems.append(f"applied version {host.applied_version}, desired {desired}")
    down = [s for s in servers if s.state in ("DOWN", "MAINT")]
    if down:
        problems.append(f"{len(down)} backend server(s) DOWN or MAINT")
    return HostView(host, age, _vips(status), servers, desired, problems)


def _vips(status: Mapping[str, Any]) -> list[str]:
    raw = status.get("vips") or []
    out = []
    for v in raw if isinstance(raw, list) else []:
        out.append(str(v.get("ip", "")) if isinstance(v, dict) else str(v))
    return [v for v in out if v]


def _servers(status: Mapping[str, Any]) -> list[BackendServer]:
    raw = status.get("servers")
    if raw is None and isinstance(status.get("backends"), dict):
        raw = [
            {**s, "backend": name}
            for name, items in status["backends"].items()
            for s in (items if isinstance(items, list) else [])
            if isinstance(s, dict)
        ]
    out = []
    for s in raw if isinstance(raw, list) else []:
        if not isinstance(s, dict):
            continue
        state = str(s.get("state") or s.get("status") or "").upper()
        out.append(
            BackendServer(
                backend=str(s.get("backend") or s.get("proxy") or ""),
                server=str(s.get("server") or s.get("name") or ""),
                state=state.split()[0] if state else "UNKNOWN",
                check=str(s.get("check_status") or s.get("check") or ""),
            )
        )
    return out


def host_views(session: Session, hosts: Iterable[FleetHost]) -> list[HostView]:
    hosts = list(hosts)
    newest = max((h.applied_version for h in hosts if h.applied_version), default="", key=_vkey)
    now = utcnow()
    return [host_view(h, now=now, newest_version=newest) for h in hosts]


def _vkey(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


@dataclass(frozen=True)
class Overview:
    pending: list[ServiceRow]
    pending_total: int
    hot_pools: list[PoolUse]
    pool_count: int
    attention_hosts: list[HostView]
    host_count: int
    recent: list[LedgerEntry]


def overview(*, session: Session, pending_limit: int = 20, recent_limit: int = 15) -> Overview:
    pending_stmt = pending_query()
    pending = service_rows(session, session.scalars(pending_stmt.limit(pending_limit)).all())
    pools = session.scalars(select(Pool).order_by(Pool.name)).all()
    uses = pool_uses(session, pools)
    hot = sorted((u for u in uses if u.peak >= WARN_PERCENT), key=lambda u: -u.peak)
    hosts = host_views(session, session.scalars(select(FleetHost).order_by(FleetHost.name)))
    recent = list(session.scalars(ledger_query().limit(recent_limit)))
    return Overview(
        pending=pending,
        pending_total=count_rows(session, pending_stmt),
        hot_pools=hot,
        pool_count=len(pools),
        attention_hosts=[h for h in hosts if not h.healthy],
        host_count=len(hosts),
        recent=recent,
    )
