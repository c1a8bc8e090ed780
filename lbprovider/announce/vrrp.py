"""VrrpAnnouncer: hold this host's share of the VIPs with a keepalived it supervises.

Why: in vrrp mode the hosts of one L2 segment elect, per VIP group, the host that answers ARP/ND
for the group's VIPs. The agent calls ``update()`` with the VIPs its HAProxy serves (the config
holds only those, reloaded with SIGHUP) and whether HAProxy is healthy: unhealthy writes ``1``
to a tracked file, keepalived (inotify) puts every instance in FAULT at once and the peers take
over. keepalived reports transitions on a FIFO; they give "who holds which VIP since when".

What it must not do: talk to HAProxy, the API or the database; stop a keepalived it did not
start; edit any sysctl but ``ip_nonlocal_bind`` (HAProxy must bind VIPs it does not hold yet).
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import signal
import socket
import stat
import sys
import threading
from collections.abc import Collection
from datetime import datetime
from pathlib import Path

from lbprovider.announce.daemon import Daemon, run_tool
from lbprovider.announce.keepalived import (
    VrrpConfig,
    anchor,
    group_of,
    instance_name,
    paths,
    render_check_script,
    render_keepalived,
)
from lbprovider.announce.model import (
    Announcement,
    AnnounceState,
    DaemonFailed,
    IPAddress,
    check_vips,
    utc_now,
    vip_key,
)

logger = logging.getLogger(__name__)

_FIFO_RE = re.compile(r'^INSTANCE "(?P<name>[^"]+)" (?P<state>[A-Z]+) (?P<prio>\d+)')
_STATES = {"MASTER": AnnounceState.ANNOUNCED, "BACKUP": AnnounceState.STANDBY}


class _FifoReader:
    """Reads keepalived's notify FIFO in a thread: instance -> (state, since)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.states: dict[str, tuple[str, datetime]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        if Path(path).exists() and not stat.S_ISFIFO(Path(path).stat().st_mode):
            Path(path).unlink()
        if not Path(path).exists():
            os.mkfifo(path, 0o600)
        # O_RDWR: never blocks on open and never sees EOF when keepalived restarts.
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, daemon=True, name="keepalived-fifo")
        self._thread.start()

    def _run(self) -> None:
        buf = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.2)
            if not ready:
                continue
            try:
                buf += os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            *lines, buf = buf.split(b"\n")
            for line in lines:
                self._handle(line.decode(errors="replace"))

    def _handle(self, line: str) -> None:
        m = _FIFO_RE.match(line)
        if not m:
            return
        with self._lock:
            previous = self.states.get(m["name"])
            if previous is None or previous[0] != m["state"]:
                self.states[m["name"]] = (m["state"], utc_now())
        logger.info(
            "vrrp transition",
            extra={"event": "vrrp_state", "instance": m["name"], "state": m["state"]},
        )

    def get(self, name: str) -> tuple[str, datetime] | None:
        with self._lock:
            return self.states.get(name)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        os.close(self._fd)


class VrrpAnnouncer:
    """One host's keepalived: VRRP instances per VIP group, FAULT while HAProxy is down."""

    def __init__(
        self,
        config: VrrpConfig,
        *,
        keepalived_bin: str = "/usr/sbin/keepalived",
        netns: str | None = None,
    ) -> None:
        self.config = config
        self.netns = netns
        self.files = paths(config.run_dir)
        run = config.run_dir
        self.keepalived_bin = keepalived_bin
        self.daemon = Daemon(
            "keepalived",
            [
                keepalived_bin,
                "-n",
                "-l",
                "-D",
                "-P",
                "-f",
                self.files["config"],
                "-p",
                f"{run}/keepalived.pid",
                "-r",
                f"{run}/vrrp.pid",
                "-c",
                f"{run}/checkers.pid",
                "-b",
                f"{run}/bfd.pid",
            ],
            pidfile=f"{run}/keepalived.pid",
            marker=self.files["config"],
            netns=netns,
        )
        self._vips: frozenset[IPAddress] = frozenset()
        self._healthy = False
        self._since: dict[IPAddress, datetime] = {}
        self._fifo: _FifoReader | None = None
        self._groups: dict[str, tuple[str, datetime]] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Write files (HAProxy counted down until ``update`` says otherwise), start keepalived."""
        Path(self.config.run_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._set_nonlocal_bind()
        self._write_health(self._healthy)
        if self.config.check_socket is not None:
            script = Path(self.files["check"])
            script.write_text(render_check_script(self.config, sys.executable))
            script.chmod(0o700)
        if self._fifo is None:
            self._fifo = _FifoReader(self.files["fifo"])
        self._write_config(self._vips)
        if self.daemon.adopt():
            self.daemon.send(signal.SIGHUP)
            return
        vrrp_pid = Path(f"{self.config.run_dir}/vrrp.pid")
        vrrp_pid.unlink(missing_ok=True)
        self.daemon.start(vrrp_pid.exists)

    def close(self) -> None:
        """Stop our keepalived: it sends priority-0 adverts and removes the VIPs it held."""
        self.daemon.stop()
        if self._fifo is not None:
            self._fifo.close()
            self._fifo = None

    def healthy(self) -> bool:
        return self.daemon.alive()

    def hold_addresses(self, vips: Collection[str]) -> None:
        """Nothing to do: keepalived adds a group's VIPs on takeover (HAProxy binds nonlocal)."""
        check_vips(vips)

    def _set_nonlocal_bind(self) -> None:
        for key in ("net.ipv4.ip_nonlocal_bind=1", "net.ipv6.ip_nonlocal_bind=1"):
            out = run_tool(["sysctl", "-q", "-w", key], netns=self.netns)
            if out.returncode != 0:
                raise DaemonFailed(f"sysctl {key} failed: {out.stderr.strip()}")

    # -- announcing ------------------------------------------------------------------------
    def update(
        self,
        vips_serving: Collection[str],
        haproxy_healthy: bool,
        *,
        owned: Collection[str] | None = None,
    ) -> None:
        """Hold exactly the serving VIPs' groups; FAULT (drop everything) if HAProxy is down.

        ``owned`` is ignored: in vrrp mode the group rotation decides who holds a VIP.
        """
        vips = check_vips(vips_serving)
        if not haproxy_healthy and self._healthy:
            self._write_health(False)  # first: peers take over before anything else
        if not self.daemon.alive():
            logger.warning("keepalived not running; restarting", extra={"event": "vrrp_restart"})
            self._vips = vips
            self.start()
        elif vips != self._vips:
            self._write_config(vips)
            self.daemon.send(signal.SIGHUP)
        if haproxy_healthy and not self._healthy:
            self._write_health(True)
        now = utc_now()
        for vip in vips ^ self._vips:
            self._since[vip] = now
        self._vips, self._healthy = vips, haproxy_healthy

    def _write_health(self, healthy: bool) -> None:
        with open(self.files["health"], "w") as f:
            f.write("0\n" if healthy else "1\n")
        logger.info("haproxy health for vrrp", extra={"event": "vrrp_health", "ok": healthy})

    def _write_config(self, vips: frozenset[IPAddress]) -> None:
        tmp = self.files["config"] + ".new"
        Path(tmp).write_text(render_keepalived(self.config, vips))
        check = run_tool([self.keepalived_bin, "-t", "-f", tmp], netns=self.netns)
        if check.returncode != 0:
            raise DaemonFailed(f"keepalived refused the rendered config: {check.stderr.strip()}")
        os.replace(tmp, self.files["config"])

    # -- status ----------------------------------------------------------------------------
    def _present(self) -> set[str]:
        out = run_tool(
            ["ip", "-j", "addr", "show", "dev", self.config.interface], netns=self.netns, timeout=3
        )
        if out.returncode != 0:
            return set()
        infos = json.loads(out.stdout or "[]")
        return {a["local"] for i in infos for a in i.get("addr_info", [])}

    def group_states(self) -> dict[str, tuple[str, datetime]]:
        """Per instance: MASTER when its anchor is on the interface, else FAULT/BACKUP/STOPPED.

        The address is the truth; keepalived's FIFO only supplies the exact transition time.
        """
        present = self._present() if self.daemon.alive() else set()
        haproxy_ok = self._healthy and self._socket_answers()
        now = utc_now()
        for group in range(self.config.group_count):
            name, state = instance_name(group), ""
            if not self.daemon.alive():
                state = "STOPPED"
            elif str(anchor(self.config, group)) in present:
                state = "MASTER"
            seen = self._fifo.get(name) if self._fifo is not None else None
            if state == "" and not haproxy_ok:
                state = "FAULT"  # the agent said HAProxy is down, or the check script sees it
            state = state or "BACKUP"
            known = self._groups.get(name)
            if known is None or known[0] != state:
                since = seen[1] if seen is not None and seen[0] == state else now
                self._groups[name] = (state, since)
        return dict(self._groups)

    def _socket_answers(self) -> bool:
        """The check script's own test, so FAULT by script is reported without the FIFO."""
        if self.config.check_socket is None:
            return True
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(0.5)
            try:
                s.connect(self.config.check_socket)
            except OSError:
                return False
        return True

    def status(self) -> list[Announcement]:
        """Per serving VIP: announced (this host is its group's master), standby or withdrawn."""
        groups = self.group_states()
        out = []
        for vip in sorted(self._vips, key=vip_key):
            name = instance_name(group_of(vip, self.config.group_count))
            state, since = groups[name]
            since = max(since, self._since.get(vip, since))
            kind = _STATES.get(state, AnnounceState.WITHDRAWN)
            out.append(Announcement(str(vip), kind, since, f"vrrp: {name} {state}"))
        return out
