"""Dashboard server time with 10,000 allocations: the Services page and searches, against
``/healthz`` measured in the same run on the same server.

Seeds N LoadBalancer Services (record + live allocation + lease + ledger row each, as the
controller leaves them) with bulk inserts, serves the real app (API + dashboard) with uvicorn on
a loopback port, signs in, then times sequential GETs (keep-alive), interleaved: each round
requests every case once, so a load spike from elsewhere on the machine lands on all cases
alike instead of on whichever case was running. "Server time" is the client-observed time on
loopback: the same HTTP overhead is in every figure, including ``/healthz``'s, so the ratio
isolates what the page itself costs.

    .venv/bin/python bench/ui.py [--rows 10000] [--requests 200] [--database-url URL]

Default database: a fresh SQLite file in a temporary directory. ``--database-url`` takes an
empty PostgreSQL database (the schema is created; nothing else may be in it).

As in production: PostgreSQL's tables have statistics and a visibility map (``VACUUM
ANALYZE`` after the bulk seed, which autovacuum would do within its naptime; a table that
was never analyzed is planned from guesses, e.g. a deep page sorted the whole table instead
of walking the index), and the server's start-up heap is frozen as ``lbprovider serve``
does (``lbprovider.server.settle_heap``). ``--no-analyze`` measures the fresh state.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from sqlalchemy import insert

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lbprovider.api.app import create_app  # noqa: E402
from lbprovider.config import Settings  # noqa: E402
from lbprovider.db.models import (  # noqa: E402
    Allocation,
    Base,
    IPLease,
    LedgerEntry,
    ServiceRecord,
)
from lbprovider.db.session import make_engine, session_factory, transaction  # noqa: E402
from lbprovider.db.types import utcnow  # noqa: E402
from lbprovider.ipam.ranges import ip_key  # noqa: E402
from lbprovider.server import settle_heap  # noqa: E402
from lbprovider.services.context import Actor  # noqa: E402
from lbprovider.services.pools import PoolFields, create_pool  # noqa: E402
from lbprovider.services.tokens import create_token  # noqa: E402

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def analyze(url: str) -> None:
    """PostgreSQL: what autovacuum does after a bulk insert (statistics, visibility map)."""
    if not url.startswith("postgresql"):
        return
    engine = make_engine(url)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()


def seed(url: str, rows: int) -> str:
    """Schema, a /16 pool, ``rows`` Services with an address each; returns an admin secret."""
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    sessions = session_factory(engine)
    now = utcnow()
    with transaction(sessions) as s:
        pool = create_pool(
            session=s, data=PoolFields(name="bench", ranges=["10.20.0.0/16"]), actor=Actor("b")
        )
        pool_id = pool.id
        _, secret = create_token(session=s, name="bench", scopes=["admin"], actor=Actor("b"))
    ips = [f"10.20.{i // 256}.{i % 256}" for i in range(rows)]
    with transaction(sessions) as s:
        s.execute(
            insert(ServiceRecord),
            [
                {
                    "namespace": f"ns-{i % 50:02d}",
                    "name": f"svc-{i:05d}",
                    "uid": f"uid-{i}",
                    "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30000 + i % 2000}],
                    "condition_reason": "Satisfied",
                    "condition_message": f"allocated {ips[i]}",
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(rows)
            ],
        )
        s.execute(
            insert(IPLease),
            [
                {"ip": ip, "ip_key": ip_key(ip), "pool_id": pool_id, "family": 4, "created_at": now}
                for ip in ips
            ],
        )
        s.execute(
            insert(Allocation),
            [
                {
                    "ip": ip,
                    "ip_key": ip_key(ip),
                    "pool_id": pool_id,
                    "pool_name": "bench",
                    "family": 4,
                    "service_namespace": f"ns-{i % 50:02d}",
                    "service_name": f"svc-{i:05d}",
                    "service_uid": f"uid-{i}",
                    "ports": [["TCP", 80]],
                    "active": True,
                    "allocated_at": now,
                }
                for i, ip in enumerate(ips)
            ],
        )
        s.execute(
            insert(LedgerEntry),
            [
                {
                    "at": now,
                    "ip": ip,
                    "pool": "bench",
                    "service_namespace": f"ns-{i % 50:02d}",
                    "service_name": f"svc-{i:05d}",
                    "action": "allocated",
                    "reason": f"allocated {ip} from pool 'bench'",
                    "actor": "controller",
                }
                for i, ip in enumerate(ips)
            ],
        )
    engine.dispose()
    return secret


def serve(url: str) -> tuple[uvicorn.Server, threading.Thread, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(Settings(database_url=url, session_secret="bench", log_json=False))
    settle_heap()  # as lbprovider.server.run_server does before serving
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, port


def sign_in(client: httpx.Client, secret: str) -> None:
    csrf = CSRF_RE.search(client.get("/login").text)
    assert csrf
    r = client.post("/login", data={"token": secret, "csrf_token": csrf.group(1)})
    assert r.status_code == 303, r.text


def timed(client: httpx.Client, cases: dict[str, str], n: int) -> dict[str, list[float]]:
    """``n`` rounds of one GET per case; milliseconds per case."""
    for path in cases.values():
        client.get(path)  # warm: templates compiled, caches filled, connection open
    out: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(n):
        for name, path in cases.items():
            started = time.perf_counter()
            r = client.get(path)
            out[name].append((time.perf_counter() - started) * 1000)
            assert r.status_code == 200, (path, r.status_code)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--no-analyze", action="store_true", help="skip VACUUM ANALYZE")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    url = args.database_url or f"sqlite:///{tmp.name}/bench.db"
    secret = seed(url, args.rows)
    if not args.no_analyze:
        analyze(url)
    server, thread, port = serve(url)
    cases = {
        "/healthz": "/healthz",
        "Services page (first 50 of all)": "/services",
        "Services page, offset 9,950": f"/services?offset={max(args.rows - 50, 0)}",
        "Services page, name filter": "/services?q=svc-0999",
        "Search an IP": "/search?q=10.20.19.42",
        "Search a namespace": "/search?q=ns-07",
    }
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            sign_in(client, secret)
            results = timed(client, cases, args.requests)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        tmp.cleanup()
    base = statistics.median(results["/healthz"])
    db = url.split(":", 1)[0]
    state = "fresh" if args.no_analyze or db == "sqlite" else "VACUUM ANALYZE after seeding"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"database: {db} ({state}); rows: {args.rows}; requests per case: {args.requests}")
    print(f"load average at the end: {load}")
    print(f"{'case':34} {'p50 ms':>8} {'p95 ms':>8} {'p50 / healthz':>14}")
    for name, samples in results.items():
        p50 = statistics.median(samples)
        p95 = statistics.quantiles(samples, n=20)[18]
        print(f"{name:34} {p50:8.2f} {p95:8.2f} {p50 / base:14.1f}")


if __name__ == "__main__":
    main()
