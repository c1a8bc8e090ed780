"""IPAM throughput on PostgreSQL: N allocations from 8 concurrent worker processes.

Prints allocations/s, duplicates (must be 0) and the ratio to a bare INSERT loop (one row and
one COMMIT per iteration, same workers, same database) measured in the same run.

    .venv/bin/python bench/ipam.py [--total 10000] [--workers 8] [--floors] [--db NAME]

``--floors`` also times, in the same run, what any allocation costs at least here: the bare
INSERT inside the session transactions an allocation runs in, and an allocation's own rows
written by its claim statement with no decision (addresses known in advance).

Each allocation is one transaction of ``connection_transaction(factory)`` (a pooled Core
connection, no ORM session), the lighter unit of work ``allocate_service`` takes; ``--orm`` runs
them in ``transaction(factory)`` (an ORM session) instead, as before that existed.

``--cpu`` also reports the CPU time per allocation of the allocation loop: the workers' own
(client) and their backends' (server, utime + stime from ``/proc``: the server must run on this
machine). On a shared machine the rates move with everybody's load; CPU time per allocation
moves much less. Without ``--floors`` this file imports only ``allocate_service`` from the tree
it sits in, so a copy can time an older tree's allocations the same way.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procstat import cpu_seconds  # noqa: E402
from lbprovider.db.models import Allocation, Base  # noqa: E402
from lbprovider.db.session import make_engine, session_factory, transaction  # noqa: E402

try:  # older trees (timed with a copy of this file) have only ``transaction``
    from lbprovider.db.session import connection_transaction
except ImportError:  # pragma: no cover
    connection_transaction = transaction  # type: ignore[assignment]
from lbprovider.db.types import utcnow  # noqa: E402
from lbprovider.ipam.allocator import Assignment, Request, ServiceRef  # noqa: E402
from lbprovider.services.allocations import allocate_service  # noqa: E402
from lbprovider.services.context import Actor, IPPolicy  # noqa: E402
from lbprovider.services.pools import PoolFields, create_pool  # noqa: E402

DB = "lbprovider_bench_ipam"


def server_url() -> str:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/postgres.sh")], check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


def prepare(server: str, db: str = DB) -> str:
    """A fresh scratch database of this bench's own, with one /16 pool; its URL."""
    admin = make_engine(server)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        c.execute(text(f"CREATE DATABASE {db}"))
    admin.dispose()
    url = server.rsplit("/", 1)[0] + "/" + db
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE bare (id serial primary key, ip text, service text)"))
    with transaction(session_factory(engine)) as s:
        create_pool(
            session=s, data=PoolFields(name="bench", ranges=["10.0.0.0/16"]), actor=Actor("bench")
        )
        create_pool(
            session=s, data=PoolFields(name="floor", ranges=["10.1.0.0/16"]), actor=Actor("bench")
        )
    engine.dispose()
    return url


def bare_worker(url: str, worker: int, n: int, start: mp.Barrier) -> None:  # type: ignore[type-arg]
    engine = make_engine(url)
    with engine.connect() as c:
        start.wait()
        for i in range(n):
            c.execute(
                text("INSERT INTO bare (ip, service) VALUES (:ip, :s)"),
                {"ip": f"{worker}.{i}", "s": f"w{worker}/s{i}"},
            )
            c.commit()
    engine.dispose()


def alloc_worker(
    url: str,
    worker: int,
    n: int,
    start: mp.Barrier,  # type: ignore[type-arg]
    cpu: mp.Queue | None = None,  # type: ignore[type-arg]
    orm: bool = False,
) -> None:
    unit = transaction if orm else connection_transaction
    engine = make_engine(url, pool_size=1)
    factory = session_factory(engine)
    policy = IPPolicy()
    with engine.connect() as c:  # the one pooled connection: its backend does this worker's SQL
        pid = c.scalar(text("SELECT pg_backend_pid()"))
    start.wait()
    client, server = time.process_time(), cpu_seconds(pid) if cpu is not None else 0.0
    for i in range(n):
        req = Request(service=ServiceRef(f"w{worker}", f"s{i}"), ports=frozenset({("TCP", 80)}))
        with unit(factory) as s:
            allocate_service(session=s, request=req, actor=Actor("bench"), policy=policy)
    if cpu is not None:
        cpu.put((time.process_time() - client, cpu_seconds(pid) - server))
    engine.dispose()


def session_worker(url: str, worker: int, n: int, start: mp.Barrier, orm: bool = False) -> None:  # type: ignore[type-arg]
    """Floor 1: the bare loop's INSERT in the transactions an allocation runs in."""
    from lbprovider.db.session import connection_of  # see writes_worker

    engine = make_engine(url)
    factory = session_factory(engine)
    unit = transaction if orm else connection_transaction
    start.wait()
    for i in range(n):
        with unit(factory) as s:
            connection_of(s).execute(
                text("INSERT INTO bare (ip, service) VALUES (:ip, :s)"),
                {"ip": f"{worker}.{i}", "s": f"w{worker}/s{i}"},
            )
    engine.dispose()


def writes_worker(url: str, worker: int, n: int, start: mp.Barrier, orm: bool = False) -> None:  # type: ignore[type-arg]
    """Floor 2: an allocation's rows (allocation, port, lease, ledger) written by its claim
    statement, in the same transactions, for addresses known in advance: no decision at all."""
    # Imported here: without --floors this file runs against older trees too (see --cpu).
    from lbprovider.db.driver import fetch_all
    from lbprovider.services.allocations import CLAIM_CLEAN_PG, _claim_params, _Entry

    engine = make_engine(url)
    factory = session_factory(engine)
    with factory() as s:
        pool_id = s.scalar(text("SELECT id FROM pools WHERE name = 'floor'"))
    actor = Actor("bench")
    unit = transaction if orm else connection_transaction
    start.wait()
    for i in range(n):
        k = worker * n + i
        ip = f"10.1.{k // 256}.{k % 256}"
        req = Request(service=ServiceRef(f"f{worker}", f"s{i}"), ports=frozenset({("TCP", 80)}))
        a = Assignment(ip, "floor", 4)
        params = _claim_params(req, a, pool_id, utcnow(), _Entry(actor, "allocated", "floor"))
        with unit(factory) as s:
            assert fetch_all(s, CLAIM_CLEAN_PG, params)
    engine.dispose()


def run(target: object, url: str, workers: int, per: int, *extra: object) -> float:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(workers + 1)
    procs = [
        ctx.Process(target=target, args=(url, w, per, barrier, *extra)) for w in range(workers)
    ]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--total", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument(
        "--floors",
        action="store_true",
        help="also time what any allocation costs at least: its transactions, and its writes",
    )
    ap.add_argument(
        "--cpu", action="store_true", help="also report client and server CPU per allocation"
    )
    ap.add_argument(
        "--orm",
        action="store_true",
        help="run allocations (and floors) in transaction(factory), an ORM session, instead",
    )
    ap.add_argument("--db", default=DB, help=f"scratch database (dropped first; default {DB})")
    args = ap.parse_args()
    url = prepare(server_url(), args.db)
    per = args.total // args.workers
    n = per * args.workers
    bare = run(bare_worker, url, args.workers, per)
    cpu: mp.Queue[tuple[float, float]] | None = mp.get_context("fork").Queue() if args.cpu else None
    alloc = run(alloc_worker, url, args.workers, per, cpu, args.orm)
    engine = make_engine(url)
    with engine.connect() as c:
        live = c.scalar(select(func.count()).select_from(Allocation).where(Allocation.active))
        distinct = c.scalar(
            select(func.count(func.distinct(Allocation.ip))).where(Allocation.active)
        )
    engine.dispose()
    unit = "transaction (ORM session)" if args.orm else "connection_transaction (Core)"
    print(f"workers={args.workers} allocations={n} unit={unit}")
    print(f"bare INSERT loop: {n / bare:,.0f} rows/s ({bare:.2f} s)")
    print(f"allocations:      {n / alloc:,.0f} allocations/s ({alloc:.2f} s)")
    print(f"duplicates: {live - distinct} (live={live}, distinct IPs={distinct})")
    print(f"ratio allocations/bare: {bare / alloc:.2f} (goal >= 0.3)")
    if cpu is not None:
        used = [cpu.get() for _ in range(args.workers)]
        client, server = (sum(u[k] for u in used) / n * 1e3 for k in (0, 1))
        print(f"CPU per allocation: client {client:.2f} ms, server {server:.2f} ms")
    if args.floors:
        session = run(session_worker, url, args.workers, per, args.orm)
        writes = run(writes_worker, url, args.workers, per, args.orm)
        for label, secs in (
            ("bare INSERT in allocation transactions", session),
            ("an allocation's writes alone (no decision)", writes),
        ):
            print(f"floor, {label}: {n / secs:,.0f}/s ({secs:.2f} s), ratio {bare / secs:.2f}")


if __name__ == "__main__":
    main()
