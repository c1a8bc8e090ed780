"""A whole fleet on loopback: a database, the real API served by uvicorn, agents driving real
HAProxy masters, and small HTTP servers standing for nodes' NodePorts (127.0.0.2 and .3).

Everything started here is stopped here by its own handle: agents by ``stop`` + join, their
HAProxy masters by ``HAProxyProcess.stop`` (their own PID), HTTP servers by ``shutdown``, the
API by its uvicorn handle; run directories are removed.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.agent.loop import Agent, AgentConfig
from lbprovider.api.app import create_app
from lbprovider.db.models import Base, ServiceRecord
from lbprovider.db.session import make_engine, session_factory, transaction
from tests.api.conftest import LiveServer, api_settings, make_token
from tests.haproxy.conftest import NODE_ADDRESSES, Backends, free_port

HOST = "edge-1"


@pytest.fixture
def backends() -> Iterator[Backends]:
    b = Backends()
    yield b
    b.close()


@dataclass
class Fleet:
    """The API, its database and the agents started against it."""

    engine: Engine
    sessions: sessionmaker[Session]
    server: LiveServer
    health_port: int
    tokens: dict[str, str]
    agents: list[tuple[Agent, threading.Thread]] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)

    def token(self, host: str) -> str:
        if host not in self.tokens:
            self.tokens[host] = make_token(self.sessions, f"agent-{host}", ["agent"], host=host)
        return self.tokens[host]

    def config(self, host: str = HOST, state_dir: str | None = None, **kw: Any) -> AgentConfig:
        if state_dir is None:
            state_dir = tempfile.mkdtemp(prefix="lbp-ag-", dir="/tmp")
            self.dirs.append(state_dir)
        values: dict[str, Any] = {
            "api_url": self.server.url,
            "token": self.token(host),
            "host": host,
            "state_dir": Path(state_dir),
            "reload_debounce_seconds": 0.2,
            "long_poll_seconds": 2.0,
            "heartbeat_seconds": 0.5,
            "retry_seconds": 0.2,
            "maxconn": 4000,
            "hard_stop_after_seconds": 5.0,
            "check_timeout_seconds": 0.2,
        }
        values.update(kw)
        return AgentConfig(**values)

    def start_agent(self, config: AgentConfig | None = None) -> Agent:
        agent = Agent(config or self.config())
        agent.start()
        thread = threading.Thread(target=agent.run, name=f"agent-{agent.config.host}")
        thread.start()
        self.agents.append((agent, thread))
        return agent

    def stop_agent(self, agent: Agent, *, stop_haproxy: bool = True) -> None:
        for i, (a, thread) in enumerate(self.agents):
            if a is agent:
                agent.stop()
                thread.join(timeout=15)
                agent.close()
                if stop_haproxy and agent.process is not None:
                    agent.process.stop(timeout=5)
                del self.agents[i]
                return


@pytest.fixture
def fleet_factory(backends: Backends, tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    made: list[Fleet] = []

    def make(**settings: Any) -> Fleet:
        engine = make_engine(f"sqlite:///{tmp_path / f'fleet{len(made)}.db'}")
        Base.metadata.create_all(engine)
        sessions = session_factory(engine)
        health_port = backends.node_port()
        values: dict[str, Any] = {
            "fleet_health_check_port": health_port,
            "fleet_health_check_interval_ms": 300,
            "fleet_long_poll_max_seconds": 5.0,
            "fleet_state_poll_seconds": 0.05,
            "fleet_host_stale_seconds": 30.0,
        }
        values.update(settings)
        url = engine.url.render_as_string(hide_password=False)
        app = create_app(api_settings(url, **values), engine=engine)
        server = serve_on(app)
        fleet = Fleet(engine, sessions, server, health_port, {})
        made.append(fleet)
        return fleet

    yield make
    for fleet in made:
        for agent, _ in list(fleet.agents):
            fleet.stop_agent(agent)
        fleet.server.stop()
        fleet.engine.dispose()
        for d in fleet.dirs:
            shutil.rmtree(d, ignore_errors=True)


def serve_on(app: Any, port: int = 0) -> LiveServer:
    """The API under uvicorn on ``port`` (0: a free one), with SO_REUSEADDR so a test can stop
    it and serve again on the same port (the agent's configured URL)."""
    server = LiveServer(app)
    server.sock.close()
    server.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.sock.bind(("127.0.0.1", port))
    server.port = server.sock.getsockname()[1]
    server.thread = threading.Thread(
        target=server.server.run, kwargs={"sockets": [server.sock]}, daemon=True
    )
    return server.start()


@pytest.fixture
def fleet(fleet_factory: Callable[..., Fleet]) -> Fleet:
    return fleet_factory()


def wait_until(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        time.sleep(0.05)


class FastBackend:
    """A second HAProxy answering HTTP itself (``http-request return``) on both node
    addresses: a NodePort fast enough that a load test measures the fleet, not Python."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="lbp-fb-", dir="/tmp")
        lines = [
            "global",
            "    maxconn 4000",
            "defaults",
            "    mode http",
            "    timeout client 10s",
            "    timeout server 10s",
            "    timeout connect 2s",
        ]
        for i, addr in enumerate(NODE_ADDRESSES):
            lines += [
                f"frontend n{i + 1}",
                f"    bind {addr}:{port}",
                "    http-request return status 200 content-type text/plain "
                f'string "n{i + 1}:{port}"',
            ]
        cfg = Path(self.dir) / "backend.cfg"
        cfg.write_text("\n".join(lines) + "\n")
        self.popen = subprocess.Popen(
            ["nice", "-n", "10", "haproxy", "-db", "-f", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def fast_backend() -> Iterator[Callable[[], int]]:
    """``fast_backend()`` starts one on a free port and returns the port."""
    started: list[FastBackend] = []

    def start() -> int:
        b = FastBackend(free_port())
        started.append(b)
        wait_until(lambda: try_get(NODE_ADDRESSES[0], b.port), what="fast backend up")
        return b.port

    yield start
    for b in started:
        b.stop()


@dataclass
class WrkResult:
    requests: int
    socket_errors: int
    non_2xx: int
    seconds: float
    text: str

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def run_wrk(
    url: str, seconds: int, *, connections: int = 16, close: bool = True, threads: int = 2
) -> WrkResult:
    """Run Debian's ``wrk`` and parse its summary."""
    cmd = [
        "nice",
        "-n",
        "10",
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        url,
    ]
    if close:
        cmd[-1:-1] = ["-H", "Connection: close"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    assert m, out
    secs = float(m[2]) / (1000 if m[3] == "ms" else 1)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(
        requests=int(m[1]),
        socket_errors=sum(int(x) for x in errors.groups()) if errors else 0,
        non_2xx=int(non2xx[1]) if non2xx else 0,
        seconds=secs,
        text=out,
    )


def get(address: str, port: int, timeout: float = 3.0) -> str:
    """One HTTP/1.0 GET to VIP:port; the body, or raises OSError (any HTTP/1.x 200 is fine)."""
    with socket.create_connection((address, port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not re.match(rb"HTTP/1\.[01] 200", head):
        raise ConnectionError(f"bad answer {data[:80]!r}")
    return body.decode()


def try_get(address: str, port: int) -> str | None:
    try:
        return get(address, port, timeout=2.0)
    except OSError:
        return None


def serving(fleet: Fleet, name: str) -> tuple[bool, str]:
    """The Serving verdict and message the API recorded for Service ``name``."""
    with transaction(fleet.sessions) as s:
        rec = s.scalar(select(ServiceRecord).where(ServiceRecord.name == name))
        assert rec is not None
        return rec.serving, rec.serving_message
