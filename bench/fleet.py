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

Layout (--layout): by default the API (``lbprovider serve``, uvicorn, on the bench's SQLite
file) and the agent (``lbprovider agent``, with the settings the in-process layout gives it,
through ``LBP_AGENT_*``) run in processes of their own, as in production, where the agent runs
on its HAProxy host and never shares a GIL with the API; only the bench's client (the database
writes of each creation, the VIP polling) and the health-check servers stay in this process.
``--layout in-process`` runs both in threads of this process instead (rounds 1 to 3 of
bench/RESULTS.md): three roles on one GIL, which production never has.

Run: PYTHONPATH=. .venv/bin/python bench/fleet.py            (all parts, about 5 minutes)
     PYTHONPATH=. .venv/bin/python bench/fleet.py --parts p3,p7   (P3/P7 only, no wrk)
Options: --services N (the large fleet, 10000), --samples N (per P3 figure, 30), --budget S
(seconds before it gives up and cleans up, 540), --step S (seconds between two tries of a new
VIP, 0.005), --pause S (P3: seconds after an answer before the next creation, 0), --layout
processes|in-process, --profile DIR (py-spy), --timeline (the API and agent
traced by bench/trace/sitecustomize.py; per P3 figure, when each stage of a creation happened after
its commit; BENCH_TRACE_KEEP=FILE keeps the raw trace).
Everything it starts (API and agent processes or threads, the agent's HAProxy master, the
backend HAProxy, HTTP servers, temp dirs) is stopped or removed by its own handle or PID (the
agent's master by the PID its master socket gives, after the agent), also on an error, Ctrl-C
or SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import logging
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Protocol
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' helpers (tests.*), with no PYTHONPATH needed

import httpx  # noqa: E402
from sqlalchemy import Engine, func, insert, select  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from bench.procstat import cpu_seconds  # noqa: E402
from lbprovider.agent.loop import Agent, AgentConfig  # noqa: E402
from lbprovider.api.app import create_app  # noqa: E402
from lbprovider.config import Settings  # noqa: E402
from lbprovider.db.migrate import upgrade  # noqa: E402
from lbprovider.db.models import (  # noqa: E402
    Allocation,
    AllocationPort,
    Base,
    FleetHost,
    IPLease,
    Node,
    Pool,
    ReleasedIP,
    Reservation,
    ServiceRecord,
)
from lbprovider.db.session import make_engine, session_factory, transaction  # noqa: E402
from lbprovider.db.types import utcnow  # noqa: E402
from lbprovider.haproxy.process import HAProxyProcess  # noqa: E402
from lbprovider.haproxy.render import MASTER_SOCKET  # noqa: E402
from lbprovider.haproxy.runtime import HAProxyError, ProcInfo  # noqa: E402
from lbprovider.ipam.ranges import ip_key  # noqa: E402
from lbprovider.labstack import stop_agent_haproxy  # noqa: E402
from tests.agent.conftest import FastBackend, Fleet, WrkResult, run_wrk, serve_on, try_get  # noqa: E402
from tests.api.conftest import api_settings  # noqa: E402
from tests.fleet.helpers import (  # noqa: E402
    NAMESPACE,
    add_service,
    make_pool,
    remove_service,
    service_data,
    set_node,
)
from tests.haproxy.conftest import NODE_ADDRESSES, Backends, free_port  # noqa: E402

POOL = "127.60.0.0/18"  # 16,382 addresses: room for 10,000 seeded + the timed ones
POOL_NAME = "lab"
NODES = {"node-1": NODE_ADDRESSES[0], "node-2": NODE_ADDRESSES[1]}
DEADLINE = float("inf")  # monotonic time after which every wait gives up (set by --budget)
STEP = 0.005  # seconds between two tries of a new VIP (set by --step)
PAUSE = 0.0  # P3: seconds between a VIP answering and the next creation (set by --pause)
COMMITS: dict[str, list[float]] = {}  # seconds of each timed creation's transaction, by prefix
# (prefix, start, committed, answered) of each timed creation, monotonic (for --timeline)
CREATIONS: list[tuple[str, float, float, float]] = []
TRACE = ROOT / "bench" / "trace"  # its sitecustomize traces the API and agent (--timeline)


class OutOfTime(TimeoutError):
    pass


def wait(check: Callable[[], Any], timeout: float = 120.0, step: float | None = None) -> float:
    step = STEP if step is None else step
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


class Layout(Protocol):
    name: str

    def start(self) -> None: ...
    def show_proc(self) -> ProcInfo: ...
    def python_pids(self) -> dict[str, int]: ...
    def settled(self) -> bool: ...
    def diagnose(self, ip: str) -> str: ...
    def close(self) -> None: ...


# -- the two layouts -------------------------------------------------------------------------

AGENT_HOST = "edge-1"


class InProcess:
    """The API (uvicorn in a thread) and the agent (``Agent.run`` in a thread) in this very
    process, sharing its GIL with the bench's client: the layout of rounds 1 to 3."""

    name = "in-process"

    def __init__(
        self, engine: Engine, sessions: sessionmaker[Session], api: Settings, agent: dict[str, Any]
    ) -> None:
        self.engine, self.sessions = engine, sessions
        Base.metadata.create_all(engine)
        self.fleet = Fleet(engine, sessions, serve_on(create_app(api, engine=engine)), 0, {})
        self.agent = Agent(self.fleet.config(host=AGENT_HOST, **agent))
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.agent.start()  # on failure, a master it started is still stopped by close()
        self.thread = threading.Thread(target=self.agent.run, name="agent")
        self.thread.start()

    def show_proc(self) -> ProcInfo:
        assert self.agent.process is not None
        return self.agent.process.show_proc()

    def python_pids(self) -> dict[str, int]:
        return {}  # their CPU is this process's (getrusage)

    def settled(self) -> bool:
        p = self.agent.progress
        return (
            p.desired is not None
            and p.applied is not None
            and p.applied.version == p.desired.version
            and not p.pending
        )

    def diagnose(self, ip: str) -> str:
        p = self.agent.progress
        errors = [v for k, v in p.route_errors.items() if f"/{ip}:" in k]
        return f"agent errors {p.errors[:3]}, pending {p.pending[:3]}, route error {errors[:1]}"

    def close(self) -> None:
        self.agent.stop()
        if self.thread is not None:
            self.thread.join(timeout=30)
        self.agent.close()
        if self.agent.process is not None:
            self.agent.process.stop(timeout=5)
        self.fleet.server.stop()
        for d in self.fleet.dirs:
            shutil.rmtree(d, ignore_errors=True)


def env_settings(env: dict[str, str]) -> Settings:
    """The settings a process started with exactly ``env`` reads (``Settings()``, as the CLI)."""
    with mock.patch.dict(os.environ, env, clear=True):
        return Settings()


def agent_env(config: AgentConfig) -> dict[str, str]:
    """The ``LBP_AGENT_*`` variables that make ``lbprovider agent`` build exactly ``config``
    (checked: ``AgentConfig.from_settings`` of them equals it)."""
    env: dict[str, str] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name in ("settings", "announce_check_seconds") or value is None:
            continue  # announce_check_seconds is no setting: its default both ways
        env[f"LBP_AGENT_{f.name.upper()}"] = str(value)
    again = AgentConfig.from_settings(env_settings(env))
    if again != config:
        raise RuntimeError(f"agent settings do not round-trip: {again} != {config}")
    return env


def api_env(settings: Settings) -> dict[str, str]:
    """The ``LBP_*`` variables that make ``lbprovider serve`` read ``settings`` (checked)."""
    env: dict[str, str] = {}
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        if value != info.default:
            env[f"LBP_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    if env_settings(env) != settings:
        raise RuntimeError("API settings do not round-trip through the environment")
    return env


@dataclasses.dataclass
class _At:
    url: str  # what Fleet.config reads of its server


class Processes:
    """``lbprovider serve`` (uvicorn, on the same SQLite file) and ``lbprovider agent``, each
    in its own process, as in production (the agent on its HAProxy host, the API on its own);
    only the bench's client and its database writes stay in this process. The agent's HAProxy
    master is found through its master socket in the agent's state directory."""

    name = "processes"

    def __init__(
        self,
        engine: Engine,
        sessions: sessionmaker[Session],
        api: Settings,
        agent: dict[str, Any],
        tmp: Path,
        trace: Path | None = None,
    ) -> None:
        self.engine, self.sessions, self.tmp = engine, sessions, tmp
        url = engine.url.render_as_string(hide_password=False)
        upgrade(url)  # what `serve` checks at start-up (its /readyz wants the head)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("LBP_")}
        base |= {"LBP_LOG_LEVEL": "WARNING", "PYTHONDONTWRITEBYTECODE": "1"}
        api = api.model_copy(update={"listen": f"127.0.0.1:{port}", "log_level": "WARNING"})
        # the agent settings of the in-process layout (Fleet.config), token and all
        fleet = Fleet(engine, sessions, _At(self.url), 0, {})  # type: ignore[arg-type]
        self.state_dir = tmp / "agent"
        self.state_dir.mkdir()
        config = fleet.config(host=AGENT_HOST, state_dir=str(self.state_dir), **agent)
        self.token = config.token
        self.envs = {"api": base | api_env(api), "agent": base | agent_env(config)}
        if trace is not None:  # bench/trace/sitecustomize.py, this tree's lbprovider first
            for role, env in self.envs.items():
                env |= {"PYTHONPATH": f"{ROOT}:{TRACE}", "BENCH_TRACE_FILE": str(trace)}
                env["BENCH_TRACE_ROLE"] = role
                if "BENCH_SWITCH_INTERVAL" in os.environ:  # an experiment: the API's GIL
                    env["BENCH_SWITCH_INTERVAL"] = os.environ["BENCH_SWITCH_INTERVAL"]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.http = httpx.Client(
            base_url=f"{self.url}/api/v1/fleet/hosts/{AGENT_HOST}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def _spawn(self, role: str, command: str) -> None:
        log = (self.tmp / f"{role}.log").open("ab")
        self.procs[role] = subprocess.Popen(
            [sys.executable, "-m", "lbprovider", command],
            env=self.envs[role],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def start(self) -> None:
        self._spawn("api", "serve")
        wait(self._ready, timeout=60, step=0.1)
        self._spawn("agent", "agent")

    def _ready(self) -> bool:
        if self.procs["api"].poll() is not None:
            raise RuntimeError(f"lbprovider serve exited: {self.log_tail('api')}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, role: str, lines: int = 20) -> str:
        path = self.tmp / f"{role}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def master(self) -> HAProxyProcess:
        return HAProxyProcess.attach(self.state_dir / "run" / MASTER_SOCKET)

    def show_proc(self) -> ProcInfo:
        return self.master().show_proc()

    def python_pids(self) -> dict[str, int]:
        return {role: p.pid for role, p in self.procs.items()}

    def _host(self) -> tuple[str, str, list[str]] | None:
        """(applied, desired, pending) of the agent's last report as the API stored it."""
        status = FleetHost.status
        with transaction(self.sessions) as s:
            row = s.execute(
                select(
                    FleetHost.applied_version,
                    func.json_extract(status, "$.desired_version"),
                    func.json_extract(status, "$.pending"),
                ).where(FleetHost.name == AGENT_HOST)
            ).one_or_none()
        if row is None:
            return None
        return row[0], row[1] or "", json.loads(row[2] or "[]")

    def settled(self) -> bool:
        """The agent reported it applied what it was last given, nothing pending, and the API
        has nothing newer for it (a state request at its version answers 304 at once)."""
        for role, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{role} exited: {self.log_tail(role)}")
        host = self._host()
        if host is None or not host[0] or host[0] != host[1] or host[2]:
            return False
        return self.http.get("/state", params={"version": host[0], "wait": 0}).status_code == 304

    def diagnose(self, ip: str) -> str:
        with transaction(self.sessions) as s:
            status = s.scalar(select(FleetHost.status).where(FleetHost.name == AGENT_HOST)) or {}
        errors = [v for k, v in (status.get("route_errors") or {}).items() if f"/{ip}:" in k]
        return (
            f"reported errors {status.get('errors', [])[:3]}, pending "
            f"{status.get('pending', [])[:3]}, route error {errors[:1]}"
        )

    def close(self) -> None:
        """The agent first (it leaves HAProxy running on purpose, for the next agent), then its
        HAProxy master by the PID its master socket gives, then the API: each by its own PID."""
        self.http.close()
        agent = self.procs.pop("agent", None)
        if agent is not None:
            stop_pid(agent)
        stop_agent_haproxy(self.state_dir)
        api = self.procs.pop("api", None)
        if api is not None:
            stop_pid(api)


def stop_pid(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- measurements ----------------------------------------------------------------------------


def create_latency(
    sessions: sessionmaker[Session],
    side: Layout,
    prefix: str,
    port: int,
    np: int,
    n: int,
    timeout: float = 30.0,
) -> tuple[list[float], int]:
    """Create one Service at a time through the normal path; seconds until its VIP answers.
    A Service that does not answer within ``timeout`` counts as a failure (and is reported).
    After each answer it waits :data:`PAUSE` seconds before the next creation (0: back to
    back, each creation landing in the previous one's aftermath: the agent's bookkeeping and
    report, the API's handling of it).
    The creations' own transactions (the wait for SQLite's write lock included) are kept in
    :data:`COMMITS` under ``prefix``."""
    out, failed = [], 0
    commits = COMMITS.setdefault(prefix, [])
    for i in range(n):
        start = time.monotonic()
        (ip,) = add_service(sessions, service_data(f"{prefix}{i}", [(port, np)]))
        committed = time.monotonic()
        commits.append(committed - start)
        try:
            wait(partial(try_get, ip, port), timeout=timeout)
        except OutOfTime:
            if time.monotonic() > DEADLINE:
                raise
            failed += 1
            print(
                f"  {prefix}{i} ({ip}) not answering after {timeout:.0f} s: {side.diagnose(ip)}",
                flush=True,
            )
            continue
        answered = time.monotonic()
        CREATIONS.append((prefix, start, committed, answered))
        out.append(answered - start)
        if PAUSE:
            time.sleep(PAUSE)
    return out, failed


def p3_line(label: str, samples: list[float], commits: list[float]) -> str:
    if not samples:
        return f"P3@{label}: no Service answered"
    ms = {q: pct(samples, q) * 1000 for q in (0.9, 0.99)} | {0.5: statistics.median(samples) * 1000}
    return (
        f"P3@{label} create->answers over {len(samples)}: p50 {ms[0.5]:.0f} ms, "
        f"p90 {ms[0.9]:.0f} ms, p99 {ms[0.99]:.0f} ms, max {max(samples) * 1000:.0f} ms "
        f"(the creation's commit: p50 {statistics.median(commits) * 1000:.0f} ms, "
        f"max {max(commits) * 1000:.0f} ms)"
    )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def p7(side: Layout, label: str) -> float:
    proc = side.show_proc()
    worker = proc.workers[0]
    mb = rss_mb(worker)
    print(
        f"P7@{label} worker {worker} VmRSS {mb:.1f} MB (master {rss_mb(proc.master_pid):.1f} MB, "
        f"reloads so far {proc.reloads}, old workers {len(proc.old_workers)})",
        flush=True,
    )
    return mb


def settle(side: Layout, timeout: float = 120.0) -> float:
    """Wait until the agent has applied what it was last given and has nothing pending."""
    return wait(side.settled, timeout=timeout, step=0.05 if side.name == "in-process" else 0.2)


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- the run ---------------------------------------------------------------------------------


def main() -> None:
    global DEADLINE, PAUSE, STEP
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="p2,p3,p4,p7", help="comma list of p2,p3,p4,p7")
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--budget", type=float, default=540.0)
    parser.add_argument(
        "--layout",
        choices=("processes", "in-process"),
        default="processes",
        help="processes: `lbprovider serve` and `lbprovider agent` in processes of their own, "
        "as in production (default); in-process: both in threads of the bench's process",
    )
    parser.add_argument(
        "--step", type=float, default=STEP, help="seconds between two tries of a new VIP"
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=0.0,
        help="P3: seconds between a VIP answering and the next creation (default 0: back to "
        "back; e.g. 0.5 lets the previous creation's report finish first, at 10 as at 10,000)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="directory: py-spy (raw, folded stacks) of the API and agent processes during the "
        "P3 creations at the large fleet (layout processes; py-spy in the venv or on PATH)",
    )
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="trace the API and agent processes (bench/trace/sitecustomize.py) and print, per "
        "P3 figure, when each stage of a creation happened after its commit (layout processes)",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    started = time.monotonic()
    DEADLINE = started + args.budget
    STEP = args.step
    PAUSE = args.pause

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    print(
        f"bench/fleet.py {args.parts} services={args.services} samples={args.samples} "
        f"layout={args.layout} step={STEP * 1000:g} ms cpus={os.cpu_count()} load {load()}",
        flush=True,
    )

    tmp = Path(tempfile.mkdtemp(prefix="lbp-bench-", dir="/tmp"))
    backends = Backends()
    fast: FastBackend | None = None
    side: Layout | None = None
    engine = make_engine(f"sqlite:///{tmp / 'bench.db'}")
    try:
        health = backends.node_port()
        for server in backends.servers:  # HAProxy's health checks reset: not worth a traceback
            server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        sessions = session_factory(engine)
        api = api_settings(
            engine.url.render_as_string(hide_password=False),
            fleet_health_check_port=health,
            fleet_state_poll_seconds=0.02,
            fleet_long_poll_max_seconds=10.0,
        )
        agent = {"heartbeat_seconds": 2.0, "check_timeout_seconds": 0.05}
        agent["hard_stop_after_seconds"] = 120.0
        if args.layout == "processes":
            trace = tmp / "trace.txt" if args.timeline else None
            side = Processes(engine, sessions, api, agent, tmp, trace)
        else:
            side = InProcess(engine, sessions, api, agent)
        fast = FastBackend(free_port())
        make_pool(sessions, POOL, POOL_NAME)
        for name, address in NODES.items():
            set_node(sessions, name, address)
        np, port = fast.port, free_port()
        wait(lambda: try_get(NODE_ADDRESSES[0], np), timeout=10)
        side.start()
        (base,) = add_service(sessions, service_data("base", [(port, np)]))
        wait(lambda: try_get(base, port), timeout=60)

        if "p2" in parts:
            p2(side, fast, f"http://{NODE_ADDRESSES[0]}:{np}/", f"http://{base}:{port}/")

        small_ips = bulk_seed(sessions, 10 - live_services(sessions), port, np, prefix="s")
        wait(lambda: all(try_get(ip, port) for ip in small_ips))
        settle(side)
        rss = {"10": p7(side, f"{live_services(sessions)} Services")}
        small: list[float] = []
        if "p3" in parts:
            small, failed = create_latency(sessions, side, "a", port, np, args.samples)
            print(
                p3_line(f"{10}->{10 + args.samples}", small, COMMITS["a"])
                + f", {failed} failed; load {load()}",
                flush=True,
            )

        if "p4" in parts:
            p4(sessions, base, port, np)

        if not parts & {"p3", "p7"}:
            return
        settle(side)
        before = live_services(sessions)
        rss["pre"] = p7(side, f"{before} Services (the worker that will serve {args.services})")
        start = time.monotonic()
        ips = bulk_seed(sessions, args.services - before, port, np)
        seeded = time.monotonic() - start
        wait(lambda: try_get(ips[-1], port), timeout=300)
        live = time.monotonic() - start
        settled = settle(side, timeout=300)
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
            print(f"not answering: {still[:5]}; {side.diagnose(still[0])}", flush=True)
        rss["large"] = p7(side, f"{total} Services")
        if "p3" in parts:
            spies = profile(side, args.profile) if args.profile else []
            try:
                large, failed = create_latency(sessions, side, "b", port, np, args.samples)
            finally:
                for spy in spies:
                    spy.send_signal(signal.SIGINT)  # py-spy writes its file and exits
                    spy.wait(timeout=30)
            ratio = f"{p99(large) / p99(small):.2f}" if large and small else "n/a"
            print(
                p3_line(f"{total}->{total + args.samples}", large, COMMITS["b"])
                + f", {failed} failed; p99 ratio to @10 {ratio} (goal <= 1 s and <= 2x); "
                f"load {load()}",
                flush=True,
            )
            p7(side, f"{live_services(sessions)} Services, after the P3 creations")
        print(
            f"P7 worker RSS {rss['10']:.1f} MB at 10, {rss['pre']:.1f} MB at {before}, "
            f"{rss['large']:.1f} MB at {total} (goal <= 50 MB)",
            flush=True,
        )
    finally:
        if side is not None:
            side.close()
        if args.timeline and (tmp / "trace.txt").exists():
            print_timeline((tmp / "trace.txt").read_text().splitlines())
            keep = os.environ.get("BENCH_TRACE_KEEP")  # the raw trace and creations, kept
            if keep:
                shutil.copy(tmp / "trace.txt", keep)
                Path(f"{keep}.creations.json").write_text(json.dumps(CREATIONS))
        if fast is not None:
            fast.stop()
        backends.close()
        engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"done in {time.monotonic() - started:.0f} s, everything stopped", flush=True)


@dataclasses.dataclass(frozen=True)
class Span:
    role: str
    name: str
    start: float
    end: float
    note: str


def _ends_after(end: float, span: Span) -> bool:
    return span.end >= end


def print_timeline(lines: list[str]) -> None:
    """Per P3 figure, the median and p90 (ms after the creation's commit) of each stage of the
    path to its VIP answering, and the median length of the work around it (--timeline)."""
    spans = []
    for line in lines:
        role, name, start, end, *note = line.split(" ", 4)
        spans.append(Span(role, name, float(start), float(end), " ".join(note).strip()))
    spans.sort(key=lambda s: s.start)

    def first(name: str, after: float, test: Callable[[Span], bool] = lambda s: True) -> Span:
        for s in spans:
            if s.name == name and s.start >= after and test(s):
                return s
        return Span("", name, float("nan"), float("nan"), "")

    stages = [
        "api.compile start",
        "api.compile end",
        "api.answer end",
        "agent.http end",
        "agent.fetch end",
        "agent.needs_reload end",
        "agent.applier start",
        "agent.execute(add) end",
        "VIP answers",
    ]
    for prefix in sorted({c[0] for c in CREATIONS}):
        rows: dict[str, list[float]] = {k: [] for k in stages}
        busy: dict[str, list[float]] = {}
        running: dict[str, int] = {}  # calls under way at the commit
        for _, begin, committed, answered in (c for c in CREATIONS if c[0] == prefix):
            compile_ = first("api.compile", committed)
            answer = first("api.answer", compile_.end)
            http = first("agent.http", answer.start - 60.0, partial(_ends_after, answer.end))
            fetch = first("agent.fetch", http.start - 1.0, partial(_ends_after, http.end))
            reload_ = first("agent.needs_reload", fetch.end)
            applier = first("agent.applier", fetch.end)
            sent = first("agent.execute", fetch.end, lambda s: s.note.startswith("add"))
            at = {
                "api.compile start": compile_.start,
                "api.compile end": compile_.end,
                "api.answer end": answer.end,
                "agent.http end": http.end,
                "agent.fetch end": fetch.end,
                "agent.needs_reload end": reload_.end,
                "agent.applier start": applier.start,
                "agent.execute(add) end": sent.end,
                "VIP answers": answered,
            }
            for k, v in at.items():
                rows[k].append((v - committed) * 1000)
            for s in spans:
                if s.start < committed < s.end:
                    running[s.name] = running.get(s.name, 0) + 1
                if begin <= s.start <= answered:
                    busy.setdefault(s.name, []).append((s.end - s.start) * 1000)
        n = len(rows["VIP answers"])
        print(f"timeline {prefix}: ms after the commit, median / p90 over {n}")
        for k, ms in rows.items():
            known = [x for x in ms if x == x]  # NaN: no such stage found
            if known:
                print(f"  {k:26} {statistics.median(known):7.1f} / {pct(known, 0.9):7.1f}")
        print(f"timeline {prefix}: under way at the commit (creations): {running}")
        print(f"timeline {prefix}: calls that started between a creation's start and its answer")
        for k, took in sorted(busy.items()):
            print(
                f"  {k:26} n {len(took):4}  median {statistics.median(took):7.2f} ms, "
                f"max {max(took):7.2f} ms, sum {sum(took):8.1f} ms"
            )


def profile(side: Layout, out: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy on each process of the layout (raw folded stacks in ``out``/<role>.txt)."""
    out.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    spies = []
    for role, pid in side.python_pids().items():
        argv = [spy, "record", "-r", "200", "-f", "raw", "-o", str(out / f"{role}.txt")]
        spies.append(subprocess.Popen([*argv, "--pid", str(pid)], stdout=subprocess.DEVNULL))
    time.sleep(1.0)  # attached before the first creation
    return spies


def p2(side: Layout, fast: FastBackend, direct_url: str, via_url: str) -> None:
    """wrk direct to the NodePort, then through the VIP; with the CPU each process spent per
    request (wrk, the NodePort HAProxy, the proxy HAProxy worker, the API and agent processes
    and this Python process: the bench, plus the API and agent in the in-process layout),
    which shows where the cycles of the two shared cores go."""
    found: list[int] = []

    def worker() -> bool:  # the master is briefly away while a reload re-executes it
        try:
            found[:] = side.show_proc().workers[-1:]
        except HAProxyError:
            return False
        return bool(found)

    settle(side)
    wait(worker, timeout=30, step=0.1)
    proxy = found[0]
    rows = {}
    for label, url in (("direct", direct_url), ("via VIP", via_url)):
        pids = {"backend": fast.popen.pid, "proxy": proxy} | side.python_pids()
        before = {k: cpu_seconds(v) for k, v in pids.items()}
        wrk0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        res = run_wrk(url, 10, close=False, connections=16)
        wrk1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = {k: cpu_seconds(v) - before[k] for k, v in pids.items()}
        cpu["wrk"] = wrk1.ru_utime + wrk1.ru_stime - wrk0.ru_utime - wrk0.ru_stime
        own = "bench" if side.python_pids() else "python"  # the API and agent too, in-process
        cpu[own] = self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime
        rows[label] = res
        per = ", ".join(f"{k} {v / res.requests * 1e6:.1f}" for k, v in cpu.items())
        print(
            f"P2 {label}: {res.rate:.0f} req/s; CPU per request (us): {per}; "
            f"all {sum(cpu.values()) / res.requests * 1e6:.1f}; load {load()}",
            flush=True,
        )
    ratio = rows["via VIP"].rate / rows["direct"].rate
    print(f"P2 ratio via VIP / direct {ratio:.2f} (goal >= 0.8)", flush=True)


def p4(sessions: sessionmaker[Session], base: str, port: int, np: int) -> None:
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
            (ip,) = add_service(sessions, service_data(f"r{i}", [(p2, np)]))
            wait(partial(try_get, ip, p2))
        elif i % 2 == 0:
            (ip,) = add_service(sessions, service_data(f"c{i}", [(port, np)]))
            wait(partial(try_get, ip, port))
        else:
            remove_service(sessions, f"c{i - 1}")
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
