"""Keep this host's VIPs on ``lo`` (bgp mode), removing only the addresses we added.

Why: in bgp mode the router sends a VIP's traffic to the host, and the host must own the VIP
for HAProxy to bind it and the kernel to accept it. The addresses sit on ``lo`` as /32 and
/128, independent of the announcement: HAProxy can bind a VIP before it is announced and after
it is withdrawn. The set we added is kept in a file, so a restarted agent removes only its own.

What it must not do: touch an address it did not add, or any interface but ``lo``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lbprovider.announce.daemon import run_tool
from lbprovider.announce.model import DaemonFailed, IPAddress, check_vips, vip_key

logger = logging.getLogger(__name__)


class LoopbackAddresses:
    """The VIPs we hold on ``lo`` of one host (optionally inside a network namespace)."""

    def __init__(self, state_file: str, *, netns: str | None = None) -> None:
        self.state_file = Path(state_file)
        self.netns = netns

    def _held(self) -> set[IPAddress]:
        try:
            return set(check_vips(json.loads(self.state_file.read_text()), "held address"))
        except (OSError, ValueError):
            return set()

    def _present(self) -> set[IPAddress]:
        out = run_tool(["ip", "-j", "addr", "show", "dev", "lo"], netns=self.netns)
        if out.returncode != 0:
            raise DaemonFailed(f"ip addr show dev lo failed: {out.stderr.strip()}")
        infos = json.loads(out.stdout or "[]")
        locals_ = [a["local"] for i in infos for a in i.get("addr_info", [])]
        return set(check_vips([a for a in locals_ if a not in ("127.0.0.1", "::1")]))

    def _batch(self, verb: str, addrs: set[IPAddress]) -> None:
        if not addrs:
            return
        lines = []
        for a in sorted(addrs, key=vip_key):
            extra = " nodad" if verb == "add" and a.version == 6 else ""
            lines.append(f"addr {verb} {a}/{a.max_prefixlen} dev lo{extra}")
        out = run_tool(["ip", "-batch", "-"], netns=self.netns, stdin="\n".join(lines) + "\n")
        if out.returncode != 0:
            raise DaemonFailed(f"ip addr {verb} on lo failed: {out.stderr.strip()[:400]}")

    def hold(self, vips: set[IPAddress]) -> None:
        """Make exactly ``vips`` (plus addresses that are not ours) present on ``lo``."""
        held, present = self._held(), self._present()
        self._batch("del", (held - vips) & present)
        added = vips - present
        self._batch("add", added)
        mine = (held & vips) | added
        self.state_file.write_text(json.dumps(sorted(str(a) for a in mine)))
        if added or held - vips:
            logger.info(
                "loopback VIPs changed",
                extra={"event": "lo_vips", "added": len(added), "removed": len(held - vips)},
            )

    def release(self) -> None:
        self.hold(set())
