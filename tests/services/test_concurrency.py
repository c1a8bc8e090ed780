"""Eight allocator processes against one PostgreSQL pool: zero duplicates, ever."""

from __future__ import annotations

import multiprocessing as mp

import pytest
from sqlalchemy import func, select, text

from lbprovider.db.models import Allocation
from lbprovider.db.session import make_engine, session_factory, transaction
from lbprovider.ipam.allocator import Request, ServiceRef
from lbprovider.services.allocations import allocate_service
from lbprovider.services.context import Actor, IPPolicy
from lbprovider.services.pools import PoolFields, create_pool

WORKERS, PER_WORKER = 8, 40


def _worker(url: str, worker: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    engine = make_engine(url)
    factory = session_factory(engine)
    got = []
    for i in range(PER_WORKER):
        req = Request(service=ServiceRef(f"w{worker}", f"s{i}"), ports=frozenset({("TCP", 80)}))
        with transaction(factory) as s:
            got.append(
                allocate_service(
                    session=s, request=req, actor=Actor(f"w{worker}"), policy=IPPolicy()
                ).ips[0]
            )
    engine.dispose()
    out.put(got)


@pytest.mark.postgres
def test_parallel_allocators_never_share_an_ip(pg_url: str, pg_engine: object) -> None:
    from tests.conftest import _truncate

    _truncate(pg_engine)  # type: ignore[arg-type]
    factory = session_factory(pg_engine)  # type: ignore[arg-type]
    with transaction(factory) as s:
        create_pool(
            session=s, data=PoolFields(name="race", ranges=["127.40.0.0/22"]), actor=Actor("test")
        )
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(pg_url, w, q)) for w in range(WORKERS)]
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
