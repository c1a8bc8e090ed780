"""Address math, checked with hypothesis on IPv4 and IPv6."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbprovider.ipam.ranges import RangeError, RangeSet, buggy_count, ip_key, parse_range

v4 = st.integers(min_value=0, max_value=2**32 - 1)
v6 = st.integers(min_value=0, max_value=2**128 - 1)


def ranges_of(version: int) -> st.SearchStrategy[list[tuple[int, int]]]:
    top = 2**32 - 1 if version == 4 else 2**128 - 1
    pair = st.tuples(st.integers(0, top), st.integers(0, 2**20)).map(
        lambda t: (t[0], min(top, t[0] + t[1]))
    )
    return st.lists(pair, min_size=1, max_size=6)


def as_text(first: int, last: int, version: int) -> str:
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return f"{cls(first)}-{cls(last)}"


@pytest.mark.parametrize("version", [4, 6])
@given(data=st.data())
def test_offsets_round_trip(version: int, data: st.DataObject) -> None:
    pairs = data.draw(ranges_of(version))
    rs = RangeSet([parse_range(as_text(a, b, version)) for a, b in pairs], version)
    covered = set()
    for a, b in pairs:
        covered.add((a, b))
    assert rs.size == sum(r.size for r in rs.ranges)
    offset = data.draw(st.integers(0, rs.size - 1))
    ip = rs.ip_at(offset)
    assert rs.contains(ip)
    assert rs.offset_of(ip) == offset
    assert rs.first_offset_after(ip) == offset + 1
    assert any(a <= int(ip) <= b for a, b in pairs)


@pytest.mark.parametrize("version", [4, 6])
@given(data=st.data())
def test_merged_ranges_do_not_overlap(version: int, data: st.DataObject) -> None:
    pairs = data.draw(ranges_of(version))
    rs = RangeSet([parse_range(as_text(a, b, version)) for a, b in pairs], version)
    for left, right in zip(rs.ranges, rs.ranges[1:], strict=False):
        assert left.last + 1 < right.first


@given(v6, st.integers(0, 64))
def test_cidr_parse_matches_ipaddress(value: int, plen: int) -> None:
    net = ipaddress.IPv6Network((value, 128 - plen), strict=False)
    r = parse_range(str(net))
    assert (r.first, r.last, r.version) == (int(net.network_address), int(net.broadcast_address), 6)
    assert r.size == 2**plen


@given(v4, v4)
def test_ip_key_sorts_like_integers(a: int, b: int) -> None:
    ka, kb = ip_key(str(ipaddress.IPv4Address(a))), ip_key(str(ipaddress.IPv4Address(b)))
    assert (ka < kb) == (a < b)


@given(st.integers(0, 2**32 - 5000), st.integers(0, 4000))
def test_buggy_count_matches_enumeration(first: int, length: int) -> None:
    rs = RangeSet([parse_range(as_text(first, first + length, 4))], 4)
    expected = sum(1 for v in range(first, first + length + 1) if v & 0xFF in (0, 255))
    assert buggy_count(rs) == expected


def test_iter_from_is_lazy_on_a_64() -> None:
    rs = RangeSet([parse_range("2001:db8::/64")], 6)
    it = rs.iter_from(2**63)
    assert str(next(it)) == "2001:db8:0:0:8000::"


@pytest.mark.parametrize("bad", ["", "10.0.0.1/24", "10.0.0.9-10.0.0.1", "10.0.0.1-fd00::1", "x"])
def test_bad_ranges_are_refused(bad: str) -> None:
    with pytest.raises(RangeError):
        parse_range(bad)
