"""A small lab of network namespaces for announcement tests: hosts, a switch, a client, a node.

Everything is named with a per-run random suffix and removed by that name (namespaces) or PID
(processes) in ``close()``. Addresses come only from 192.0.2.0/24, 198.51.100.0/24 and
2001:db8::/32; no namespace has a route out of the lab.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent

NODE_SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"service ok\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {out.stderr.strip()}")
    return out


@dataclass
class NetLab:
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lbp-an-", dir="/tmp")))

    def ns(self, role: str) -> str:
        name = f"lbp-{role}-{self.suffix}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def link(self, a: str, a_if: str, b: str, b_if: str) -> None:
        sh("ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b)
        sh("ip", "-n", a, "link", "set", a_if, "up")
        sh("ip", "-n", b, "link", "set", b_if, "up")

    def bridge(self, ns: str, name: str = "br0") -> None:
        sh("ip", "-n", ns, "link", "add", name, "type", "bridge", "forward_delay", "0")
        sh("ip", "-n", ns, "link", "set", name, "up")

    def port(self, sw: str, ns: str, ns_if: str, sw_if: str, br: str = "br0") -> None:
        self.link(ns, ns_if, sw, sw_if)
        sh("ip", "-n", sw, "link", "set", sw_if, "master", br)

    def addr(self, ns: str, ifname: str, cidr: str) -> None:
        extra = ["nodad"] if ":" in cidr else []
        sh("ip", "-n", ns, "addr", "add", cidr, "dev", ifname, *extra)

    def route(self, ns: str, *spec: str) -> None:
        sh("ip", "-n", ns, "route", "add", *spec)

    def sysctl(self, ns: str, *kv: str) -> None:
        sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", *kv)

    def spawn(
        self, ns: str, *argv: str, stdout: int = subprocess.DEVNULL, stderr: Path | None = None
    ) -> subprocess.Popen[bytes]:
        err = stderr.open("wb") if stderr is not None else subprocess.DEVNULL
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=err,
        )
        if not isinstance(err, int):
            err.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, sig)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()

    def close(self) -> None:
        for proc in self.procs:
            self.stop(proc)
        for name in reversed(self.namespaces):
            sh("ip", "netns", "del", name, check=False)
        sh("rm", "-rf", str(self.tmp), check=False)

    # -- services -----------------------------------------------------------------------------
    def node(self, ns: str, address: str, port: int = 8080) -> None:
        """The Service's endpoint: an HTTP server answering "service ok"."""
        self.spawn(ns, sys.executable, "-c", NODE_SERVER, address, str(port))
        wait_for(
            lambda: (
                sh("ip", "netns", "exec", ns, "ss", "-ltn", check=False).stdout.count(
                    f"{address}:{port}"
                )
                > 0
            ),
            "node server listening",
        )

    def haproxy(
        self, ns: str, label: str, vips: list[str], node: str, stats_socket: str | None = None
    ) -> subprocess.Popen[bytes]:
        """A static HAProxy in ``ns``: every VIP:80 to the node, tagging answers with ``label``."""
        binds = "\n".join(f"    bind {'[' + v + ']' if ':' in v else v}:80" for v in vips)
        cfg = self.tmp / f"haproxy-{label}.cfg"
        cfg.write_text(
            "global\n    maxconn 500\n"
            + (f"    stats socket {stats_socket} mode 600\n" if stats_socket else "")
            + "defaults\n    mode http\n    timeout connect 1s\n    timeout client 30s\n"
            "    timeout server 5s\n    timeout http-keep-alive 30s\n"
            f"frontend fe\n{binds}\n    http-response set-header X-Host {label}\n"
            "    default_backend be\n"
            f"backend be\n    server node {node}:8080\n"
        )
        proc = self.spawn(ns, "haproxy", "-db", "-f", str(cfg))
        wait_for(
            lambda: (
                sh("ip", "netns", "exec", ns, "ss", "-ltn", check=False).stdout.count(":80 ")
                >= len(vips)
            ),
            f"haproxy {label} listening",
        )
        return proc


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class HealthInput:
    """The agent's health input for one host: watches its HAProxy and tells the announcer."""

    def __init__(self, proc: subprocess.Popen[bytes], on_down: Callable[[], None]) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(proc, on_down), daemon=True)
        self._thread.start()

    def _run(self, proc: subprocess.Popen[bytes], on_down: Callable[[], None]) -> None:
        while not self._stop.is_set():
            if proc.poll() is not None:
                on_down()
                return
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class LoopResult:
    requests: list[tuple[float, float, bool, str]]
    kept: list[tuple[str, str]]

    @property
    def failures(self) -> list[tuple[float, float, bool, str]]:
        return [r for r in self.requests if not r[2]]

    def gap_ms(self) -> float:
        """From the start of the first failed request to the first success after the last one."""
        fails = self.failures
        if not fails:
            return 0.0
        last = fails[-1][0]
        after = [r for r in self.requests if r[2] and r[0] > last]
        assert after, "the client never recovered"
        return (after[0][1] - fails[0][0]) * 1000

    def hosts_after(self, t: float) -> set[str]:
        return {r[3] for r in self.requests if r[2] and r[0] > t}


class ClientLoop:
    """client_loop.py running in the client namespace."""

    def __init__(self, lab: NetLab, ns: str, vip: str, **kw: object) -> None:
        args = [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
        self.errors = lab.tmp / f"client-{secrets.token_hex(3)}.err"
        self.proc = lab.spawn(
            ns,
            sys.executable,
            str(HERE / "client_loop.py"),
            "--loop",
            vip,
            *args,
            stdout=subprocess.PIPE,
            stderr=self.errors,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        assert line == "READY", f"client never reached the VIP: {self.errors.read_text()}"

    def result(self, timeout: float = 30.0) -> LoopResult:
        assert self.proc.stdout is not None
        out, _ = self.proc.communicate(timeout=timeout)
        data = json.loads(out.decode().strip().splitlines()[-1])
        return LoopResult([tuple(r) for r in data["requests"]], [tuple(k) for k in data["kept"]])
