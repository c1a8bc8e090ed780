"""Fleet benchmark on loopback: API + agent + real HAProxy, issue 6's P2, P3, P4 and P7.

P2  requests/s through a VIP vs directly to the NodePort backend (wrk, keep-alive), goal >= 0.8.
P3  Service record committed -> VIP:port answers, p99 at 10 and at 10,000 Services
    (goal <= 1 s and <= 2x the 10-Service figure).
P4  failed requests while 100 changes (every 10th a new port: a reload) are applied under wrk
    load, goal 0.
P7  HAProxy worker RSS with 10,000 Services, goal <= 50 MB.

Run: PYTHONPATH=. .venv/bin/python bench/fleet.py
Everything it starts (API thread, agent, HAProxy masters, backend) is stopped by its handle.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from lbprovider.agent.loop import Agent
from lbprovider.api.app import create_app
from lbprovider.db.models import Base
from lbprovider.db.session import make_engine, session_factory, transaction
from tests.agent.conftest import FastBackend, Fleet, WrkResult, run_wrk, serve_on, try_get
from tests.api.conftest import api_settings
from tests.fleet.helpers import (
    add_service,
    make_pool,
    put_service,
    remove_service,
    service_data,
    set_node,
)
from tests.haproxy.conftest import Backends, free_port


def wait(check, timeout: float = 120.0, step: float = 0.002) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(step)
    return time.monotonic() - start


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def create_latency(fleet: Fleet, prefix: str, port: int, np: int, n: int = 20) -> list[float]:
    out = []
    for i in range(n):
        start = time.monotonic()
        (ip,) = add_service(fleet.sessions, service_data(f"{prefix}{i}", [(port, np)]))
        wait(lambda ip=ip: try_get(ip, port))
        out.append(time.monotonic() - start)
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="lbp-bench-", dir="/tmp"))
    backends = Backends()
    health = backends.node_port()
    engine = make_engine(f"sqlite:///{tmp / 'bench.db'}")
    Base.metadata.create_all(engine)
    sessions = session_factory(engine)
    app = create_app(
        api_settings(
            engine.url.render_as_string(hide_password=False),
            fleet_health_check_port=health,
            fleet_state_poll_seconds=0.02,
            fleet_long_poll_max_seconds=10.0,
        ),
        engine=engine,
    )
    fleet = Fleet(engine, sessions, serve_on(app), health, {})
    fast = FastBackend(free_port())
    agent: Agent | None = None
    try:
        make_pool(sessions, "127.60.0.0/18")
        set_node(sessions, "node-1", "127.0.0.2")
        set_node(sessions, "node-2", "127.0.0.3")
        np, port = fast.port, free_port()
        config = fleet.config(
            heartbeat_seconds=2.0, check_timeout_seconds=0.05, hard_stop_after_seconds=120.0
        )
        agent = fleet.start_agent(config)
        (base,) = add_service(sessions, service_data("base", [(port, np)]))
        wait(lambda: try_get(base, port))

        direct = run_wrk(f"http://127.0.0.2:{np}/", 10, close=False, connections=16)
        via = run_wrk(f"http://{base}:{port}/", 10, close=False, connections=16)
        print(
            f"P2 direct {direct.rate:.0f} req/s, via VIP {via.rate:.0f} req/s, "
            f"ratio {via.rate / direct.rate:.2f} (goal >= 0.8)"
        )

        small = create_latency(fleet, "a", port, np)
        print(
            f"P3@10 create->answers p50 {statistics.median(small) * 1000:.0f} ms, "
            f"p99 {p99(small) * 1000:.0f} ms"
        )

        p4(fleet, base, port, np)

        start = time.monotonic()
        with transaction(sessions) as s:
            ips = [put_service(s, service_data(f"bulk{i}", [(port, np)]))[0] for i in range(10_000)]
        wait(lambda: try_get(ips[-1], port), timeout=600)
        print(f"bulk 10,000 Services committed and live in {time.monotonic() - start:.1f} s")
        large = create_latency(fleet, "b", port, np)
        print(
            f"P3@10k create->answers p50 {statistics.median(large) * 1000:.0f} ms, "
            f"p99 {p99(large) * 1000:.0f} ms, ratio to @10 {p99(large) / p99(small):.2f}"
        )
        assert agent.process is not None
        proc = agent.process.show_proc()
        print(
            f"P7 worker RSS at 10,000 Services: {rss_mb(proc.workers[-1]):.1f} MB "
            f"(reloads so far {proc.reloads})"
        )
    finally:
        if agent is not None:
            fleet.stop_agent(agent)
        fast.stop()
        fleet.server.stop()
        backends.close()
        engine.dispose()
        for d in fleet.dirs:
            shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


def p4(fleet: Fleet, base: str, port: int, np: int) -> None:
    url = f"http://{base}:{port}/"
    results: dict[str, WrkResult] = {}
    seconds = 40
    loads = [
        threading.Thread(target=lambda: results.update(kept=run_wrk(url, seconds, close=False))),
        threading.Thread(
            target=lambda: results.update(fresh=run_wrk(url, seconds, connections=2, threads=1))
        ),
    ]
    for t in loads:
        t.start()
    start = time.monotonic()
    for i in range(100):
        if i % 10 == 9:
            p2 = free_port()
            (ip,) = add_service(fleet.sessions, service_data(f"r{i}", [(p2, np)]))
            wait(lambda ip=ip, p2=p2: try_get(ip, p2))
        elif i % 2 == 0:
            (ip,) = add_service(fleet.sessions, service_data(f"c{i}", [(port, np)]))
            wait(lambda ip=ip: try_get(ip, port))
        else:
            remove_service(fleet.sessions, f"c{i - 1}")
            wait(lambda ip=ip: try_get(ip, port) is None)
    took = time.monotonic() - start
    for t in loads:
        t.join()
    failed = sum(r.socket_errors + r.non_2xx for r in results.values())
    total = sum(r.requests for r in results.values())
    print(
        f"P4 {total} requests during 100 changes (10 reloads) applied in {took:.1f} s: "
        f"{failed} failed (goal 0)"
    )


if __name__ == "__main__":
    main()
