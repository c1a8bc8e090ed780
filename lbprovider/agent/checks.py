"""The serving check: does each VIP:port this host serves actually carry a connection?

Why: "applied" is HAProxy's word; "served" is a client's. After applying, the agent connects
to each new or changed VIP:port. HAProxy accepts every connection on a bound port and closes at
once the ones it cannot route (no map line, no healthy node, source not allowed), so a
connection still open after ``timeout`` (or one that received bytes) is served; refused, reset
or closed at once is not. Connections are made concurrently (bounded), so thousands of routes
take seconds, not minutes.

What it must not do: send application bytes, or keep connections open past the check.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import selectors
import socket
import time
from collections.abc import Sequence

Target = tuple[str, str, int]  # (route_id, address, port)
BATCH = 256


def check_targets(targets: Sequence[Target], timeout: float) -> dict[str, str]:
    """route_id -> "" when served, else why not."""
    results: dict[str, str] = {}
    for start in range(0, len(targets), BATCH):
        results.update(_check_batch(targets[start : start + BATCH], timeout))
    return results


def _open(address: str, port: int) -> tuple[socket.socket, int]:
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock, sock.connect_ex((address, port))


def _check_batch(targets: Sequence[Target], timeout: float) -> dict[str, str]:
    results: dict[str, str] = {}
    sel = selectors.DefaultSelector()
    connected: set[str] = set()
    socks: dict[str, socket.socket] = {}
    try:
        for route_id, address, port in targets:
            sock, code = _open(address, port)
            socks[route_id] = sock
            if code not in (0, errno.EINPROGRESS):
                results[route_id] = f"connect to {address}:{port}: {os.strerror(code)}"
                continue
            sel.register(sock, selectors.EVENT_WRITE, route_id)
        _wait(sel, socks, results, connected, timeout)
        for route_id in socks:
            if route_id not in results:
                served = route_id in connected
                results[route_id] = "" if served else "connect timed out"
    finally:
        sel.close()
        for sock in socks.values():
            sock.close()
    return results


def _wait(
    sel: selectors.BaseSelector,
    socks: dict[str, socket.socket],
    results: dict[str, str],
    connected: set[str],
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while sel.get_map() and (left := deadline - time.monotonic()) > 0:
        for key, mask in sel.select(left):
            route_id = str(key.data)
            sock = socks[route_id]
            if mask & selectors.EVENT_WRITE and route_id not in connected:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    results[route_id] = f"connect: {os.strerror(code)}"
                    sel.unregister(sock)
                    continue
                connected.add(route_id)
                sel.modify(sock, selectors.EVENT_READ, route_id)
                continue
            _on_readable(sock, route_id, results)
            sel.unregister(sock)


def _on_readable(sock: socket.socket, route_id: str, results: dict[str, str]) -> None:
    try:
        data = sock.recv(1)
    except OSError as e:
        results[route_id] = f"connection reset at once ({e.strerror}): no route or no healthy node"
        return
    if data:
        results[route_id] = ""  # the backend spoke first: served
    else:
        results[route_id] = "connection closed at once: no route or no healthy node"
