"""The address grid of a small IPv4 pool: every address with its state, for the dashboard.

States, in the order they win: ``allocated`` (a live lease), ``reserved`` (a live reservation),
``excluded`` (an exclusion, or a .0/.255 the pool avoids), ``quarantined`` (released less than
the quarantine ago, not given to anyone else yet), ``free``. Only IPv4 pools of at most
``GRID_LIMIT`` addresses get a grid: a /22 is 1,024 cells, bigger ones are summarised by the
utilisation bars instead. Reads only.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from lbprovider.db.models import Allocation, IPLease, Pool, ReleasedIP, Reservation
from lbprovider.db.types import utcnow
from lbprovider.ipam.ranges import is_buggy
from lbprovider.services.context import IPPolicy
from lbprovider.services.state import live_reservation, pool_spec

GRID_LIMIT = 1024
CellState = Literal["free", "allocated", "reserved", "excluded", "quarantined"]
CELL_STATES: tuple[CellState, ...] = ("free", "allocated", "reserved", "excluded", "quarantined")


@dataclass(frozen=True)
class Cell:
    ip: str
    state: CellState
    detail: str


@dataclass(frozen=True)
class Grid:
    cells: list[Cell]
    counts: dict[str, int]


def grid_size(pool: Pool) -> int:
    """IPv4 addresses in the pool's ranges (0 when it has none)."""
    return pool_spec(pool).by_family[4].size


def has_grid(pool: Pool) -> bool:
    return 0 < grid_size(pool) <= GRID_LIMIT


def address_grid(
    *, session: Session, pool: Pool, policy: IPPolicy, now: datetime | None = None
) -> Grid | None:
    """Every IPv4 address of ``pool`` with its state; None when the pool is too big."""
    if not has_grid(pool):
        return None
    now = now or utcnow()
    spec = pool_spec(pool)
    holders = _holders(session, pool.id)
    reserved = {
        r.ip: r.owner + (f" for {r.service_namespace}/{r.service_name}" if r.service_name else "")
        for r in session.scalars(
            select(Reservation).where(Reservation.pool_id == pool.id, live_reservation(now))
        )
    }
    leased = set(session.scalars(select(IPLease.ip).where(IPLease.pool_id == pool.id)))
    quarantine_from = now - policy.quarantine
    quarantined = {
        r.ip: f"released by {r.service_namespace}/{r.service_name}"
        for r in session.scalars(
            select(ReleasedIP).where(
                ReleasedIP.pool_id == pool.id, ReleasedIP.released_at > quarantine_from
            )
        )
    }
    cells = []
    for rng in spec.by_family[4].ranges:
        for value in range(rng.first, rng.last + 1):
            addr = ipaddress.IPv4Address(value)
            ip = str(addr)
            if ip in leased:
                cells.append(Cell(ip, "allocated", ", ".join(holders.get(ip, [])) or "leased"))
            elif ip in reserved:
                cells.append(Cell(ip, "reserved", f"reserved by {reserved[ip]}"))
            elif spec.excluded[4].contains(addr) or (spec.avoid_buggy_ips and is_buggy(addr)):
                cells.append(Cell(ip, "excluded", "never handed out"))
            elif ip in quarantined:
                cells.append(Cell(ip, "quarantined", quarantined[ip]))
            else:
                cells.append(Cell(ip, "free", "free"))
    counts: dict[str, int] = {state: 0 for state in CELL_STATES}
    for cell in cells:
        counts[cell.state] += 1
    return Grid(cells, counts)


def _holders(session: Session, pool_id: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ip, ns, name in session.execute(
        select(Allocation.ip, Allocation.service_namespace, Allocation.service_name).where(
            Allocation.active, Allocation.pool_id == pool_id
        )
    ):
        out.setdefault(ip, []).append(f"{ns}/{name}")
    return out
