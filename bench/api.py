"""REST API overhead on PostgreSQL: 8 clients claiming "next free" reservations through HTTP
versus 8 threads calling the same service function directly, in the same run.

The API runs as a real server (``uvicorn --factory lbprovider.api.app:create_app``, one process,
as ``lbprovider serve`` would), on its own scratch database. Each side claims from its own pool
of the same size. Prints both rates, the ratio and checks that no address was given twice.

    .venv/bin/python bench/api.py [--per-client 50] [--clients 8]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lbprovider.db.models import Base  # noqa: E402
from lbprovider.db.session import make_engine, session_factory, transaction  # noqa: E402
from lbprovider.services.context import Actor, IPPolicy  # noqa: E402
from lbprovider.services.pools import PoolFields, create_pool  # noqa: E402
from lbprovider.services.reservations import create_reservation  # noqa: E402
from lbprovider.services.tokens import create_token  # noqa: E402

DB = "lbprovider_bench_api"


def scratch_database() -> str:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/postgres.sh")], check=True, capture_output=True, text=True
    )
    server = out.stdout.strip().splitlines()[-1]
    admin = make_engine(server)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        c.execute(text(f"CREATE DATABASE {DB}"))
    admin.dispose()
    return server.rsplit("/", 1)[0] + "/" + DB


def prepare(url: str) -> str:
    """Schema, one pool per side, an API token; returns the token's secret."""
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    sessions = session_factory(engine)
    actor = Actor("bench")
    with transaction(sessions) as s:
        create_pool(session=s, data=PoolFields(name="http", ranges=["10.8.0.0/21"]), actor=actor)
        create_pool(session=s, data=PoolFields(name="direct", ranges=["10.9.0.0/21"]), actor=actor)
        _, secret = create_token(session=s, name="bench", scopes=["write"], actor=actor)
    engine.dispose()
    return secret


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(url: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LBP_DATABASE_URL": url, "LBP_LOG_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "lbprovider.api.app:create_app"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("the API server did not start")


def run(
    clients: int, work: Callable[[int], list[tuple[str, float]]]
) -> tuple[float, list[str], list[float]]:
    barrier = threading.Barrier(clients + 1)

    def client(i: int) -> list[tuple[str, float]]:
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, i) for i in range(clients)]
        barrier.wait()
        started = time.perf_counter()
        results = [f.result() for f in futures]
        elapsed = time.perf_counter() - started
    flat = [r for rs in results for r in rs]
    return elapsed, [ip for ip, _ in flat], [lat for _, lat in flat]


def http_work(base: str, secret: str, per_client: int) -> Callable[[int], list[tuple[str, float]]]:
    def work(i: int) -> list[tuple[str, float]]:
        out = []
        headers = {"Authorization": f"Bearer {secret}"}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as c:
            for _ in range(per_client):
                t = time.perf_counter()
                r = c.post("/api/v1/reservations", json={"pool": "http", "owner": f"c{i}"})
                r.raise_for_status()
                out.append((r.json()["ip"], time.perf_counter() - t))
        return out

    return work


def direct_work(url: str, per_client: int) -> Callable[[int], list[tuple[str, float]]]:
    engine = make_engine(url, pool_size=16)
    sessions = session_factory(engine)

    def work(i: int) -> list[tuple[str, float]]:
        out = []
        for _ in range(per_client):
            t = time.perf_counter()
            with transaction(sessions) as s:
                row = create_reservation(
                    session=s,
                    pool_name="direct",
                    owner=f"c{i}",
                    actor=Actor(f"c{i}"),
                    policy=IPPolicy(),
                )
                ip = row.ip
            out.append((ip, time.perf_counter() - t))
        return out

    return work


def report(name: str, elapsed: float, ips: list[str], lat: list[float]) -> float:
    rate = len(ips) / elapsed
    p50, p95 = statistics.median(lat), statistics.quantiles(lat, n=20)[18]
    dupes = len(ips) - len(set(ips))
    print(
        f"{name:7} {len(ips):5d} reservations in {elapsed:6.2f} s = {rate:7.1f}/s  "
        f"p50 {p50 * 1000:6.1f} ms  p95 {p95 * 1000:6.1f} ms  duplicates {dupes}"
    )
    if dupes:
        raise SystemExit(f"{name}: an address was reserved twice")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=50)
    args = parser.parse_args()
    url = scratch_database()
    secret = prepare(url)
    port = free_port()
    server = start_server(url, port)
    try:
        http = run(args.clients, http_work(f"http://127.0.0.1:{port}", secret, args.per_client))
    finally:
        server.terminate()
        server.wait(timeout=20)
    direct = run(args.clients, direct_work(url, args.per_client))
    print(
        f"{args.clients} concurrent clients, {args.per_client} next-free reservations each, "
        "PostgreSQL, one pool per side"
    )
    http_rate = report("http", *http)
    direct_rate = report("direct", *direct)
    print(f"ratio   http/direct = {http_rate / direct_rate:.2f}")


if __name__ == "__main__":
    main()
