"""Table-driven allocator decisions, one narrative id per case (MetalLB style)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from lbprovider.ipam.allocator import (
    Allocator,
    Assignment,
    Occupancy,
    Policy,
    Reason,
    Request,
    ServiceRef,
)
from lbprovider.ipam.pool import PoolSpec
from tests.ipam.memview import MemoryView

NOW = datetime(2026, 1, 1, tzinfo=UTC)
S1, S2, S3 = ServiceRef("a", "s1"), ServiceRef("a", "s2"), ServiceRef("b", "s3")
HTTP = frozenset({("TCP", 80)})
DNS_TCP, DNS_UDP = frozenset({("TCP", 53)}), frozenset({("UDP", 53)})


def pool(name: str, *ranges: str, **kw: object) -> PoolSpec:
    return PoolSpec(name=name, ranges=ranges, **kw)  # type: ignore[arg-type]


@dataclass
class Case:
    id: str
    pools: list[PoolSpec]
    request: Request
    reason: Reason
    ips: tuple[str, ...] = ()
    setup: list[tuple[str, str, ServiceRef, frozenset[tuple[str, int]], str | None]] = field(
        default_factory=list
    )
    current: tuple[Assignment, ...] = ()
    reservations: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    released: dict[str, tuple[datetime, str]] = field(default_factory=dict)
    message: str = ""


CASES = [
    Case(
        "first service gets the first address",
        [pool("p", "10.0.0.0/30")],
        Request(S1, HTTP),
        Reason.SATISFIED,
        ("10.0.0.0",),
    ),
    Case(
        "avoid_buggy_ips skips .0",
        [pool("p", "10.0.0.0/24", avoid_buggy_ips=True)],
        Request(S1, HTTP),
        Reason.SATISFIED,
        ("10.0.0.1",),
    ),
    Case(
        "avoid_buggy_ips skips .255 at the end of a range",
        [pool("p", "10.0.0.255-10.0.1.1", avoid_buggy_ips=True)],
        Request(S1, HTTP),
        Reason.SATISFIED,
        ("10.0.1.1",),
    ),
    Case(
        "s2 can't take s1's IP",
        [pool("p", "10.0.0.0/30")],
        Request(S2, HTTP, requested_ips=("10.0.0.1",)),
        Reason.ALREADY_ALLOCATED,
        setup=[("10.0.0.1", "p", S1, HTTP, None)],
        message="held by a/s1",
    ),
    Case(
        "s2 skips s1's address when choosing",
        [pool("p", "10.0.0.0/30")],
        Request(S2, HTTP),
        Reason.SATISFIED,
        ("10.0.0.1",),
        setup=[("10.0.0.0", "p", S1, HTTP, None)],
    ),
    Case(
        "same sharing key and other ports share the address",
        [pool("p", "10.0.0.0/30")],
        Request(S2, frozenset({("TCP", 443)}), sharing_key="k"),
        Reason.SATISFIED,
        ("10.0.0.0",),
        setup=[("10.0.0.0", "p", S1, HTTP, "k")],
    ),
    Case(
        "TCP 53 and UDP 53 may share",
        [pool("p", "10.0.0.0/30")],
        Request(S2, DNS_UDP, sharing_key="dns", requested_ips=("10.0.0.0",)),
        Reason.SATISFIED,
        ("10.0.0.0",),
        setup=[("10.0.0.0", "p", S1, DNS_TCP, "dns")],
    ),
    Case(
        "same key but the same port is a sharing conflict",
        [pool("p", "10.0.0.0/30")],
        Request(S2, HTTP, sharing_key="k", requested_ips=("10.0.0.0",)),
        Reason.SHARING_CONFLICT,
        setup=[("10.0.0.0", "p", S1, HTTP, "k")],
        message="80/TCP",
    ),
    Case(
        "different sharing keys never share",
        [pool("p", "10.0.0.0/30")],
        Request(S2, frozenset({("TCP", 443)}), sharing_key="k2", requested_ips=("10.0.0.0",)),
        Reason.ALREADY_ALLOCATED,
        setup=[("10.0.0.0", "p", S1, HTTP, "k1")],
    ),
    Case(
        "auto-assign with a key whose ports clash takes a new address",
        [pool("p", "10.0.0.0/30")],
        Request(S2, HTTP, sharing_key="k"),
        Reason.SATISFIED,
        ("10.0.0.1",),
        setup=[("10.0.0.0", "p", S1, HTTP, "k")],
    ),
    Case(
        "a restricted pool never serves another namespace, even on explicit request",
        [pool("p", "10.0.0.0/30", namespaces=frozenset({"other"}))],
        Request(S1, HTTP, requested_ips=("10.0.0.1",)),
        Reason.POOL_SELECTOR_MISMATCH,
    ),
    Case(
        "a requested restricted pool of another namespace is a selector mismatch",
        [pool("p", "10.0.0.0/30", namespaces=frozenset({"other"}))],
        Request(S1, HTTP, requested_pool="p"),
        Reason.POOL_SELECTOR_MISMATCH,
    ),
    Case(
        "restricted pools come before auto-assign pools",
        [
            pool("general", "10.0.0.0/30", priority=1),
            pool("team", "10.1.0.0/30", namespaces=frozenset({"a"}), priority=50),
        ],
        Request(S1, HTTP),
        Reason.SATISFIED,
        ("10.1.0.0",),
    ),
    Case(
        "service selector restricts a pool",
        [
            pool("general", "10.0.0.0/30"),
            pool("web", "10.1.0.0/30", service_selector={"tier": "web"}),
        ],
        Request(S1, HTTP, service_labels={"tier": "web"}),
        Reason.SATISFIED,
        ("10.1.0.0",),
    ),
    Case(
        "namespace selector restricts a pool",
        [pool("prod", "10.1.0.0/30", namespace_selector={"env": "prod"})],
        Request(S1, HTTP, namespace_labels={"env": "dev"}),
        Reason.NO_POOL,
    ),
    Case(
        "lower priority number is tried first",
        [pool("b", "10.0.0.0/30", priority=20), pool("a", "10.1.0.0/30", priority=10)],
        Request(S1, HTTP),
        Reason.SATISFIED,
        ("10.1.0.0",),
    ),
    Case(
        "a pool without auto-assign only serves explicit requests",
        [pool("manual", "10.0.0.0/30", auto_assign=False)],
        Request(S1, HTTP),
        Reason.NO_POOL,
    ),
    Case(
        "a pool without auto-assign serves a request naming it",
        [pool("manual", "10.0.0.0/30", auto_assign=False)],
        Request(S1, HTTP, requested_pool="manual"),
        Reason.SATISFIED,
        ("10.0.0.0",),
    ),
    Case(
        "a disabled pool gives no new address",
        [pool("p", "10.0.0.0/30", disabled=True)],
        Request(S1, HTTP),
        Reason.NO_POOL,
    ),
    Case(
        "a disabled pool keeps what a Service holds",
        [pool("p", "10.0.0.0/30", disabled=True)],
        Request(S1, HTTP),
        Reason.SATISFIED,
        ("10.0.0.2",),
        setup=[("10.0.0.2", "p", S1, HTTP, None)],
        current=(Assignment("10.0.0.2", "p", 4),),
    ),
    Case(
        "restart keeps every IP",
        [pool("p", "10.0.0.0/24")],
        Request(S1, HTTP),
        Reason.SATISFIED,
        ("10.0.0.77",),
        setup=[("10.0.0.77", "p", S1, HTTP, None)],
        current=(Assignment("10.0.0.77", "p", 4),),
    ),
    Case(
        "an unknown requested pool is NoPool",
        [pool("p", "10.0.0.0/30")],
        Request(S1, HTTP, requested_pool="nope"),
        Reason.NO_POOL,
    ),
    Case(
        "an address in no pool is NoPool",
        [pool("p", "10.0.0.0/30")],
        Request(S1, HTTP, requested_ips=("192.0.2.1",)),
        Reason.NO_POOL,
    ),
    Case(
        "a malformed address is an invalid request",
        [pool("p", "10.0.0.0/30")],
        Request(S1, HTTP, requested_ips=("10.0.0.300",)),
        Reason.INVALID_REQUEST,
    ),
    Case(
        "two addresses of one family is an invalid request",
        [pool("p", "10.0.0.0/30")],
        Request(S1, HTTP, requested_ips=("10.0.0.1", "10.0.0.2")),
        Reason.INVALID_REQUEST,
    ),
    Case(
        "an excluded address is never handed out",
        [pool("p", "10.0.0.0/30", exclusions=("10.0.0.0-10.0.0.1",))],
        Request(S1, HTTP),
        Reason.SATISFIED,
        ("10.0.0.2",),
    ),
    Case(
        "an exhausted pool is OutOfIPs",
        [pool("p", "10.0.0.0/31")],
        Request(S3, HTTP),
        Reason.OUT_OF_IPS,
        setup=[("10.0.0.0", "p", S1, HTTP, None), ("10.0.0.1", "p", S2, HTTP, None)],
    ),
    Case(
        "a reserved address is not auto-assigned",
        [pool("p", "10.0.0.0/30")],
        Request(S1, HTTP),
        Reason.SATISFIED,
        ("10.0.0.1",),
        reservations={"10.0.0.0": (None, "pipeline")},
    ),
    Case(
        "a reserved address goes to the Service the reservation names",
        [pool("p", "10.0.0.0/30")],
        Request(S1, HTTP),
        Reason.SATISFIED,
        ("10.0.0.2",),
        reservations={"10.0.0.2": ("a/s1", "pipeline")},
    ),
    Case(
        "an address reserved for someone else can't be requested",
        [pool("p", "10.0.0.0/30")],
        Request(S2, HTTP, requested_ips=("10.0.0.2",)),
        Reason.ALREADY_ALLOCATED,
        reservations={"10.0.0.2": ("a/s1", "pipeline")},
        message="reserved by pipeline",
    ),
    Case(
        "a recreated Service gets its previous IP back within the hold time",
        [pool("p", "10.0.0.0/24")],
        Request(S1, HTTP),
        Reason.SATISFIED,
        ("10.0.0.9",),
        released={"10.0.0.9": (NOW - timedelta(minutes=5), "a/s1")},
    ),
    Case(
        "after the hold time a recreated Service gets a fresh address",
        [pool("p", "10.0.0.0/24")],
        Request(S1, HTTP),
        Reason.SATISFIED,
        ("10.0.0.10",),
        released={"10.0.0.9": (NOW - timedelta(hours=2), "a/s1")},
    ),
    Case(
        "another Service can't take a held address",
        [pool("p", "10.0.0.0/24")],
        Request(S2, HTTP, requested_ips=("10.0.0.9",)),
        Reason.ALREADY_ALLOCATED,
        released={"10.0.0.9": (NOW - timedelta(minutes=5), "a/s1")},
    ),
    Case(
        "released addresses are reused least recently released first",
        [pool("p", "10.0.0.0/30")],
        Request(S3, HTTP),
        Reason.SATISFIED,
        ("10.0.0.2",),
        setup=[("10.0.0.0", "p", S1, HTTP, None), ("10.0.0.3", "p", S2, HTTP, None)],
        released={
            "10.0.0.1": (NOW - timedelta(hours=3), "x/old"),
            "10.0.0.2": (NOW - timedelta(hours=5), "x/older"),
        },
    ),
    Case(
        "never-used addresses come before released ones",
        [pool("p", "10.0.0.0/29")],
        Request(S3, HTTP),
        Reason.SATISFIED,
        ("10.0.0.2",),
        released={
            "10.0.0.0": (NOW - timedelta(hours=5), "x/old"),
            "10.0.0.1": (NOW - timedelta(hours=5), "x/old2"),
        },
    ),
    Case(
        "RequireDualStack gets one address per family",
        [pool("p", "10.0.0.0/30", "fd00::/64")],
        Request(S1, HTTP, families=(4, 6), family_policy="RequireDualStack"),
        Reason.SATISFIED,
        ("10.0.0.0", "fd00::"),
    ),
    Case(
        "RequireDualStack gets nothing without an IPv6 pool",
        [pool("p", "10.0.0.0/30")],
        Request(S1, HTTP, families=(4, 6), family_policy="RequireDualStack"),
        Reason.NO_POOL,
    ),
    Case(
        "PreferDualStack takes what exists",
        [pool("p", "10.0.0.0/30")],
        Request(S1, HTTP, families=(4, 6), family_policy="PreferDualStack"),
        Reason.SATISFIED,
        ("10.0.0.0",),
    ),
    Case(
        "IPv6 single stack from a /64",
        [pool("p", "2001:db8::/64")],
        Request(S1, HTTP, families=(6,)),
        Reason.SATISFIED,
        ("2001:db8::",),
    ),
    Case(
        "requesting another pool moves the Service there",
        [pool("a", "10.0.0.0/30"), pool("b", "10.1.0.0/30")],
        Request(S1, HTTP, requested_pool="b"),
        Reason.SATISFIED,
        ("10.1.0.0",),
        setup=[("10.0.0.1", "a", S1, HTTP, None)],
        current=(Assignment("10.0.0.1", "a", 4),),
    ),
]


@dataclass
class PartialScanView(MemoryView):
    """Answers ``scan`` for two candidates at a time, as a view that stops at the address it
    locked does: the allocator must offer the rest again, in order."""

    scanned: list[list[str]] = field(default_factory=list)

    def scan(self, ips: Sequence[str], pool: str) -> tuple[Mapping[str, Occupancy], int]:
        self.scanned.append(list(ips))
        return self.occupancy(ips[:2]), min(2, len(ips))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_allocation_decision(case: Case) -> None:
    decide(case, MemoryView(reservations=dict(case.reservations), released=dict(case.released)))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_scan_answering_part_of_a_batch_decides_the_same(case: Case) -> None:
    decide(
        case, PartialScanView(reservations=dict(case.reservations), released=dict(case.released))
    )


def test_candidates_a_scan_did_not_answer_are_offered_again_in_order() -> None:
    view = PartialScanView()
    for i in range(5):
        view.hold(f"10.0.0.{i}", "p", S2, set(HTTP))
    view.released["10.0.0.9"] = (NOW - timedelta(days=1), "a/gone")  # high water .9
    view.pools_of["10.0.0.9"] = "p"
    for i in range(10, 13):  # above the high water, reserved by an operator
        view.reservations[f"10.0.0.{i}"] = (None, "ops")
    decision = Allocator([pool("p", "10.0.0.0/24")], view, Policy(now=NOW)).allocate(
        Request(S1, HTTP)
    )
    assert [a.ip for a in decision.assignments] == ["10.0.0.13"]
    firsts = [batch[0] for batch in view.scanned]
    assert firsts == ["10.0.0.10", "10.0.0.12"], view.scanned


def decide(case: Case, view: MemoryView) -> None:
    for ip, pool_name, svc, ports, key in case.setup:
        view.hold(ip, pool_name, svc, set(ports), key)
    for ip in case.released:
        view.pools_of[ip] = case.pools[0].name
    allocator = Allocator(case.pools, view, Policy(now=NOW))
    decision = allocator.allocate(case.request, case.current)
    assert decision.reason is case.reason, decision.message
    assert tuple(a.ip for a in decision.assignments) == case.ips
    assert case.message in decision.message
    assert decision.message, "every decision explains itself"


def test_huge_ipv6_pool_is_as_fast_as_a_small_one() -> None:
    """A /64 with 5,000 holders is never enumerated: allocation costs about what a /24 costs."""

    def timed(spec: PoolSpec) -> float:
        view = MemoryView()
        ranges = spec.by_family[spec.families[0]]
        for i in range(5000):
            view.hold(str(ranges.ip_at(i)), spec.name, ServiceRef("x", f"h{i}"), {("TCP", 80)})
        allocator = Allocator([spec], view, Policy(now=NOW))
        start = time.perf_counter()
        for i in range(50):
            d = allocator.allocate(
                Request(ServiceRef("n", f"s{i}"), HTTP, families=(spec.families[0],))
            )
            assert d.ok
            view.hold(d.assignments[0].ip, spec.name, ServiceRef("n", f"s{i}"), {("TCP", 80)})
        return time.perf_counter() - start

    small = timed(pool("v4", "10.0.0.0/16"))
    big = timed(pool("v6", "2001:db8::/64"))
    assert big < small * 5 + 0.05


def test_pool_edit_preview_lists_what_falls_out() -> None:
    from lbprovider.ipam.preview import Held, preview_pool_edit

    new = pool("p", "10.0.0.0/29", exclusions=("10.0.0.5",), namespaces=frozenset({"a"}))
    held = [Held("10.0.0.1", S1), Held("10.0.0.5", S2), Held("10.0.0.9", S1), Held("10.0.0.2", S3)]
    out = {d.ip: d.why for d in preview_pool_edit(new, held)}
    assert set(out) == {"10.0.0.5", "10.0.0.9", "10.0.0.2"}
    assert "outside" in out["10.0.0.9"] and "excluded" in out["10.0.0.5"]
    assert "no longer serve b/s3" in out["10.0.0.2"]


def test_capacity_counts_without_enumerating() -> None:
    assert pool("p", "10.0.0.0/24", avoid_buggy_ips=True).capacity(4) == 254
    assert (
        pool("p", "10.0.0.0/23", avoid_buggy_ips=True, exclusions=("10.0.0.0/28",)).capacity(4)
        == 512 - 16 - 3
    )
    assert pool("p", "2001:db8::/64").capacity(6) == 2**64
    assert pool("p", "2001:db8::/64", exclusions=("2001:db8::/120",)).capacity(6) == 2**64 - 256


def test_pool_validation_names_overlaps() -> None:
    from lbprovider.ipam.pool import validate_pool

    a = pool("a", "10.0.0.0/24")
    assert validate_pool(pool("b", "10.0.0.128/25"), [a]) == [
        "ranges: 10.0.0.128/25 overlaps pool 'a'"
    ]
    assert "not a CIDR" in validate_pool(pool("c", "10.0.0.1/24"))[0]
    assert validate_pool(pool("d", "10.0.1.0/24"), [a]) == []


def test_listing_available_addresses_stops_at_the_limit() -> None:
    """`available` looks at a handful of candidates, not the whole pool."""

    class Counting(MemoryView):
        asked = 0

        def occupancy(self, ips):  # type: ignore[no-untyped-def]
            self.asked += len(ips)
            return super().occupancy(ips)

    view = Counting()
    spec = pool("big", "10.0.0.0/8")
    assert Allocator([spec], view, Policy(now=NOW)).available(spec, 4, 3) == [
        "10.0.0.0",
        "10.0.0.1",
        "10.0.0.2",
    ]
    assert view.asked < 100


@pytest.mark.parametrize(
    "spec",
    [
        pool("p", "10.0.0.250-10.0.2.3", "10.0.9.0/30", avoid_buggy_ips=True),
        pool("p", "10.0.0.0/23", exclusions=("10.0.0.5", "10.0.0.250-10.0.1.2")),
        pool("p", "2001:db8::fffe-2001:db8::1:3", exclusions=("2001:db8::1:0",)),
    ],
    ids=["buggy, two ranges", "exclusions", "ipv6"],
)
def test_candidates_are_the_usable_addresses_in_range_order(spec: PoolSpec) -> None:
    family = spec.families[0]
    ranges = spec.by_family[family]
    for start in range(0, ranges.size, 7):
        expected = [str(a) for a in ranges.iter_from(start) if spec.usable(a)]
        assert list(spec.usable_from(family, start)) == expected
