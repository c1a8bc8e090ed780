"""Real HAProxy on loopback, with small HTTP servers standing for nodes' NodePorts.

Everything started here is stopped here by its own handle: the HAProxy master by its PID
(``HAProxyProcess.stop``), the HTTP servers by ``shutdown``. Nodes are 127.0.0.x addresses, VIPs
are 127.0.x.y addresses, all on loopback; every port is a free high port.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address

import pytest

from lbprovider.haproxy.apply import Applier, start_or_attach
from lbprovider.haproxy.model import DesiredState, HealthCheck, Node, NodeState, Route, Settings
from lbprovider.haproxy.process import HAProxyProcess

NODE_ADDRESSES = ("127.0.0.2", "127.0.0.3")


def free_port() -> int:
    """A TCP port free on every loopback address (bound on 0.0.0.0 and released)."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        body = self.server.label.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@dataclass
class Backends:
    """HTTP servers answering "<node>:<port>" on each node address."""

    servers: list[ThreadingHTTPServer] = field(default_factory=list)

    def serve(self, address: str, port: int, label: str) -> None:
        server = ThreadingHTTPServer((address, port), _Handler)
        server.daemon_threads = True
        server.label = label  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers.append(server)

    def node_port(self, port: int | None = None) -> int:
        """Serve a NodePort on every node; returns the port."""
        port = port or free_port()
        for i, addr in enumerate(NODE_ADDRESSES):
            self.serve(addr, port, f"n{i + 1}:{port}")
        return port

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def backends() -> Iterator[Backends]:
    b = Backends()
    yield b
    b.close()


def get(address: str, port: int, timeout: float = 3.0) -> str:
    """One HTTP/1.0 GET through HAProxy; returns the body or raises OSError."""
    with socket.create_connection((address, port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.0 200"):
        raise ConnectionError(f"bad answer {data[:80]!r}")
    return body.decode()


def try_get(address: str, port: int) -> str | None:
    try:
        return get(address, port, timeout=2.0)
    except OSError:
        return None


def nodes(*states: NodeState) -> tuple[Node, ...]:
    """Both test nodes, with the given states (ready by default)."""
    full = states or (NodeState.READY,) * len(NODE_ADDRESSES)
    return tuple(
        Node(f"n{i + 1}", ip_address(a), st)
        for i, (a, st) in enumerate(zip(NODE_ADDRESSES, full, strict=True))
    )


@dataclass
class Lab:
    """A running HAProxy driven by an Applier, plus its settings."""

    settings: Settings
    process: HAProxyProcess
    applier: Applier
    health_port: int

    def state(self, routes: list[Route], node_list: tuple[Node, ...] | None = None) -> DesiredState:
        return DesiredState(
            routes=tuple(routes),
            nodes=node_list if node_list is not None else nodes(),
            health_check=HealthCheck(port=self.health_port, interval_ms=500),
        )

    def worker_pid(self) -> int:
        return self.process.show_proc().workers[-1]


@pytest.fixture
def lab_factory(backends: Backends) -> Iterator[Callable[..., Lab]]:
    labs: list[tuple[Lab, str]] = []

    def make(routes: list[Route] | None = None, **settings: object) -> Lab:
        run_dir = tempfile.mkdtemp(prefix="lbp-hx-", dir="/tmp")
        health_port = backends.node_port()
        s = Settings(run_dir=run_dir, maxconn=2000, hard_stop_after_ms=5000, **settings)  # type: ignore[arg-type]
        placeholder = Lab(s, None, None, health_port)  # type: ignore[arg-type]
        desired = placeholder.state(routes or [])
        process = start_or_attach(desired, s)
        lab = Lab(s, process, Applier(s, process), health_port)
        labs.append((lab, run_dir))
        return lab

    yield make
    for lab, run_dir in labs:
        lab.applier.close()
        lab.process.stop(timeout=5)
        shutil.rmtree(run_dir, ignore_errors=True)


def vip(i: int) -> str:
    """The i-th VIP address in 127.1.0.0/16."""
    return str(ip_address("127.1.0.0") + i)


def route(i: int, port: int, node_port: int, **kw: object) -> Route:
    return Route(f"ns/svc-{i}:{port}", ip_address(vip(i)), port, node_port, **kw)  # type: ignore[arg-type]
