"""Allocation use cases against real databases (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.models import Allocation, AllocationPort, AuditEntry, IPLease, LedgerEntry
from lbprovider.db.session import transaction
from lbprovider.db.types import utcnow
from lbprovider.ipam.allocator import Reason
from lbprovider.services.allocations import adopt_service, release_service
from tests.services.helpers import ACTOR, POLICY, allocate, count, ledger, make_pool, svc_request


def test_allocate_writes_allocation_lease_ports_and_ledger(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "web", "127.20.0.0/30")
    out = allocate(sessions, "shop", ports=(80, 443))
    assert out.reason is Reason.SATISFIED and out.ips == ("127.20.0.0",)
    assert ledger(sessions) == [("allocated", "127.20.0.0", "shop")]
    with sessions() as s:
        row = s.scalars(select(Allocation)).one()
        assert (row.service_namespace, row.pool_name, row.active) == ("default", "web", True)
        assert row.ports == [["TCP", 80], ["TCP", 443]]
        assert s.scalars(select(LedgerEntry)).one().request_id == "req-1"
    assert count(sessions, AllocationPort) == 2 and count(sessions, IPLease) == 1


def test_reconcile_again_changes_nothing(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "web", "127.20.0.0/24")
    first = allocate(sessions, "shop")
    again = allocate(sessions, "shop")
    assert again.ips == first.ips and not again.changed
    assert len(ledger(sessions)) == 1


def test_database_refuses_a_second_holder_of_ip_protocol_port(
    sessions: sessionmaker[Session],
) -> None:
    make_pool(sessions, "web", "127.20.0.0/30")
    allocate(sessions, "shop")
    with pytest.raises(IntegrityError), transaction(sessions) as s:
        s.add(
            Allocation(
                ip="127.20.0.0",
                ip_key="x",
                pool_id=1,
                pool_name="web",
                family=4,
                service_namespace="default",
                service_name="intruder",
            )
        )
        s.flush()
        s.add(AllocationPort(allocation_id=2, ip="127.20.0.0", protocol="TCP", port=80))
        s.flush()


def test_database_refuses_two_live_allocations_per_service_and_family(
    sessions: sessionmaker[Session],
) -> None:
    make_pool(sessions, "web", "127.20.0.0/30")
    allocate(sessions, "shop")
    with pytest.raises(IntegrityError), transaction(sessions) as s:
        s.add(
            Allocation(
                ip="127.20.0.1",
                ip_key="y",
                pool_id=1,
                pool_name="web",
                family=4,
                service_namespace="default",
                service_name="shop",
            )
        )
        s.flush()


def test_release_then_recreate_gets_the_same_ip_back(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "web", "127.20.0.0/24")
    ip = allocate(sessions, "shop").ips
    allocate(sessions, "other")
    with transaction(sessions) as s:
        assert release_service(
            session=s, namespace="default", name="shop", actor=ACTOR, reason="Service deleted"
        ) == list(ip)
    assert count(sessions, IPLease) == 1
    assert allocate(sessions, "newcomer").ips != ip, "quarantined/held for shop"
    assert allocate(sessions, "shop").ips == ip
    assert [a for a, *_ in ledger(sessions, service_name="shop")] == [
        "allocated",
        "released",
        "allocated",
    ]


def test_held_address_goes_to_others_only_after_hold(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "tiny", "127.20.0.0/32")
    allocate(sessions, "shop")
    with transaction(sessions) as s:
        release_service(session=s, namespace="default", name="shop", actor=ACTOR, reason="gone")
    assert allocate(sessions, "b").reason is Reason.OUT_OF_IPS
    later = utcnow() + POLICY.hold + timedelta(seconds=1)
    with transaction(sessions) as s:
        from lbprovider.services.allocations import allocate_service

        out = allocate_service(
            session=s, request=svc_request("b"), actor=ACTOR, policy=POLICY, now=later
        )
    assert out.ips == ("127.20.0.0",)


def test_failed_decision_keeps_what_the_service_holds(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "web", "127.20.0.0/30")
    first = allocate(sessions, "shop")
    bad = allocate(sessions, "shop", requested_pool="missing")
    assert bad.reason is Reason.NO_POOL and bad.ips == first.ips and not bad.changed
    assert count(sessions, Allocation) == 1


def test_sharing_key_puts_two_services_on_one_ip(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "web", "127.20.0.0/30")
    a = allocate(sessions, "dns-tcp", sharing_key="dns", ports=(53,))
    with transaction(sessions) as s:
        from dataclasses import replace

        from lbprovider.services.allocations import allocate_service

        req = replace(svc_request("dns-udp", sharing_key="dns"), ports=frozenset({("UDP", 53)}))
        b = allocate_service(session=s, request=req, actor=ACTOR, policy=POLICY)
    assert a.ips == b.ips
    with transaction(sessions) as s:
        release_service(session=s, namespace="default", name="dns-tcp", actor=ACTOR, reason="x")
    assert count(sessions, IPLease) == 1, "the lease stays while one holder remains"


def test_adopt_records_an_existing_ip_without_change(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "web", "127.20.0.0/24", disabled=True)
    with transaction(sessions) as s:
        out = adopt_service(
            session=s,
            request=svc_request("legacy", requested_ips=("127.20.0.77",)),
            actor=ACTOR,
            policy=POLICY,
        )
    assert out.reason is Reason.SATISFIED and out.ips == ("127.20.0.77",)
    assert ledger(sessions) == [("adopted", "127.20.0.77", "legacy")]


def test_adopt_reports_a_conflict_and_overwrites_nothing(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "web", "127.20.0.0/24")
    owner = allocate(sessions, "owner")
    with transaction(sessions) as s:
        out = adopt_service(
            session=s,
            request=svc_request("thief", requested_ips=owner.ips),
            actor=ACTOR,
            policy=POLICY,
        )
    assert out.reason is Reason.ALREADY_ALLOCATED and "default/owner" in out.decision.message
    with sessions() as s:
        assert [a.service_name for a in s.scalars(select(Allocation))] == ["owner"]


def test_ledger_and_audit_are_append_only_records(sessions: sessionmaker[Session]) -> None:
    make_pool(sessions, "web", "127.20.0.0/24")
    with sessions() as s:
        audit = s.scalars(select(AuditEntry)).one()
    assert (audit.action, audit.actor, audit.request_id) == ("pool.create", "test", "req-1")
    assert audit.after is not None and audit.after["ranges"] == ["127.20.0.0/24"]
