"""`lbprovider lab`, the README's run command: the whole system on one machine."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.haproxy, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(sock: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(sock))
        except OSError:
            return False
    return True


def read_banner(proc: subprocess.Popen[str], timeout: float) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        lines.append(proc.stdout.readline())
        if "Ctrl-C" in lines[-1]:
            return lines
    raise AssertionError("lab did not come up:\n" + "".join(lines))


def test_lab_assigns_an_ip_and_carries_traffic_through_haproxy(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "lab"
    argv = [
        sys.executable,
        "-m",
        "lbprovider",
        "lab",
        "--listen",
        f"127.0.0.1:{port}",
        "--state-dir",
        str(state),
    ]
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path
    ) as proc:
        try:
            lines = read_banner(proc, 120)
            text = "".join(lines)
            token = next(ln.split()[-1] for ln in lines if ln.strip().startswith("admin token"))
            url = next(
                w
                for ln in lines
                if ln.strip().startswith("demo")
                for w in ln.split()
                if w.startswith("http://")
            )
            assert f"http://127.0.0.1:{port}/" in text and token.startswith("lbp_")
            assert url.startswith("http://127.77.0.1:"), "first non-buggy address of the pool"
            seen = {httpx.get(url, timeout=5).text for _ in range(20)}
            assert seen == {"hello from lab-node-1\n", "hello from lab-node-2\n"}
            page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5, follow_redirects=True)
            assert page.status_code == 200 and "<html" in page.text.lower()
            api = httpx.get(
                f"http://127.0.0.1:{port}/api/v1/allocations",
                timeout=5,
                headers={"Authorization": f"Bearer {token}"},
            )
            assert api.status_code == 200 and "127.77.0.1" in api.text
            master = state / "agent" / "run" / "master.sock"
            assert answers(master)
        finally:
            proc.terminate()
            assert proc.wait(timeout=60) == 0
    assert not answers(master), "the lab stopped its haproxy"
