"""Client loop run inside the client namespace: short HTTP requests to a VIP, plus keep-alive
connections held across the failover. Prints READY once warmed up, then one JSON result line.

Bounded: at most --duration seconds and --max-requests requests, each with --timeout.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time


def _request(sock: socket.socket) -> str:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    if not lines[0].startswith(("HTTP/1.1 200", "HTTP/1.0 200")):
        raise ConnectionError(lines[0])
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    length = int(headers.get("content-length", headers.get("Content-Length", "0")))
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("short body")
        body += chunk
    return headers.get("x-host", headers.get("X-Host", "?"))


def one(vip: str, timeout: float) -> str:
    family = socket.AF_INET6 if ":" in vip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((vip, 80))
        return _request(s)


def keep(vip: str, count: int, timeout: float) -> list[tuple[socket.socket, str]]:
    out = []
    for _ in range(count):
        family = socket.AF_INET6 if ":" in vip else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect((vip, 80))
        out.append((s, _request(s)))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--loop", required=True)
    p.add_argument("--keep")
    p.add_argument("--keep-count", type=int, default=0)
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--timeout", type=float, default=0.25)
    p.add_argument("--max-requests", type=int, default=2000)
    a = p.parse_args()
    kept = keep(a.keep, a.keep_count, 2.0) if a.keep else []
    results = []
    started = time.time()
    ready = False
    while time.time() - started < a.duration and len(results) < a.max_requests:
        t0 = time.time()
        try:
            host, ok = one(a.loop, a.timeout), True
        except OSError as e:
            host, ok = type(e).__name__, False
        results.append((t0, time.time(), ok, host))
        if not ready and ok:
            print("READY", flush=True)
            ready = True
        time.sleep(max(0.0, a.interval - (time.time() - t0)))
    after = []
    for s, host in kept:
        try:
            after.append((host, _request(s)))
        except OSError as e:
            after.append((host, f"error:{type(e).__name__}"))
        s.close()
    print(json.dumps({"requests": results, "kept": after}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
