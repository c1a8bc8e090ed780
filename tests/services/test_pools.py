"""Pool edits: preview, refusal unless forced, forced moves in the ledger; delete; utilisation."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.models import Allocation, Pool
from lbprovider.db.session import transaction
from lbprovider.db.types import utcnow
from lbprovider.services.errors import (
    EditWouldMoveAllocations,
    InvalidInput,
    PoolInUse,
    PreconditionFailed,
)
from lbprovider.services.pools import (
    PoolFields,
    available_ips,
    delete_pool,
    fields_of,
    get_pool,
    preview_edit,
    update_pool,
    utilisation,
)
from lbprovider.services.reservations import create_reservation, expire_reservations
from tests.services.helpers import ACTOR, POLICY, allocate, ledger, make_pool


def edited(sessions: sessionmaker[Session], name: str, **changes: object) -> PoolFields:
    with sessions() as s:
        data = fields_of(get_pool(session=s, name=name))
    for k, v in changes.items():
        setattr(data, k, v)
    return data


def test_shrinking_a_pool_is_refused_with_the_preview(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "web", "127.30.0.0/29")
    for i in range(5):
        allocate(sessions, f"s{i}")
    data = edited(sessions, "web", ranges=["127.30.0.0/30"])
    with sessions() as s:
        moved = preview_edit(session=s, name="web", data=data)
    assert [d.ip for d in moved] == ["127.30.0.4"]
    with pytest.raises(EditWouldMoveAllocations) as err, transaction(sessions) as s:
        update_pool(session=s, name="web", data=data, actor=ACTOR, policy=POLICY)
    assert err.value.extra["displaced"][0]["name"] == "s4"
    with sessions() as s:
        assert get_pool(session=s, name="web").ranges == ["127.30.0.0/29"]


def test_forced_edit_moves_each_service_and_writes_the_ledger(
    sessions: sessionmaker[Session],
) -> None:
    make_pool(sessions, "web", "127.30.0.0/29")
    make_pool(sessions, "spare", "127.31.0.0/30", priority=200)
    for i in range(3):
        allocate(sessions, f"s{i}")
    data = edited(sessions, "web", ranges=["127.30.0.0/31"])
    with transaction(sessions) as s:
        _, moved = update_pool(
            session=s, name="web", data=data, actor=ACTOR, policy=POLICY, force=True
        )
    assert [d.ip for d in moved] == ["127.30.0.2"]
    rows = ledger(sessions, service_name="s2")
    assert rows == [
        ("allocated", "127.30.0.2", "s2"),
        ("reassigned", "127.30.0.2", "s2"),
        ("reassigned", "127.31.0.0", "s2"),
    ]
    with sessions() as s:
        live = {
            a.service_name: a.ip for a in s.scalars(select(Allocation).where(Allocation.active))
        }
    assert live == {"s0": "127.30.0.0", "s1": "127.30.0.1", "s2": "127.31.0.0"}


def test_growing_a_pool_needs_no_confirmation_and_checks_the_version(
    sessions: sessionmaker[Session],
) -> None:
    make_pool(sessions, "web", "127.30.0.0/30")
    allocate(sessions, "a")
    data = edited(sessions, "web", ranges=["127.30.0.0/29"])
    with pytest.raises(PreconditionFailed), transaction(sessions) as s:
        update_pool(session=s, name="web", data=data, actor=ACTOR, policy=POLICY, if_match=7)
    with transaction(sessions) as s:
        pool, moved = update_pool(
            session=s, name="web", data=data, actor=ACTOR, policy=POLICY, if_match=1
        )
    assert moved == [] and pool.version == 2


def test_overlapping_pools_are_refused(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "a", "127.30.0.0/24")
    with pytest.raises(InvalidInput, match="overlaps pool 'a'") as err:
        make_pool(sessions, "b", "127.30.0.128/25")
    assert err.value.field == "ranges"


def test_delete_refused_while_in_use_then_forced(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "web", "127.30.0.0/30")
    allocate(sessions, "a")
    with pytest.raises(PoolInUse), transaction(sessions) as s:
        delete_pool(session=s, name="web", actor=ACTOR)
    with transaction(sessions) as s:
        delete_pool(session=s, name="web", actor=ACTOR, force=True)
    with sessions() as s:
        assert s.scalars(select(Pool)).all() == []
    assert ledger(sessions)[-1][0] == "released"


def test_utilisation_of_a_huge_ipv6_pool_is_computed(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "dual", "127.30.0.0/24", "2001:db8::/64", avoid_buggy_ips=True)
    allocate(sessions, "a", families=(4, 6), family_policy="RequireDualStack")
    with transaction(sessions) as s:
        create_reservation(
            session=s, pool_name="dual", owner="ci", actor=ACTOR, policy=POLICY, family=4
        )
    with sessions() as s:
        u = {x.family: x for x in utilisation(session=s, pool=get_pool(session=s, name="dual"))}
    assert (u[4].total, u[4].used, u[4].reserved, u[4].free) == (254, 1, 1, 252)
    assert (u[6].total, u[6].used, u[6].free) == (2**64, 1, 2**64 - 1)


def test_available_lists_next_free_without_allocating(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "web", "127.30.0.0/24", exclusions=["127.30.0.1"])
    allocate(sessions, "a")
    with sessions() as s:
        assert available_ips(session=s, name="web", limit=3, policy=POLICY) == [
            "127.30.0.2",
            "127.30.0.3",
            "127.30.0.4",
        ]
        assert s.scalars(select(Allocation)).all().__len__() == 1


def test_reservation_is_never_auto_assigned_and_expires(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "web", "127.30.0.0/31")
    with transaction(sessions) as s:
        r = create_reservation(
            session=s,
            pool_name="web",
            owner="dns-pipeline",
            actor=ACTOR,
            policy=POLICY,
            ip="127.30.0.0",
            expires_at=utcnow() + timedelta(minutes=5),
        )
        assert r.ip == "127.30.0.0"
    assert allocate(sessions, "a").ips == ("127.30.0.1",)
    assert allocate(sessions, "b").reason.value == "OutOfIPs"
    with transaction(sessions) as s:
        assert expire_reservations(session=s, actor=ACTOR, now=utcnow() + timedelta(minutes=6)) == 1
    assert allocate(sessions, "b").ips == ("127.30.0.0",)
    assert ("unreserved", "127.30.0.0", "") in ledger(sessions)


def test_reservation_for_a_future_service_goes_to_it(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "web", "127.30.0.0/24")
    with transaction(sessions) as s:
        r = create_reservation(
            session=s,
            pool_name="web",
            owner="ci",
            actor=ACTOR,
            policy=POLICY,
            ip="127.30.0.50",
            service_namespace="default",
            service_name="shop",
        )
    assert allocate(sessions, "other").ips == ("127.30.0.0",)
    assert allocate(sessions, "shop").ips == (r.ip,)
