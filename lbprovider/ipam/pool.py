"""A pool as the allocator sees it: ranges, exclusions, and who it may serve.

Plain data only. The services layer builds a ``PoolSpec`` from a database row; the allocator and
the preview read it. Nothing here knows SQL or Kubernetes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from lbprovider.ipam.ranges import (
    IPAddress,
    RangeSet,
    buggy_count,
    ip_text,
    is_buggy,
    parse_range,
    parse_ranges,
)


@dataclass(frozen=True)
class PoolSpec:
    """One address pool. ``priority``: lower is tried first (as MetalLB's serviceAllocation)."""

    name: str
    ranges: tuple[str, ...]
    auto_assign: bool = True
    avoid_buggy_ips: bool = False
    disabled: bool = False
    priority: int = 100
    namespaces: frozenset[str] = frozenset()
    namespace_selector: Mapping[str, str] = field(default_factory=dict)
    service_selector: Mapping[str, str] = field(default_factory=dict)
    exclusions: tuple[str, ...] = ()

    @cached_property
    def by_family(self) -> dict[int, RangeSet]:
        return parse_ranges(self.ranges)

    @cached_property
    def excluded(self) -> dict[int, RangeSet]:
        return parse_ranges(self.exclusions)

    @property
    def restricted(self) -> bool:
        """True when the pool serves only some namespaces or Services."""
        return bool(self.namespaces or self.namespace_selector or self.service_selector)

    @property
    def families(self) -> tuple[int, ...]:
        return tuple(v for v in (4, 6) if self.by_family[v])

    def contains(self, addr: IPAddress) -> bool:
        return self.by_family[addr.version].contains(addr)

    def usable(self, addr: IPAddress) -> bool:
        """In range, not excluded, and not a buggy address when the pool avoids those."""
        if not self.contains(addr) or self.excluded[addr.version].contains(addr):
            return False
        return not (self.avoid_buggy_ips and is_buggy(addr))

    def usable_from(self, family: int, offset: int) -> Iterator[str]:
        """The usable addresses of ``family`` from range offset ``offset`` on, as text, lazily
        (what ``usable`` keeps of ``by_family[family].iter_from(offset)``, computed on integers:
        this is the candidate list of every new allocation)."""
        excluded = self.excluded[family]
        buggy = self.avoid_buggy_ips and family == 4
        for value in self.by_family[family].values_from(offset):
            if excluded and excluded.contains_value(value):
                continue
            if buggy and value & 0xFF in (0, 255):
                continue
            yield ip_text(value, family)

    def capacity(self, family: int) -> int:
        """Addresses this pool can ever hand out in ``family``, computed without enumeration."""
        ranges = self.by_family[family]
        total = ranges.size - ranges.count_in(self.excluded[family])
        if self.avoid_buggy_ips and family == 4:
            total -= _buggy_not_excluded(ranges, self.excluded[4])
        return max(total, 0)

    def serves(
        self, namespace: str, ns_labels: Mapping[str, str], svc_labels: Mapping[str, str]
    ) -> bool:
        """Whether a Service in ``namespace`` with those labels may use this pool at all."""
        if self.namespaces and namespace not in self.namespaces:
            return False
        if not selector_matches(self.namespace_selector, ns_labels):
            return False
        return selector_matches(self.service_selector, svc_labels)


def _buggy_not_excluded(ranges: RangeSet, excluded: RangeSet) -> int:
    return buggy_count(ranges) - buggy_count(ranges.intersection(excluded))


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """matchLabels semantics: every key present with the same value (empty selector matches all)."""
    return all(labels.get(k) == v for k, v in selector.items())


def validate_pool(spec: PoolSpec, others: Sequence[PoolSpec] = ()) -> list[str]:
    """Problems with a pool definition, each naming the offending value (empty list = valid)."""
    problems: list[str] = []
    if not spec.ranges:
        problems.append("ranges: a pool needs at least one range")
    for text in (*spec.ranges, *spec.exclusions):
        try:
            parse_range(text)
        except ValueError as e:
            problems.append(f"ranges: {e}")
    if problems:
        return problems
    for other in others:
        if other.name == spec.name:
            continue
        for family in (4, 6):
            for r in spec.by_family[family].ranges:
                if other.by_family[family].overlaps(r):
                    problems.append(f"ranges: {r} overlaps pool {other.name!r}")
    return problems
