"""An in-memory ``StateView`` for pure allocator tests: a dict standing for the database."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from lbprovider.ipam.allocator import Holder, Occupancy, ServiceRef
from lbprovider.ipam.ranges import ip_key


@dataclass
class MemoryView:
    pools_of: dict[str, str] = field(default_factory=dict)  # ip -> pool
    holders: dict[str, list[Holder]] = field(default_factory=dict)
    reservations: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # ip->(for,owner)
    released: dict[str, tuple[datetime, str]] = field(default_factory=dict)  # ip -> (at, by)

    def hold(
        self,
        ip: str,
        pool: str,
        svc: ServiceRef,
        ports: set[tuple[str, int]],
        key: str | None = None,
    ) -> None:
        self.pools_of[ip] = pool
        self.holders.setdefault(ip, []).append(Holder(svc, key, frozenset(ports)))

    def occupancy(self, ips: Sequence[str]) -> Mapping[str, Occupancy]:
        out = {}
        for ip in ips:
            h = tuple(self.holders.get(ip, ()))
            res = self.reservations.get(ip)
            rel = self.released.get(ip)
            if h or res or rel:
                out[ip] = Occupancy(
                    holders=h,
                    reserved=res is not None,
                    reserved_for=res[0] if res else None,
                    reservation_owner=res[1] if res else "",
                    released_at=rel[0] if rel else None,
                    released_by=rel[1] if rel else None,
                )
        return out

    def reserved_for_service(self, service: ServiceRef, family: int) -> Sequence[str]:
        return [
            ip
            for ip, (who, _) in self.reservations.items()
            if who == service.key and (":" in ip) == (family == 6)
        ]

    def sticky_ip(self, service: ServiceRef, family: int) -> tuple[str, datetime] | None:
        mine = [
            (at, ip)
            for ip, (at, by) in self.released.items()
            if by == service.key and (":" in ip) == (family == 6)
        ]
        return (max(mine)[1], max(mine)[0]) if mine else None

    def sharing_ips(self, key: str, pool: str, family: int) -> Sequence[str]:
        return sorted(
            ip
            for ip, hs in self.holders.items()
            if hs and hs[0].sharing_key == key and self.pools_of.get(ip) == pool
        )

    def high_water(self, pool: str, family: int) -> str | None:
        used = [
            ip
            for ip in (*self.holders, *self.released)
            if self.pools_of.get(ip) == pool and (":" in ip) == (family == 6)
        ]
        return max(used, key=ip_key) if used else None

    def released_lru(self, pool: str, family: int, limit: int) -> Sequence[str]:
        free = [
            (at, ip)
            for ip, (at, _) in self.released.items()
            if self.pools_of.get(ip) == pool and not self.holders.get(ip)
        ]
        return [ip for _, ip in sorted(free)][:limit]

    def claimable(self, ip: str) -> bool:
        return True

    def scan(self, ips: Sequence[str], pool: str) -> tuple[Mapping[str, Occupancy], int]:
        return self.occupancy(ips), len(ips)
