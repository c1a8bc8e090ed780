"""Eight allocator processes against one PostgreSQL pool: zero duplicates, ever (in ORM
session transactions and on Core connections, the two units of work ``allocate_service``
takes)."""

from __future__ import annotations

import multiprocessing as mp
import threading

import pytest
from sqlalchemy import func, select, text

from lbprovider.db.models import Allocation
from lbprovider.db.session import (
    connection_transaction,
    make_engine,
    session_factory,
    transaction,
)
from lbprovider.ipam.allocator import Request, ServiceRef
from lbprovider.services.allocations import allocate_service
from lbprovider.services.context import Actor, IPPolicy
from lbprovider.services.pools import PoolFields, create_pool

WORKERS, PER_WORKER = 8, 40


UNITS = {"session": transaction, "connection": connection_transaction}


def _worker(url: str, worker: int, out: mp.Queue, unit: str) -> None:  # type: ignore[type-arg]
    engine = make_engine(url)
    factory = session_factory(engine)
    got = []
    for i in range(PER_WORKER):
        req = Request(service=ServiceRef(f"w{worker}", f"s{i}"), ports=frozenset({("TCP", 80)}))
        with UNITS[unit](factory) as s:
            got.append(
                allocate_service(
                    session=s, request=req, actor=Actor(f"w{worker}"), policy=IPPolicy()
                ).ips[0]
            )
    engine.dispose()
    out.put(got)


@pytest.mark.postgres
@pytest.mark.parametrize("unit", sorted(UNITS))
def test_parallel_allocators_never_share_an_ip(pg_url: str, pg_engine: object, unit: str) -> None:
    from tests.conftest import _truncate

    _truncate(pg_engine)  # type: ignore[arg-type]
    factory = session_factory(pg_engine)  # type: ignore[arg-type]
    with transaction(factory) as s:
        create_pool(
            session=s, data=PoolFields(name="race", ranges=["127.40.0.0/22"]), actor=Actor("test")
        )
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(pg_url, w, q, unit)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    results = [ip for _ in procs for ip in q.get(timeout=120)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len(results) == WORKERS * PER_WORKER
    assert len(set(results)) == len(results), "an IP was given twice"
    with factory() as s:
        live = s.scalar(select(func.count(func.distinct(Allocation.ip))).where(Allocation.active))
        assert live == WORKERS * PER_WORKER
        # fresh-first order under contention still fills the start of the pool densely
        top = s.scalar(text("SELECT max(ip_key) FROM allocations"))
    assert top is not None
    _truncate(pg_engine)  # type: ignore[arg-type]


@pytest.mark.postgres
def test_threads_on_both_units_never_share_an_ip(pg_engine: object) -> None:
    """Eight threads of one process on one engine, half in ORM sessions, half on Core
    connections, one small pool between them."""
    from tests.conftest import _truncate

    _truncate(pg_engine)  # type: ignore[arg-type]
    factory = session_factory(pg_engine)  # type: ignore[arg-type]
    with transaction(factory) as s:
        create_pool(
            session=s, data=PoolFields(name="race", ranges=["127.41.0.0/24"]), actor=Actor("test")
        )
    got: list[str] = []
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        unit = UNITS["session" if worker % 2 else "connection"]
        try:
            for i in range(25):
                req = Request(
                    service=ServiceRef(f"t{worker}", f"s{i}"), ports=frozenset({("TCP", 80)})
                )
                with unit(factory) as s:
                    out = allocate_service(
                        session=s, request=req, actor=Actor("test"), policy=IPPolicy()
                    )
                got.extend(out.ips)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(got) == 200 and len(set(got)) == 200, "an IP was given twice"
    _truncate(pg_engine)  # type: ignore[arg-type]


@pytest.mark.postgres
def test_allocators_racing_a_reserver_never_take_a_reserved_ip(pg_engine: object) -> None:
    """Reservations made while allocators claim the same addresses (the scan claims under a
    lock whose check must see a reservation committed after the scan began): no live
    allocation ends up on an address reserved for someone else, and no IP is given twice."""
    from lbprovider.db.models import Reservation
    from lbprovider.services.errors import DomainError
    from lbprovider.services.reservations import create_reservation
    from tests.conftest import _truncate

    _truncate(pg_engine)  # type: ignore[arg-type]
    factory = session_factory(pg_engine)  # type: ignore[arg-type]
    with transaction(factory) as s:
        create_pool(
            session=s, data=PoolFields(name="race", ranges=["127.42.0.0/24"]), actor=Actor("test")
        )
    errors: list[BaseException] = []
    got: list[str] = []

    def allocator(worker: int) -> None:
        try:
            for i in range(25):
                req = Request(
                    service=ServiceRef(f"r{worker}", f"s{i}"), ports=frozenset({("TCP", 80)})
                )
                with connection_transaction(factory) as c:
                    got.extend(
                        allocate_service(
                            session=c, request=req, actor=Actor("test"), policy=IPPolicy()
                        ).ips
                    )
        except BaseException as e:  # reported below
            errors.append(e)

    def reserver() -> None:
        try:
            for i in range(60):  # every other address from .30 on: where the allocators go
                ip = f"127.42.0.{30 + 2 * i}"
                try:
                    with transaction(factory) as s:
                        create_reservation(
                            session=s,
                            pool_name="race",
                            owner="ops",
                            actor=Actor("test"),
                            policy=IPPolicy(),
                            ip=ip,
                        )
                except DomainError:
                    pass  # allocated already: refused, and nothing written
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=allocator, args=(w,)) for w in range(4)]
    threads.append(threading.Thread(target=reserver))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(got) == 100 and len(set(got)) == 100, "an IP was given twice"
    with factory() as s:
        reserved = set(s.scalars(select(Reservation.ip)))
        live = set(s.scalars(select(Allocation.ip).where(Allocation.active)))
    assert reserved, "the reserver got some addresses"
    assert not reserved & live, f"allocated while reserved: {sorted(reserved & live)}"
    _truncate(pg_engine)  # type: ignore[arg-type]
