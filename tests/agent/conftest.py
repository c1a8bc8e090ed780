"""A whole fleet on loopback: a database, the real API served by uvicorn, agents driving real
HAProxy masters, and small HTTP servers standing for nodes' NodePorts (127.0.0.2 and .3).

Everything started here is stopped here by its own handle: agents by ``stop`` + join, their
HAProxy masters by ``HAProxyProcess.stop`` (their own PID), HTTP servers by ``shutdown``, the
API by its uvicorn handle; run directories are removed.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.agent.loop import Agent, AgentConfig
from lbprovider.api.app import create_app
from lbprovider.db.models import Base
from lbprovider.db.session import make_engine, session_factory
from tests.api.conftest import LiveServer, api_settings, make_token
from tests.haproxy.conftest import Backends

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
        server = LiveServer(app).start()
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
