"""Supervise one routing daemon (BIRD or keepalived): start, adopt, signal, stop by its own PID.

Why: the agent must know whether the daemon that announces its VIPs is alive, restart it when
it is not, and stop exactly the process it started — never a daemon of the same name that
belongs to someone else (another network namespace, the distribution's own unit). A daemon left
running by a previous agent is adopted only if its pid file names a live process whose command
line carries our config path.

What it must not do: render configs, or signal any PID it did not start or adopt.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lbprovider.announce.model import DaemonFailed

logger = logging.getLogger(__name__)


def netns_prefix(netns: str | None) -> list[str]:
    """Command prefix that runs a program in network namespace ``netns`` (None: here)."""
    return ["ip", "netns", "exec", netns] if netns else []


def run_tool(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    timeout: float = 10.0,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short command (``birdc``, ``ip``, a config check) and capture its output."""
    return subprocess.run(
        [*netns_prefix(netns), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


class Daemon:
    """One daemon started in the foreground (``argv`` must keep it there), with its log."""

    def __init__(
        self, name: str, argv: Sequence[str], *, pidfile: str, marker: str, netns: str | None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.pidfile = Path(pidfile)
        self.marker = marker  # must appear in the command line of a process we adopt
        self.netns = netns
        self._popen: subprocess.Popen[bytes] | None = None
        self._adopted: int | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=500)
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        if self._popen is not None:
            return self._popen.pid
        return self._adopted

    def start(self, ready: Callable[[], bool], timeout: float = 10.0) -> None:
        """Start the daemon and wait until ``ready()``; raise DaemonFailed with its log."""
        self._popen = subprocess.Popen(
            [*netns_prefix(self.netns), *self.argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._adopted = None
        self._reader = threading.Thread(target=self._read_log, daemon=True, name=self.name)
        self._reader.start()
        logger.info(
            "daemon started",
            extra={"event": "daemon_start", "daemon": self.name, "pid": self._popen.pid},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                break
            if ready():
                return
            time.sleep(0.05)
        code = self.stop(timeout=2)
        raise DaemonFailed(f"{self.name} did not come up (exit {code}): {self.messages()[-800:]}")

    def adopt(self) -> bool:
        """Take over a daemon a previous agent started (pid file + our config path)."""
        try:
            pid = int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        if self.marker not in _cmdline(pid):
            return False
        self._popen, self._adopted = None, pid
        logger.info(
            "daemon adopted", extra={"event": "daemon_adopt", "daemon": self.name, "pid": pid}
        )
        return True

    def _read_log(self) -> None:
        popen = self._popen
        assert popen is not None and popen.stderr is not None
        for raw in popen.stderr:
            line = raw.decode(errors="replace").rstrip()
            self._log.append(line)
            logger.debug("daemon log", extra={"daemon": self.name, "line": line})

    def messages(self) -> str:
        return "\n".join(self._log)

    def alive(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        if self._adopted is not None:
            return self.marker in _cmdline(self._adopted)
        return False

    def send(self, sig: signal.Signals) -> None:
        pid = self.pid
        if pid is None or not self.alive():
            raise DaemonFailed(f"{self.name} is not running")
        os.kill(pid, sig)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM our own PID, SIGKILL after ``timeout``; returns the exit code if known."""
        pid = self.pid
        if pid is None:
            return None
        if self.alive():
            os.kill(pid, signal.SIGTERM)
        code = self._wait(timeout)
        if code is None and self.alive():
            logger.warning("daemon killed", extra={"event": "daemon_kill", "daemon": self.name})
            os.kill(pid, signal.SIGKILL)
            code = self._wait(2.0)
        if self._reader is not None:
            self._reader.join(timeout=1)
        if self._popen is not None and self._popen.stderr is not None:
            self._popen.stderr.close()
        self._popen, self._adopted = None, None
        return code

    def _wait(self, timeout: float) -> int | None:
        if self._popen is not None:
            try:
                return self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return None
