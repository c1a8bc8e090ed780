"""Own (or attach to) a master-worker HAProxy and reload it through the master CLI.

Why: a reload must be hitless and its outcome known. The master CLI ``reload`` answers before
the new worker exists, and a config that passes ``haproxy -c`` can still fail to bind (an absent
VIP); then the old worker keeps serving. So a reload is confirmed with ``show proc``: the reload
counter went up and the failure counter did not. Old workers of Debian's 2.6 build have been
seen to crash on exit under load: their exit codes (from the master's log) are reported.

What it must not do: render or choose configs, or signal any process but its own master.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lbprovider.haproxy.runtime import HAProxyError, MasterClient, ProcInfo, RuntimeUnavailable

logger = logging.getLogger(__name__)

_EXIT_RE = re.compile(r"(Former|Current) worker \((\d+)\) exited with code (\d+) \(([^)]*)\)")


class StartFailed(HAProxyError):
    """The master did not come up with a worker; carries HAProxy's own messages."""


class ReloadFailed(HAProxyError):
    """The reload did not produce a new worker; the previous worker is still serving."""


@dataclass(frozen=True)
class WorkerExit:
    """A worker that ended; ``code`` other than 0 after a reload is worth an alert."""

    pid: int
    code: int
    reason: str
    former: bool  # True: an old worker after a reload


class HAProxyProcess:
    """One master-worker HAProxy: started by us (``start``) or found running (``attach``)."""

    def __init__(self, master_socket: Path, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.master_socket = master_socket
        self.master = MasterClient(str(master_socket))
        self._popen = popen
        self._log: collections.deque[str] = collections.deque(maxlen=2000)
        self._exits: list[WorkerExit] = []
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        if popen is not None and popen.stderr is not None:
            self._reader = threading.Thread(target=self._read_stderr, daemon=True)
            self._reader.start()

    @classmethod
    def start(
        cls,
        config: Path,
        master_socket: Path,
        *,
        haproxy_bin: str = "haproxy",
        timeout: float = 15.0,
    ) -> HAProxyProcess:
        """Start ``haproxy -W -S <socket> -f <config>`` and wait for its first worker."""
        master_socket.unlink(missing_ok=True)
        popen = subprocess.Popen(
            [haproxy_bin, "-W", "-S", f"{master_socket},mode,600", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # survives the agent: a new agent attaches to it
        )
        proc = cls(master_socket, popen)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                proc._join_reader()
                raise StartFailed(proc.messages(alerts_only=True) or f"exit {popen.returncode}")
            info = proc._try_show_proc()
            if info is not None and info.workers:
                logger.info("haproxy started", extra={"event": "haproxy_started", "pid": popen.pid})
                return proc
            time.sleep(0.05)
        proc.stop()
        raise StartFailed(f"no worker after {timeout}s")

    @classmethod
    def attach(cls, master_socket: Path) -> HAProxyProcess:
        """Use a master that is already running (e.g. started by a previous agent)."""
        proc = cls(master_socket)
        proc.show_proc()
        return proc

    @property
    def pid(self) -> int:
        """The master's PID."""
        if self._popen is not None:
            return self._popen.pid
        return self.show_proc().master_pid

    @property
    def owned(self) -> bool:
        """True when this object started the master (and may read its log)."""
        return self._popen is not None

    def _read_stderr(self) -> None:
        assert self._popen is not None and self._popen.stderr is not None
        for raw in self._popen.stderr:
            line = raw.decode(errors="replace").rstrip()
            m = _EXIT_RE.search(line)
            with self._lock:
                self._log.append(line)
                if m:
                    exit_ = WorkerExit(int(m[2]), int(m[3]), m[4], m[1] == "Former")
                    self._exits.append(exit_)
            if m and int(m[3]) != 0:
                logger.warning(
                    "haproxy worker exited badly", extra={"event": "worker_exit", "error": line}
                )

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)

    def messages(self, *, alerts_only: bool = False, since: int = 0) -> str:
        """HAProxy's own log lines (owned master only), e.g. why a bind failed."""
        with self._lock:
            lines = list(self._log)[since:]
        if alerts_only:
            lines = [ln for ln in lines if "[ALERT]" in ln]
        return "\n".join(lines)

    def _log_size(self) -> int:
        with self._lock:
            return len(self._log)

    def worker_exits(self) -> list[WorkerExit]:
        """Worker exits seen since the last call (owned master only)."""
        with self._lock:
            exits, self._exits = self._exits, []
        return exits

    def show_proc(self) -> ProcInfo:
        """The master's view: reload counters and worker PIDs."""
        return self.master.show_proc()

    def _try_show_proc(self) -> ProcInfo | None:
        try:
            return self.show_proc()
        except RuntimeUnavailable:
            return None

    def reload(self, timeout: float = 30.0) -> ProcInfo:
        """Reload and confirm; raise :class:`ReloadFailed` if the old worker is still serving."""
        before = self.show_proc()
        mark = self._log_size()
        self.master.reload()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            after = self._try_show_proc()
            if after is not None and after.reloads > before.reloads:
                return self._judge_reload(before, after, mark)
            time.sleep(0.05)
        raise ReloadFailed(f"reload not confirmed by show proc within {timeout}s")

    def _judge_reload(self, before: ProcInfo, after: ProcInfo, mark: int) -> ProcInfo:
        if after.failed_reloads > before.failed_reloads or not after.workers:
            time.sleep(0.1)  # let the master's alerts reach our reader
            why = self.messages(alerts_only=True, since=mark) or "see the HAProxy log"
            logger.error("haproxy reload failed", extra={"event": "reload_failed", "error": why})
            raise ReloadFailed(why)
        logger.info("haproxy reloaded", extra={"event": "reloaded", "workers": after.workers})
        return after

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop our own master: soft stop (SIGUSR1), then SIGTERM, then SIGKILL.

        Returns the master's exit code, or ``None`` for an attached master (left running).
        """
        if self._popen is None:
            return None
        for sig, wait in ((signal.SIGUSR1, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if self._popen.poll() is not None:
                break
            os.kill(self._popen.pid, sig)
            try:
                self._popen.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        self._join_reader()
        if self._popen.stderr is not None:
            self._popen.stderr.close()
        return self._popen.returncode
