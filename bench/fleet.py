"""Fleet benchmark on loopback: API + agent + real HAProxy, issue 6's P2, P3, P4 and P7.

P2  requests/s through a VIP vs directly to the NodePort backend (wrk, keep-alive), goal >= 0.8.
P3  one more Service created through the normal path (record + allocation, one transaction)
    -> its VIP:port answers through HAProxy; p50/p99 over --samples creations with 10 and with
    10,000 Services live (goal <= 1 s and the 10,000 p99 <= 2x the 10 p99).
P4  failed requests while 100 changes (every 10th a new port: a reload) are applied under wrk
    load, goal 0.
P7  RSS of the current HAProxy worker (VmRSS of the worker PID from the master's ``show proc``)
    with 10 and with 10,000 Services live, goal <= 50 MB at 10,000.

The Services that only fill the fleet up to 10 and to 10,000 are test data: ``bulk_seed`` writes
their rows (ServiceRecord, IPLease, Allocation, AllocationPort, Node) in one transaction, the
way the allocation path would have written them, instead of allocating each one (~24/s). What
is measured is everything after that: HAProxy serving them all, then the timed creations.

Run: PYTHONPATH=. .venv/bin/python bench/fleet.py            (all parts, about 5 minutes)
     PYTHONPATH=. .venv/bin/python bench/fleet.py --parts p3,p7   (P3/P7 only, no wrk)
Options: --services N (the large fleet, 10000), --samples N (per P3 figure, 30), --budget S
(seconds before it gives up and cleans up, 540).
Everything it starts (API thread, agent, its HAProxy master, the backend HAProxy, HTTP servers,
temp dirs) is stopped or removed by its own handle, also on an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import random
import resource
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.agent.loop import Agent
from lbprovider.api.app import create_app
from lbprovider.db.models import (
    Allocation,
    AllocationPort,
    Base,
    IPLease,
    Node,
    Pool,
    ReleasedIP,
    Reservation,
    ServiceRecord,
)
from lbprovider.db.session import make_engine, session_factory, transaction
from lbprovider.db.types import utcnow
from lbprovider.haproxy.runtime import HAProxyError
from lbprovider.ipam.ranges import ip_key
from tests.agent.conftest import FastBackend, Fleet, WrkResult, run_wrk, serve_on, try_get
from tests.api.conftest import api_settings
from tests.fleet.helpers import (
    NAMESPACE,
    add_service,
    make_pool,
    remove_service,
    service_data,
    set_node,
)
from tests.haproxy.conftest import NODE_ADDRESSES, Backends, free_port

POOL = "127.60.0.0/18"  # 16,382 addresses: room for 10,000 seeded + the timed ones
POOL_NAME = "lab"
NODES = {"node-1": NODE_ADDRESSES[0], "node-2": NODE_ADDRESSES[1]}
DEADLINE = float("inf")  # monotonic time after which every wait gives up (set by --budget)


class OutOfTime(TimeoutError):
    pass


def wait(check: Callable[[], Any], timeout: float = 120.0, step: float = 0.002) -> float:
    start = time.monotonic()
    limit = min(start + timeout, DEADLINE)
    while not check():
        if time.monotonic() > limit:
            raise OutOfTime("not reached" + (" (budget spent)" if limit == DEADLINE else ""))
        time.sleep(step)
    return time.monotonic() - start


def gone(address: str, port: int) -> bool:
    return try_get(address, port) is None


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def p99(samples: list[float]) -> float:
    return pct(samples, 0.99)


def live_services(sessions: sessionmaker[Session]) -> int:
    with transaction(sessions) as s:
        return int(s.scalar(select(func.count()).select_from(ServiceRecord)) or 0)


# -- test data: many Services at once -------------------------------------------------------


def bulk_seed(
    sessions: sessionmaker[Session],
    count: int,
    port: int,
    node_port: int,
    *,
    prefix: str = "seed",
    pool_name: str = POOL_NAME,
) -> list[str]:
    """Write ``count`` single-port TCP Services with one IPv4 address each, in one transaction:
    the ServiceRecord, IPLease, Allocation and AllocationPort rows the allocation path writes
    (same ip_key, ports JSON, pool_id/pool_name), on free addresses of the pool; Node rows for
    the bench's nodes when missing. Returns the addresses, in order."""
    now = utcnow()
    with transaction(sessions) as s:
        pool_id, ranges = s.execute(
            select(Pool.id, Pool.ranges).where(Pool.name == pool_name)
        ).one()
        taken = set(s.scalars(select(IPLease.ip)))
        taken |= set(s.scalars(select(ReleasedIP.ip)))
        taken |= set(s.scalars(select(Reservation.ip)))
        ips: list[str] = []
        for r in ranges:
            for addr in ipaddress.ip_network(r).hosts():
                if len(ips) == count:
                    break
                if str(addr) not in taken:
                    ips.append(str(addr))
        if len(ips) < count:
            raise RuntimeError(f"pool {pool_name} has only {len(ips)} free addresses")
        have_nodes = set(s.scalars(select(Node.name)))
        missing = [
            {"name": n, "address": a, "addresses": [a], "labels": {}, "updated_at": now}
            for n, a in NODES.items()
            if n not in have_nodes
        ]
        if missing:
            s.execute(insert(Node), missing)
        names = [f"{prefix}{i}" for i in range(count)]
        s.execute(
            insert(ServiceRecord),
            [
                {
                    "namespace": NAMESPACE,
                    "name": name,
                    "uid": "",
                    "ports": [
                        {"name": f"p{port}", "protocol": "TCP", "port": port, "nodePort": node_port}
                    ],
                    "source_ranges": [],
                    "ip_families": ["IPv4"],
                    "ip_family_policy": "SingleStack",
                    "labels": {},
                    "annotations": {},
                    "options": {},
                    "created_at": now,
                    "updated_at": now,
                }
                for name in names
            ],
        )
        s.execute(
            insert(IPLease),
            [
                {
                    "ip": ip,
                    "ip_key": ip_key(ip),
                    "pool_id": pool_id,
                    "family": 4,
                    "sharing_key": None,
                    "created_at": now,
                }
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
                    "pool_name": pool_name,
                    "family": 4,
                    "service_namespace": NAMESPACE,
                    "service_name": name,
                    "service_uid": "",
                    "sharing_key": None,
                    "ports": [["TCP", port]],
                    "active": True,
                    "allocated_at": now,
                    "released_at": None,
                }
                for ip, name in zip(ips, names, strict=True)
            ],
        )
        rows = s.execute(
            select(Allocation.ip, Allocation.id).where(
                Allocation.active, Allocation.service_name.like(f"{prefix}%")
            )
        )
        ids = {ip: allocation_id for ip, allocation_id in rows}
        s.execute(
            insert(AllocationPort),
            [{"allocation_id": ids[ip], "ip": ip, "protocol": "TCP", "port": port} for ip in ips],
        )
    return ips


# -- measurements ----------------------------------------------------------------------------


def create_latency(
    fleet: Fleet, agent: Agent, prefix: str, port: int, np: int, n: int, timeout: float = 30.0
) -> tuple[list[float], int]:
    """Create one Service at a time through the normal path; seconds until its VIP answers.
    A Service that does not answer within ``timeout`` counts as a failure (and is reported)."""
    out, failed = [], 0
    for i in range(n):
        start = time.monotonic()
        (ip,) = add_service(fleet.sessions, service_data(f"{prefix}{i}", [(port, np)]))
        try:
            wait(partial(try_get, ip, port), timeout=timeout)
        except OutOfTime:
            if time.monotonic() > DEADLINE:
                raise
            failed += 1
            p = agent.progress
            print(
                f"  {prefix}{i} ({ip}) not answering after {timeout:.0f} s: agent errors "
                f"{p.errors[:3]}, pending {p.pending[:3]}, route error "
                f"{[v for k, v in p.route_errors.items() if ip in k][:1]}",
                flush=True,
            )
            continue
        out.append(time.monotonic() - start)
    return out, failed


def p3_line(label: str, samples: list[float]) -> str:
    if not samples:
        return f"P3@{label}: no Service answered"
    ms = {q: pct(samples, q) * 1000 for q in (0.9, 0.99)} | {0.5: statistics.median(samples) * 1000}
    return (
        f"P3@{label} create->answers over {len(samples)}: p50 {ms[0.5]:.0f} ms, "
        f"p90 {ms[0.9]:.0f} ms, p99 {ms[0.99]:.0f} ms, max {max(samples) * 1000:.0f} ms"
    )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def p7(agent: Agent, label: str) -> float:
    assert agent.process is not None
    proc = agent.process.show_proc()
    worker = proc.workers[0]
    mb = rss_mb(worker)
    print(
        f"P7@{label} worker {worker} VmRSS {mb:.1f} MB (master {rss_mb(proc.master_pid):.1f} MB, "
        f"reloads so far {proc.reloads}, old workers {len(proc.old_workers)})",
        flush=True,
    )
    return mb


def settle(agent: Agent, timeout: float = 120.0) -> float:
    """Wait until the agent has applied what it was last given and has nothing pending."""

    def done() -> bool:
        p = agent.progress
        return (
            p.desired is not None
            and p.applied is not None
            and p.applied.version == p.desired.version
            and not p.pending
        )

    return wait(done, timeout=timeout, step=0.05)


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- the run ---------------------------------------------------------------------------------


def main() -> None:
    global DEADLINE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="p2,p3,p4,p7", help="comma list of p2,p3,p4,p7")
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--budget", type=float, default=540.0)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    started = time.monotonic()
    DEADLINE = started + args.budget

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    print(
        f"bench/fleet.py {args.parts} services={args.services} samples={args.samples} "
        f"cpus={os.cpu_count()} load {load()}",
        flush=True,
    )

    tmp = Path(tempfile.mkdtemp(prefix="lbp-bench-", dir="/tmp"))
    backends = Backends()
    fast: FastBackend | None = None
    agent: Agent | None = None
    agent_thread: threading.Thread | None = None
    fleet: Fleet | None = None
    engine = make_engine(f"sqlite:///{tmp / 'bench.db'}")
    try:
        health = backends.node_port()
        for server in backends.servers:  # HAProxy's health checks reset: not worth a traceback
            server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
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
        make_pool(sessions, POOL, POOL_NAME)
        for name, address in NODES.items():
            set_node(sessions, name, address)
        np, port = fast.port, free_port()
        wait(lambda: try_get(NODE_ADDRESSES[0], np), timeout=10)
        config = fleet.config(
            heartbeat_seconds=2.0, check_timeout_seconds=0.05, hard_stop_after_seconds=120.0
        )
        agent = Agent(config)
        agent.start()  # on failure, a master it started is still stopped below (agent.process)
        agent_thread = threading.Thread(target=agent.run, name="agent")
        agent_thread.start()
        (base,) = add_service(sessions, service_data("base", [(port, np)]))
        wait(lambda: try_get(base, port))

        if "p2" in parts:
            p2(agent, fast, f"http://{NODE_ADDRESSES[0]}:{np}/", f"http://{base}:{port}/")

        small_ips = bulk_seed(sessions, 10 - live_services(sessions), port, np, prefix="s")
        wait(lambda: all(try_get(ip, port) for ip in small_ips))
        settle(agent)
        rss = {"10": p7(agent, f"{live_services(sessions)} Services")}
        small: list[float] = []
        if "p3" in parts:
            small, failed = create_latency(fleet, agent, "a", port, np, args.samples)
            print(
                p3_line(f"{10}->{10 + args.samples}", small) + f", {failed} failed; load {load()}",
                flush=True,
            )

        if "p4" in parts:
            p4(fleet, base, port, np)

        if not parts & {"p3", "p7"}:
            return
        settle(agent)
        before = live_services(sessions)
        rss["pre"] = p7(agent, f"{before} Services (the worker that will serve {args.services})")
        start = time.monotonic()
        ips = bulk_seed(sessions, args.services - before, port, np)
        seeded = time.monotonic() - start
        wait(lambda: try_get(ips[-1], port), timeout=300)
        live = time.monotonic() - start
        settled = settle(agent, timeout=300)
        check = random.Random(6).sample(ips, min(200, len(ips)))
        missing = [ip for ip in check if not try_get(ip, port)]
        still = [ip for ip in missing if not any(try_get(ip, port) for _ in range(3))]
        total = live_services(sessions)
        print(
            f"seed {len(ips)} Services (to {total}) committed in {seeded:.1f} s; last VIP answers "
            f"{live:.1f} s after the seed started; agent settled {settled:.1f} s later; "
            f"{len(check) - len(missing)}/{len(check)} random seeded VIPs answer at the first "
            f"try, {len(check) - len(still)}/{len(check)} within 3 more",
            flush=True,
        )
        if still:
            errors = {
                k: v
                for k, v in agent.progress.route_errors.items()
                if k.split("/")[2].split(":")[0] in still
            }
            print(f"not answering: {still[:5]}; agent route errors for them: {errors}", flush=True)
        rss["large"] = p7(agent, f"{total} Services")
        if "p3" in parts:
            large, failed = create_latency(fleet, agent, "b", port, np, args.samples)
            ratio = f"{p99(large) / p99(small):.2f}" if large and small else "n/a"
            print(
                p3_line(f"{total}->{total + args.samples}", large)
                + f", {failed} failed; p99 ratio to @10 {ratio} (goal <= 1 s and <= 2x); "
                f"load {load()}",
                flush=True,
            )
            p7(agent, f"{live_services(sessions)} Services, after the P3 creations")
        print(
            f"P7 worker RSS {rss['10']:.1f} MB at 10, {rss['pre']:.1f} MB at {before}, "
            f"{rss['large']:.1f} MB at {total} (goal <= 50 MB)",
            flush=True,
        )
    finally:
        if agent is not None:
            agent.stop()
            if agent_thread is not None:
                agent_thread.join(timeout=30)
            agent.close()
            if agent.process is not None:
                agent.process.stop(timeout=5)
        if fast is not None:
            fast.stop()
        if fleet is not None:
            fleet.server.stop()
            for d in fleet.dirs:
                shutil.rmtree(d, ignore_errors=True)
        backends.close()
        engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"done in {time.monotonic() - started:.0f} s, everything stopped", flush=True)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def p2(agent: Agent, fast: FastBackend, direct_url: str, via_url: str) -> None:
    """wrk direct to the NodePort, then through the VIP; with the CPU each process spent per
    request (wrk, the NodePort HAProxy, the proxy HAProxy worker, this Python process: API and
    agent), which shows where the cycles of the two shared cores go."""
    process = agent.process
    assert process is not None
    found: list[int] = []

    def worker() -> bool:  # the master is briefly away while a reload re-executes it
        try:
            found[:] = process.show_proc().workers[-1:]
        except HAProxyError:
            return False
        return bool(found)

    settle(agent)
    wait(worker, timeout=30, step=0.1)
    proxy = found[0]
    rows = {}
    for label, url in (("direct", direct_url), ("via VIP", via_url)):
        pids = {"backend": fast.popen.pid, "proxy": proxy}
        before = {k: cpu_seconds(v) for k, v in pids.items()}
        wrk0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        res = run_wrk(url, 10, close=False, connections=16)
        wrk1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = {k: cpu_seconds(v) - before[k] for k, v in pids.items()}
        cpu["wrk"] = wrk1.ru_utime + wrk1.ru_stime - wrk0.ru_utime - wrk0.ru_stime
        cpu["python"] = self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime
        rows[label] = res
        per = ", ".join(f"{k} {v / res.requests * 1e6:.1f}" for k, v in cpu.items())
        print(
            f"P2 {label}: {res.rate:.0f} req/s; CPU per request (us): {per}; "
            f"all {sum(cpu.values()) / res.requests * 1e6:.1f}; load {load()}",
            flush=True,
        )
    ratio = rows["via VIP"].rate / rows["direct"].rate
    print(f"P2 ratio via VIP / direct {ratio:.2f} (goal >= 0.8)", flush=True)


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
            wait(partial(try_get, ip, p2))
        elif i % 2 == 0:
            (ip,) = add_service(fleet.sessions, service_data(f"c{i}", [(port, np)]))
            wait(partial(try_get, ip, port))
        else:
            remove_service(fleet.sessions, f"c{i - 1}")
            wait(partial(gone, ip, port))
    took = time.monotonic() - start
    for t in loads:
        t.join()
    failed = sum(r.socket_errors + r.non_2xx for r in results.values())
    total = sum(r.requests for r in results.values())
    print(
        f"P4 {total} requests during 100 changes (10 reloads) applied in {took:.1f} s: "
        f"{failed} failed (goal 0)",
        flush=True,
    )


if __name__ == "__main__":
    main()
