"""The allocation decision: plain data in, a ``Decision`` with a reason code out.

What the allocator needs to know about the world (who holds an address, what is reserved, what
was released when) it asks through the small ``StateView`` protocol, in batches, so the services
layer can answer from the database and a test can answer from a dict. It never writes: the
services layer turns a ``Decision`` into rows, and the database's unique constraints are the last
word when two decisions race.

Order of preference, per family:
explicit IPs (annotation / spec.loadBalancerIP) → the requested pool → pools restricted to this
Service by priority → auto-assign pools by priority. Inside a pool: an IP reserved for this
Service → its own recently released IP (sticky) → an IP already carrying its sharing key → never
used addresses in order → released addresses, least recently released first, after quarantine →
any gap left.

A failed decision never takes an address away: callers keep what a Service holds unless a
``Satisfied`` decision leaves it out.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from lbprovider.ipam.pool import PoolSpec
from lbprovider.ipam.ranges import IPAddress, RangeError, parse_ip

GAP_SCAN_LIMIT = 1 << 20
"""Most addresses a last-resort gap scan looks at in one pool before it reports OutOfIPs."""

CLAIM_BATCH = 16
"""Candidates in a claiming scan's first batch (then four times as many, up to the policy's)."""


class Reason(StrEnum):
    SATISFIED = "Satisfied"
    NO_POOL = "NoPool"
    POOL_SELECTOR_MISMATCH = "PoolSelectorMismatch"
    ALREADY_ALLOCATED = "AlreadyAllocated"
    SHARING_CONFLICT = "SharingConflict"
    OUT_OF_IPS = "OutOfIPs"
    INVALID_REQUEST = "InvalidRequest"


Port = tuple[str, int]
"""(protocol, port), e.g. ("TCP", 443)."""


@dataclass(frozen=True, order=True)
class ServiceRef:
    namespace: str
    name: str
    uid: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Holder:
    """A Service holding an address with these ports."""

    service: ServiceRef
    sharing_key: str | None
    ports: frozenset[Port]


@dataclass(frozen=True)
class Occupancy:
    """What stands on one address. An address missing from a view answer is free, never used."""

    holders: tuple[Holder, ...] = ()
    reserved: bool = False
    reserved_for: str | None = None
    reservation_owner: str = ""
    released_at: datetime | None = None
    released_by: str | None = None


@dataclass(frozen=True)
class Assignment:
    ip: str
    pool: str
    family: int


@dataclass(frozen=True)
class Request:
    service: ServiceRef
    ports: frozenset[Port]
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    service_labels: Mapping[str, str] = field(default_factory=dict)
    requested_ips: tuple[str, ...] = ()
    requested_pool: str | None = None
    sharing_key: str | None = None
    families: tuple[int, ...] = (4,)
    family_policy: str = "SingleStack"


@dataclass(frozen=True)
class Policy:
    """Time and tuning. ``spread`` > 1 picks at random among the first free candidates of a
    scan: callers raise it when a concurrent allocator just took the address they chose."""

    now: datetime
    hold: timedelta = timedelta(hours=1)
    quarantine: timedelta = timedelta(minutes=1)
    batch: int = 64
    spread: int = 1
    rng: random.Random = field(default_factory=random.Random)


@dataclass(frozen=True)
class Decision:
    reason: Reason
    message: str
    assignments: tuple[Assignment, ...] = ()

    @property
    def ok(self) -> bool:
        return self.reason is Reason.SATISFIED


class StateView(Protocol):
    """Read-only answers the allocator needs, each bounded in size."""

    def occupancy(self, ips: Sequence[str]) -> Mapping[str, Occupancy]:
        """What stands on each of ``ips`` (absent key: free, never used)."""
        ...

    def reserved_for_service(self, service: ServiceRef, family: int) -> Sequence[str]:
        """Addresses whose reservation names this Service."""
        ...

    def sticky_ip(self, service: ServiceRef, family: int) -> tuple[str, datetime] | None:
        """The address this namespace/name released last, and when."""
        ...

    def sharing_ips(self, key: str, pool: str, family: int) -> Sequence[str]:
        """Addresses in ``pool`` currently held under sharing key ``key``."""
        ...

    def high_water(self, pool: str, family: int) -> str | None:
        """The highest address of ``pool`` ever held (live or released)."""
        ...

    def released_lru(self, pool: str, family: int, limit: int) -> Sequence[str]:
        """Released, currently free addresses of ``pool``, least recently released first."""
        ...

    def claimable(self, ip: str) -> bool:
        """False while a concurrent writer is deciding on ``ip`` (skip it, like SKIP LOCKED)."""
        ...

    def scan(self, ips: Sequence[str], pool: str) -> tuple[Mapping[str, Occupancy], int]:
        """``occupancy`` of the first ``n`` of ``ips`` (candidates in ``pool``; n ≥ 1 for a
        non-empty list), and n.

        A view that can take a candidate's lock in the same round trip tries, in order, each
        address of ``ips`` that nothing stands on and stops at the first it locks (n is its
        position, ``claimable`` answers for every address tried without asking again); a view
        that cannot answers ``(occupancy(ips), len(ips))``. Either way the allocator decides
        exactly as with ``occupancy`` followed by ``claimable`` per candidate. (A view may also
        write the claim of the address it locked, when its caller knows that address is the
        decision; the allocator does not see the difference.)"""
        ...


def ports_overlap(a: Iterable[Port], b: Iterable[Port]) -> set[Port]:
    return set(a) & set(b)


def describe_family(family: int) -> str:
    return "IPv4" if family == 4 else "IPv6"


class Allocator:
    """Decides addresses for one request against a fixed set of pools and a ``StateView``."""

    def __init__(self, pools: Sequence[PoolSpec], view: StateView, policy: Policy) -> None:
        self.pools = {p.name: p for p in pools}
        self.view = view
        self.policy = policy

    # -- entry point -----------------------------------------------------------------------

    def allocate(self, request: Request, current: Sequence[Assignment] = ()) -> Decision:
        """Decide the full set of addresses ``request`` should hold, keeping ``current`` ones."""
        if request.requested_ips:
            return self._allocate_explicit(request, current)
        families = self._families(request)
        if isinstance(families, Decision):
            return families
        results = [self._allocate_family(request, f, current) for f in families]
        won = tuple(a for d in results for a in d.assignments)
        failed = [d for d in results if not d.ok]
        if not failed:
            return Decision(Reason.SATISFIED, _satisfied_message(won), won)
        if request.family_policy == "PreferDualStack" and won:
            note = "; ".join(d.message for d in failed)
            return Decision(
                Reason.SATISFIED, f"{_satisfied_message(won)} (also tried: {note})", won
            )
        return Decision(failed[0].reason, "; ".join(d.message for d in failed))

    def _families(self, request: Request) -> tuple[int, ...] | Decision:
        fams = tuple(dict.fromkeys(request.families)) or (4,)
        if any(f not in (4, 6) for f in fams):
            return Decision(Reason.INVALID_REQUEST, f"unknown IP families {request.families}")
        if request.family_policy == "SingleStack":
            return fams[:1]
        if request.family_policy in ("PreferDualStack", "RequireDualStack"):
            return tuple(dict.fromkeys((*fams, 4, 6)))
        return Decision(Reason.INVALID_REQUEST, f"unknown ipFamilyPolicy {request.family_policy!r}")

    # -- explicit addresses ----------------------------------------------------------------

    def _allocate_explicit(self, request: Request, current: Sequence[Assignment]) -> Decision:
        try:
            addrs = [parse_ip(t) for t in request.requested_ips]
        except RangeError as e:
            return Decision(Reason.INVALID_REQUEST, f"requested IP: {e}")
        versions = [a.version for a in addrs]
        if len(set(versions)) != len(versions):
            return Decision(
                Reason.INVALID_REQUEST,
                "at most one requested IP per family: " + ", ".join(map(str, addrs)),
            )
        held = {a.ip for a in current}
        assignments: list[Assignment] = []
        for addr in addrs:
            outcome = self._check_explicit(request, addr, str(addr) in held)
            if isinstance(outcome, Decision):
                return outcome
            assignments.append(outcome)
        won = tuple(assignments)
        return Decision(Reason.SATISFIED, _satisfied_message(won), won)

    def _pool_of(self, addr: IPAddress) -> PoolSpec | None:
        return next((p for p in self.pools.values() if p.contains(addr)), None)

    def _check_explicit(
        self, request: Request, addr: IPAddress, already_held: bool
    ) -> Assignment | Decision:
        pool = self._pool_of(addr)
        if pool is None:
            return Decision(Reason.NO_POOL, f"requested IP {addr} is in no pool")
        if request.requested_pool and pool.name != request.requested_pool:
            return Decision(
                Reason.INVALID_REQUEST,
                f"requested IP {addr} is in pool {pool.name!r}, not in requested pool "
                f"{request.requested_pool!r}",
            )
        assignment = Assignment(str(addr), pool.name, addr.version)
        if already_held:
            return assignment
        refusal = self._pool_refusal(request, pool, addr.version)
        if refusal:
            return refusal
        if not pool.usable(addr):
            return Decision(
                Reason.INVALID_REQUEST,
                f"requested IP {addr} is excluded from pool {pool.name!r}",
            )
        occ = self.view.occupancy([str(addr)]).get(str(addr), Occupancy())
        problem = self._occupancy_problem(request, str(addr), occ)
        return problem or assignment

    def _pool_refusal(self, request: Request, pool: PoolSpec, family: int) -> Decision | None:
        svc = request.service
        if not pool.serves(svc.namespace, request.namespace_labels, request.service_labels):
            return Decision(
                Reason.POOL_SELECTOR_MISMATCH,
                f"pool {pool.name!r} does not serve {svc.key} (restricted by namespace or "
                "selector)",
            )
        if pool.disabled:
            return Decision(
                Reason.NO_POOL, f"pool {pool.name!r} is disabled (draining): no new addresses"
            )
        if family not in pool.families:
            return Decision(
                Reason.NO_POOL, f"pool {pool.name!r} has no {describe_family(family)} range"
            )
        return None

    def _occupancy_problem(self, request: Request, ip: str, occ: Occupancy) -> Decision | None:
        """Why ``request`` cannot take ``ip`` (None: it can)."""
        me = request.service.key
        if occ.reserved and occ.reserved_for != me:
            return Decision(
                Reason.ALREADY_ALLOCATED,
                f"{ip} is reserved by {occ.reservation_owner or 'an operator'}",
            )
        others = [h for h in occ.holders if h.service.key != me]
        for h in others:
            if not request.sharing_key or h.sharing_key != request.sharing_key:
                return Decision(
                    Reason.ALREADY_ALLOCATED,
                    f"{ip} is held by {h.service.key}; both Services need the same sharing key "
                    "to share it",
                )
            clash = ports_overlap(h.ports, request.ports)
            if clash:
                return Decision(
                    Reason.SHARING_CONFLICT,
                    f"{ip} is shared with {h.service.key}, which already uses "
                    + ", ".join(f"{p}/{proto}" for proto, p in sorted(clash)),
                )
        if not others and occ.released_at and occ.released_by != me:
            until = occ.released_at + max(self.policy.hold, self.policy.quarantine)
            if self.policy.now < until:
                return Decision(
                    Reason.ALREADY_ALLOCATED,
                    f"{ip} was released by {occ.released_by} and is held for it until "
                    f"{until.isoformat(timespec='seconds')}",
                )
        return None

    # -- automatic choice ------------------------------------------------------------------

    def _allocate_family(
        self, request: Request, family: int, current: Sequence[Assignment]
    ) -> Decision:
        kept = next((a for a in current if a.family == family), None)
        if kept is None or self._must_move(request, kept):
            return self._fresh(request, family)
        occ = self.view.occupancy([kept.ip]).get(kept.ip, Occupancy())
        problem = self._occupancy_problem(request, kept.ip, Occupancy(holders=occ.holders))
        return problem or Decision(Reason.SATISFIED, "", (kept,))

    def _fresh(self, request: Request, family: int) -> Decision:
        pools = self._candidate_pools(request, family)
        if isinstance(pools, Decision):
            return pools
        for pool in pools:
            ip = self._pick(request, pool, family)
            if ip is not None:
                return Decision(Reason.SATISFIED, "", (Assignment(ip, pool.name, family),))
        names = ", ".join(repr(p.name) for p in pools)
        return Decision(
            Reason.OUT_OF_IPS, f"no free {describe_family(family)} address in pools {names}"
        )

    def _must_move(self, request: Request, kept: Assignment) -> bool:
        """A held address moves only when the request names another pool, or a forced pool
        edit left it outside its pool (edits that would do so are refused unless forced)."""
        if request.requested_pool and request.requested_pool != kept.pool:
            return True
        return self._displaced(request, kept)

    def _displaced(self, request: Request, kept: Assignment) -> bool:
        pool = self.pools.get(kept.pool)
        if pool is None or not pool.usable(parse_ip(kept.ip)):
            return True
        svc = request.service
        return not pool.serves(svc.namespace, request.namespace_labels, request.service_labels)

    def _candidate_pools(self, request: Request, family: int) -> list[PoolSpec] | Decision:
        if request.requested_pool:
            pool = self.pools.get(request.requested_pool)
            if pool is None:
                return Decision(Reason.NO_POOL, f"pool {request.requested_pool!r} does not exist")
            return self._pool_refusal(request, pool, family) or [pool]
        svc = request.service
        eligible = [
            p
            for p in self.pools.values()
            if p.auto_assign
            and not p.disabled
            and family in p.families
            and p.serves(svc.namespace, request.namespace_labels, request.service_labels)
        ]
        if not eligible:
            return Decision(
                Reason.NO_POOL,
                f"no enabled auto-assign pool with {describe_family(family)} ranges serves "
                f"{svc.key}",
            )
        eligible.sort(key=lambda p: (not p.restricted, p.priority, p.name))
        return eligible

    def _pick(self, request: Request, pool: PoolSpec, family: int) -> str | None:
        """The first address of ``pool`` that ``request`` may take, in preference order."""
        for ips in self._preferences(request, pool, family):
            found = self._first_free(request, pool, ips)
            if found is not None:
                return found
        return None

    def _preferences(
        self, request: Request, pool: PoolSpec, family: int
    ) -> Iterator[Iterable[str]]:
        view, policy = self.view, self.policy
        yield view.reserved_for_service(request.service, family)
        sticky = view.sticky_ip(request.service, family)
        if sticky and policy.now < sticky[1] + policy.hold:
            yield [sticky[0]]
        if request.sharing_key:
            yield view.sharing_ips(request.sharing_key, pool.name, family)
        ranges = pool.by_family[family]
        high = view.high_water(pool.name, family)
        start = ranges.first_offset_after(high) if high else 0
        yield _Usable(pool.usable_from(family, start))
        yield view.released_lru(pool.name, family, policy.batch * 4)
        yield _Usable(itertools.islice(pool.usable_from(family, 0), GAP_SCAN_LIMIT))

    def _first_free(self, request: Request, pool: PoolSpec, ips: Iterable[str]) -> str | None:
        free = list(itertools.islice(self.free_in(request, pool, ips), self.policy.spread))
        return self.policy.rng.choice(free) if free else None

    def free_in(
        self, request: Request, pool: PoolSpec, ips: Iterable[str], *, claim: bool = True
    ) -> Iterator[str]:
        """Addresses among ``ips`` that ``request`` may take, lazily, in the given order.
        With ``claim``, addresses a concurrent writer is deciding on are skipped."""
        candidates = (
            iter(ips)
            if isinstance(ips, _Usable)
            else (ip for ip in ips if pool.usable(parse_ip(ip)))
        )
        # The first candidate is usually free: ask about few, then more. A claiming scan stops
        # at the first address it locks, so it starts with enough candidates to step over what
        # concurrent allocators just took or hold (preparing one costs more than checking it).
        size = min(CLAIM_BATCH, self.policy.batch) if claim else 1
        pending: list[str] = []
        while batch := pending + list(itertools.islice(candidates, size - len(pending))):
            size = min(size * 4, self.policy.batch)
            if claim:
                occ, seen = self.view.scan(batch, pool.name)
            else:
                occ, seen = self.view.occupancy(batch), len(batch)
            pending = batch[seen:]
            for ip in batch[:seen]:
                if self._occupancy_problem(request, ip, occ.get(ip, Occupancy())) is None:
                    if claim and not self.view.claimable(ip):
                        continue
                    yield ip

    def check(self, request: Request, ip: str, occupancy: Occupancy) -> Decision | None:
        """Re-check one chosen address against fresh occupancy (None: still free for it)."""
        return self._occupancy_problem(request, ip, occupancy)

    def available(self, pool: PoolSpec, family: int, limit: int) -> list[str]:
        """The next ``limit`` addresses a new Service would get from ``pool``, in order."""
        nobody = Request(service=ServiceRef("", ""), ports=frozenset())
        ranges = pool.by_family[family]
        high = self.view.high_water(pool.name, family)
        start = ranges.first_offset_after(high) if high else 0
        order = itertools.chain(
            (str(a) for a in ranges.iter_from(start)),
            self.view.released_lru(pool.name, family, limit * 4),
            (str(a) for a in itertools.islice(ranges.iter_from(0), GAP_SCAN_LIMIT)),
        )
        free = _unique(self.free_in(nobody, pool, order, claim=False))
        return list(itertools.islice(free, limit))

    def adopt(self, request: Request, current: Sequence[Assignment] = ()) -> Decision:
        """Record addresses a Service already has (``requested_ips`` = its status).

        Adoption never moves anything: pool state (disabled, selectors, auto-assign,
        exclusions) does not matter, only another holder or a reservation does."""
        held = {a.ip for a in current}
        won: list[Assignment] = []
        for text in request.requested_ips:
            try:
                addr = parse_ip(text)
            except RangeError as e:
                return Decision(Reason.INVALID_REQUEST, f"status IP: {e}")
            pool = self._pool_of(addr)
            if pool is None:
                return Decision(
                    Reason.NO_POOL, f"{addr} (already in status) is in no pool: add a pool with it"
                )
            if str(addr) not in held:
                occ = self.view.occupancy([str(addr)]).get(str(addr), Occupancy())
                problem = self._occupancy_problem(request, str(addr), occ)
                if problem:
                    return problem
            won.append(Assignment(str(addr), pool.name, addr.version))
        return Decision(Reason.SATISFIED, "adopted " + ", ".join(a.ip for a in won), tuple(won))


class _Usable:
    """Candidates already known usable in their pool (``PoolSpec.usable_from``)."""

    def __init__(self, items: Iterable[str]) -> None:
        self.items = items

    def __iter__(self) -> Iterator[str]:
        return iter(self.items)


def _unique(items: Iterable[str]) -> Iterator[str]:
    """``items`` without repeats, lazily (the orders above overlap)."""
    seen: set[str] = set()
    for item in items:
        if item not in seen:
            seen.add(item)
            yield item


def _satisfied_message(assignments: Sequence[Assignment]) -> str:
    return "allocated " + ", ".join(f"{a.ip} from pool {a.pool!r}" for a in assignments)
