"""Which live allocations a new pool definition would push out, before anyone commits to it.

Pure: the services layer hands in the pool as it would be and what the pool's addresses are held
by today; the answer is the list an operator must confirm (or the API returns with a 409).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lbprovider.ipam.allocator import ServiceRef
from lbprovider.ipam.pool import PoolSpec
from lbprovider.ipam.ranges import parse_ip


@dataclass(frozen=True)
class Held:
    """A live allocation in the pool being edited."""

    ip: str
    service: ServiceRef
    service_labels: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Displaced:
    ip: str
    service: ServiceRef
    why: str


def preview_pool_edit(new: PoolSpec, held: Sequence[Held]) -> list[Displaced]:
    """The allocations that would no longer fit ``new``, each with the reason, in IP order."""
    out: list[Displaced] = []
    for h in held:
        addr = parse_ip(h.ip)
        if not new.contains(addr):
            why = f"{h.ip} is outside the new ranges"
        elif not new.usable(addr):
            why = f"{h.ip} would be excluded"
        elif not new.serves(h.service.namespace, h.namespace_labels, h.service_labels):
            why = f"pool would no longer serve {h.service.key}"
        else:
            continue
        out.append(Displaced(h.ip, h.service, why))
    return sorted(out, key=lambda d: (parse_ip(d.ip).version, int(parse_ip(d.ip))))
