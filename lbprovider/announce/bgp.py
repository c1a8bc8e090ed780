"""BgpAnnouncer: announce this host's serving VIPs through a BIRD 2 it supervises.

Why: in bgp mode a router sends a VIP's traffic to every host announcing it (ECMP) or to its
owner. A host must announce a VIP only while its HAProxy serves it: the agent calls
``update()`` after HAProxy took a VIP (announce after add), before it drops one (withdraw
before removal), and with ``haproxy_healthy=False`` the moment HAProxy is down (withdraw all).
Each change is one rendered config and one ``birdc configure``; BIRD sends the UPDATE at once.

What it must not do: talk to HAProxy, the API or the database; stop a BIRD it did not start.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lbprovider.announce.addresses import LoopbackAddresses
from lbprovider.announce.bird import BgpConfig, render_bird
from lbprovider.announce.daemon import Daemon, run_tool
from lbprovider.announce.model import (
    Announcement,
    AnnounceState,
    DaemonFailed,
    InvalidValue,
    IPAddress,
    check_path,
    check_vips,
    utc_now,
    vip_key,
)

logger = logging.getLogger(__name__)

_PROTO_RE = re.compile(
    r"^(?P<name>\S+)\s+(?P<proto>\S+)\s+(?P<table>\S+)\s+(?P<state>\S+)\s+"
    r"(?P<since>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\s*(?P<info>.*)$"
)


@dataclass(frozen=True)
class PeerState:
    """One BGP session as ``birdc show protocols`` reports it."""

    name: str
    established: bool
    since: datetime
    info: str


def parse_protocols(text: str) -> dict[str, PeerState]:
    """BGP sessions from ``show protocols`` output (``timeformat protocol iso long``)."""
    out: dict[str, PeerState] = {}
    for line in text.splitlines():
        m = _PROTO_RE.match(line.strip())
        if not m or m["proto"] != "BGP":
            continue
        since = datetime.strptime(m["since"], "%Y-%m-%d %H:%M:%S").astimezone(UTC)
        info = m["info"].strip()
        out[m["name"]] = PeerState(m["name"], info.startswith("Established"), since, info)
    return out


class BgpAnnouncer:
    """One host's BIRD: VIPs on ``lo``, routes for the serving ones, state through ``birdc``."""

    def __init__(
        self,
        config: BgpConfig,
        *,
        run_dir: str,
        policy: str = "ecmp",
        bird_bin: str = "/usr/sbin/bird",
        birdc_bin: str = "/usr/sbin/birdc",
        netns: str | None = None,
    ) -> None:
        if policy not in ("ecmp", "owners"):
            raise InvalidValue(f"bgp policy: ecmp or owners, got {policy!r}")
        self.config = config
        self.policy = policy
        self.run_dir = check_path(run_dir, "run dir")
        self.netns = netns
        self.conf = f"{run_dir}/bird.conf"
        self.socket = f"{run_dir}/bird.ctl"
        self.birdc = [birdc_bin, "-s", self.socket]
        self.daemon = Daemon(
            "bird",
            [bird_bin, "-f", "-c", self.conf, "-s", self.socket, "-P", f"{run_dir}/bird.pid"],
            pidfile=f"{run_dir}/bird.pid",
            marker=self.conf,
            netns=netns,
        )
        self.addresses = LoopbackAddresses(f"{run_dir}/lo-vips.json", netns=netns)
        self._announce: frozenset[IPAddress] = frozenset()
        self._backup: frozenset[IPAddress] = frozenset()
        self._serving: frozenset[IPAddress] = frozenset()
        self._since: dict[IPAddress, datetime] = {}
        self._haproxy_healthy = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Render an empty announcement, validate, then adopt or start BIRD."""
        Path(self.run_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._write(render_bird(self.config, self._announce, self._backup))
        if self.daemon.adopt() and self._answers():
            self._configure()
            return
        self.daemon.start(self._answers)

    def close(self) -> None:
        """Stop our BIRD (its sessions close, so peers drop our routes) and free ``lo``."""
        self.daemon.stop()
        self.addresses.release()
        self._announce = self._backup = self._serving = frozenset()

    def healthy(self) -> bool:
        return self.daemon.alive() and self._answers()

    def hold_addresses(self, vips: Collection[str]) -> None:
        """Put exactly these VIPs on ``lo`` so HAProxy can bind them (before it does)."""
        self.addresses.hold(set(check_vips(vips)))

    # -- announcing ------------------------------------------------------------------------
    def update(
        self,
        vips_serving: Collection[str],
        haproxy_healthy: bool,
        *,
        owned: Collection[str] | None = None,
    ) -> None:
        """Announce exactly the serving VIPs (or the owned ones); nothing if HAProxy is down."""
        serving = check_vips(vips_serving)
        announce, backup = self._split(serving if haproxy_healthy else frozenset(), owned)
        if not self.daemon.alive():
            logger.warning("bird not running; restarting", extra={"event": "bird_restart"})
            self._announce, self._backup = announce, backup
            self.start()
        elif (announce, backup) != (self._announce, self._backup):
            self._write(render_bird(self.config, announce, backup))
            self._configure()
        self._note_changes(announce, backup)
        self._announce, self._backup, self._serving = announce, backup, serving
        self._haproxy_healthy = haproxy_healthy

    def _split(
        self, serving: frozenset[IPAddress], owned: Collection[str] | None
    ) -> tuple[frozenset[IPAddress], frozenset[IPAddress]]:
        if self.policy == "ecmp":
            return serving, frozenset()
        mine = check_vips(owned or (), "owned")
        backup = serving - mine if self.config.backup_prepend else frozenset()
        return serving & mine, backup

    def _note_changes(self, announce: frozenset[IPAddress], backup: frozenset[IPAddress]) -> None:
        now = utc_now()
        before = {v: "a" for v in self._announce} | {v: "b" for v in self._backup}
        after = {v: "a" for v in announce} | {v: "b" for v in backup}
        for vip in before.keys() | after.keys():
            if before.get(vip) != after.get(vip):
                self._since[vip] = now
                logger.info(
                    "vip announcement changed",
                    extra={"event": "bgp_vip", "ip": str(vip), "state": after.get(vip, "-")},
                )

    def _write(self, text: str) -> None:
        tmp = f"{self.conf}.new"
        Path(tmp).write_text(text)
        check = run_tool([self.daemon.argv[0], "-p", "-c", tmp], netns=self.netns)
        if check.returncode != 0:
            raise DaemonFailed(f"bird refused the rendered config: {check.stderr.strip()}")
        os.replace(tmp, self.conf)

    def _configure(self) -> None:
        out = run_tool([*self.birdc, "configure"], netns=self.netns)
        if out.returncode != 0 or "Reconfigur" not in out.stdout:
            raise DaemonFailed(f"birdc configure failed: {(out.stdout + out.stderr).strip()}")

    def _answers(self) -> bool:
        out = run_tool([*self.birdc, "show", "status"], netns=self.netns, timeout=3)
        return out.returncode == 0 and "Daemon is up and running" in out.stdout

    # -- status ----------------------------------------------------------------------------
    def peers(self) -> dict[str, PeerState]:
        out = run_tool([*self.birdc, "show", "protocols"], netns=self.netns, timeout=3)
        if out.returncode != 0:
            raise DaemonFailed(f"birdc show protocols failed: {out.stderr.strip()}")
        return parse_protocols(out.stdout)

    def status(self) -> list[Announcement]:
        """Per serving VIP: announced (to >= 1 established peer of its family) and since when."""
        try:
            peers = self.peers() if self.daemon.alive() else {}
        except DaemonFailed:
            peers = {}
        names = {f"lbp_peer{i}": p for i, p in enumerate(self.config.peers, start=1)}
        out = []
        for vip in sorted(self._serving | self._announce | self._backup, key=vip_key):
            up = [
                s
                for n, s in peers.items()
                if s.established
                and names.get(n) is not None
                and names[n].address.version == vip.version
            ]
            total = sum(1 for p in self.config.peers if p.address.version == vip.version)
            out.append(self._announcement(vip, up, total))
        return out

    def _announcement(self, vip: IPAddress, up: list[PeerState], total: int) -> Announcement:
        since = self._since.get(vip, utc_now())
        detail = f"bgp: {len(up)}/{total} peers established"
        if vip not in self._announce and vip not in self._backup:
            why = "not owned" if self._haproxy_healthy else "haproxy down"
            return Announcement(str(vip), AnnounceState.WITHDRAWN, since, f"{detail}; {why}")
        if not up:
            return Announcement(str(vip), AnnounceState.WITHDRAWN, since, detail)
        since = max(since, min(s.since for s in up))
        if vip in self._backup:
            return Announcement(str(vip), AnnounceState.STANDBY, since, f"{detail}; backup path")
        return Announcement(str(vip), AnnounceState.ANNOUNCED, since, detail)
