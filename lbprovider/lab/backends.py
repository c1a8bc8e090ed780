"""Demo NodePort backends for the lab: small HTTP servers standing for cluster nodes.

A LAB TOOL. Each ``DemoNode`` listens on its node address (a loopback address such as
127.0.1.1) at the Service's NodePort and answers with its own name, and at kube-proxy's
health port (10256, ``/healthz``) so the fleet's per-node health check sees it UP. Nothing
here imports the rest of lbprovider.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logger = logging.getLogger(__name__)

KUBE_PROXY_HEALTH_PORT = 10256


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        if self.path == "/healthz":
            body = b'{"healthy": true}\n'
            ctype = "application/json"
        else:
            body = f"hello from {self.server.node_name}\n".encode()
            ctype = "text/plain; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("demo backend: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    node_name = ""

    def handle_error(self, request: object, client_address: object) -> None:
        # Health checkers hang up as soon as they have the status line: not an error.
        logger.debug("demo backend: client went away", extra={"event": "demo_client_gone"})


class DemoNode:
    """One demo node: HTTP servers on ``address`` at each given port."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self._servers: list[_Server] = []

    def listen(self, port: int) -> None:
        server = _Server((self.address, port), _Handler)
        server.node_name = self.name
        threading.Thread(
            target=server.serve_forever, name=f"demo-{self.name}-{port}", daemon=True
        ).start()
        self._servers.append(server)

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()
