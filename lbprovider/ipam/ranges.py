"""Address math for pools: CIDRs and ``a-b`` ranges, IPv4 and IPv6, without enumeration.

A pool may be a /64; nothing here ever lists its addresses. A ``RangeSet`` maps an offset
(0 .. size-1) to an address and back with a binary search over its merged ranges, so the cost of
every operation depends on the number of ranges, never on their size.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RangeError(ValueError):
    """A range or address an operator wrote is not valid."""


def parse_ip(text: str) -> IPAddress:
    """Parse one address; raise ``RangeError`` naming the text when it is not one."""
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError as e:
        raise RangeError(f"{text!r} is not an IP address") from e


def canonical_ip(text: str) -> str:
    """The one spelling we store for an address (compressed IPv6, no zone)."""
    return str(parse_ip(text))


def ip_key(ip: IPAddress | str) -> str:
    """A fixed-width sortable key (``4:``/``6:`` + 32 hex digits) for a database index."""
    addr = parse_ip(ip) if isinstance(ip, str) else ip
    return f"{addr.version}:{int(addr):032x}"


@dataclass(frozen=True, order=True)
class IPRange:
    """An inclusive range of addresses of one family, as integers."""

    first: int
    last: int
    version: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        a, b = _to_ip(self.first, self.version), _to_ip(self.last, self.version)
        nets = list(ipaddress.summarize_address_range(a, b))
        return str(nets[0]) if len(nets) == 1 else f"{a}-{b}"


def _to_ip(value: int, version: int) -> IPAddress:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def parse_range(spec: str) -> IPRange:
    """Parse ``10.0.0.0/24``, ``10.0.0.10-10.0.0.20``, ``2001:db8::/64`` or a single address."""
    text = spec.strip()
    if not text:
        raise RangeError("empty range")
    if "-" in text:
        left, _, right = text.partition("-")
        a, b = parse_ip(left), parse_ip(right)
        if a.version != b.version:
            raise RangeError(f"{spec!r} mixes IPv4 and IPv6")
        if int(a) > int(b):
            raise RangeError(f"{spec!r} ends before it starts")
        return IPRange(int(a), int(b), a.version)
    if "/" in text:
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as e:
            raise RangeError(f"{spec!r} is not a CIDR (host bits set?): {e}") from e
        return IPRange(int(net.network_address), int(net.broadcast_address), net.version)
    addr = parse_ip(text)
    return IPRange(int(addr), int(addr), addr.version)


class RangeSet:
    """Merged, sorted ranges of ONE family with offset arithmetic."""

    __slots__ = ("_cumulative", "_firsts", "ranges", "size", "version")

    def __init__(self, ranges: Sequence[IPRange], version: int) -> None:
        merged: list[IPRange] = []
        for r in sorted(r for r in ranges if r.version == version):
            if merged and r.first <= merged[-1].last + 1:
                last = merged[-1]
                merged[-1] = IPRange(last.first, max(last.last, r.last), version)
            else:
                merged.append(r)
        self.version = version
        self.ranges: tuple[IPRange, ...] = tuple(merged)
        self._firsts = [r.first for r in merged]
        self._cumulative: list[int] = []
        total = 0
        for r in merged:
            self._cumulative.append(total)
            total += r.size
        self.size = total

    def __bool__(self) -> bool:
        return self.size > 0

    def _index_of(self, value: int) -> int:
        """Index of the range that starts at or before ``value`` (-1 when none)."""
        return bisect.bisect_right(self._firsts, value) - 1

    def contains(self, ip: IPAddress | str) -> bool:
        addr = parse_ip(ip) if isinstance(ip, str) else ip
        if addr.version != self.version:
            return False
        i = self._index_of(int(addr))
        return i >= 0 and int(addr) <= self.ranges[i].last

    def ip_at(self, offset: int) -> IPAddress:
        """The address at ``offset`` (0-based) across the merged ranges."""
        if not 0 <= offset < self.size:
            raise IndexError(f"offset {offset} outside a set of {self.size} addresses")
        i = bisect.bisect_right(self._cumulative, offset) - 1
        return _to_ip(self.ranges[i].first + offset - self._cumulative[i], self.version)

    def offset_of(self, ip: IPAddress | str) -> int | None:
        addr = parse_ip(ip) if isinstance(ip, str) else ip
        if not self.contains(addr):
            return None
        i = self._index_of(int(addr))
        return self._cumulative[i] + int(addr) - self.ranges[i].first

    def first_offset_after(self, ip: IPAddress | str) -> int:
        """Offset of the first address strictly greater than ``ip`` (== size when none)."""
        addr = parse_ip(ip) if isinstance(ip, str) else ip
        if addr.version != self.version:
            return 0
        value = int(addr)
        i = self._index_of(value)
        if i < 0:
            return 0
        r = self.ranges[i]
        if value < r.last:
            return self._cumulative[i] + value - r.first + 1
        return self._cumulative[i] + r.size

    def iter_from(self, offset: int) -> Iterator[IPAddress]:
        """Addresses from ``offset`` on, lazily: safe on a /64."""
        return (_to_ip(v, self.version) for v in self.values_from(offset))

    def values_from(self, offset: int) -> Iterator[int]:
        """``iter_from`` as integers (no address objects)."""
        if offset >= self.size:
            return
        i = bisect.bisect_right(self._cumulative, offset) - 1
        value = self.ranges[i].first + offset - self._cumulative[i]
        for r in self.ranges[i:]:
            yield from range(max(value, r.first), r.last + 1)

    def contains_value(self, value: int) -> bool:
        """``contains`` for an address of this set's family given as an integer."""
        i = self._index_of(value)
        return i >= 0 and value <= self.ranges[i].last

    def overlaps(self, other: IPRange) -> bool:
        if other.version != self.version:
            return False
        i = self._index_of(other.last)
        return i >= 0 and self.ranges[i].last >= other.first

    def intersection(self, other: RangeSet) -> RangeSet:
        """Addresses in both sets (no enumeration)."""
        parts = []
        for a in self.ranges:
            for b in other.ranges:
                lo, hi = max(a.first, b.first), min(a.last, b.last)
                if lo <= hi:
                    parts.append(IPRange(lo, hi, self.version))
        return RangeSet(parts, self.version)

    def count_in(self, other: RangeSet) -> int:
        """How many addresses of ``other`` lie in this set (no enumeration)."""
        return self.intersection(other).size


def parse_ranges(specs: Sequence[str]) -> dict[int, RangeSet]:
    """Parse a pool's range list into one ``RangeSet`` per family (4 and 6 always present)."""
    parsed = [parse_range(s) for s in specs]
    return {v: RangeSet(parsed, v) for v in (4, 6)}


def ip_text(value: int, version: int) -> str:
    """``str(ip_address(value))`` without building the address (IPv4 is the hot case)."""
    if version == 4:
        return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"
    return str(ipaddress.IPv6Address(value))


def is_buggy(addr: IPAddress) -> bool:
    """``.0`` and ``.255`` IPv4 addresses, which some old clients and routers mishandle."""
    return addr.version == 4 and int(addr) & 0xFF in (0, 255)


def buggy_count(ranges: RangeSet) -> int:
    """How many ``.0``/``.255`` addresses ``ranges`` holds (no enumeration)."""
    if ranges.version != 4:
        return 0
    total = 0
    for r in ranges.ranges:
        # Addresses ending in .0 lie at 256k; those ending in .255 at 256k+255.
        for residue in (0, 255):
            lo = r.first + ((residue - r.first) % 256)
            if lo <= r.last:
                total += (r.last - lo) // 256 + 1
    return total
