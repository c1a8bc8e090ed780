"""Where this host's VIPs live: nowhere we manage (``none``) or on an interface (``local``).

Why: in ``local`` mode a VIP must be an address of the host before HAProxy can bind it (per-VIP
binds) or the kernel delivers its packets; a VIP no longer wanted must go, but an address the
operator put there must never be touched. The addresses this agent added are remembered in a
file in its state directory, so a restarted agent still knows which ones are its own.

What it must not do: announce addresses (ARP/BGP is its own issue) or touch other interfaces.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path
from typing import Protocol

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

logger = logging.getLogger(__name__)

OWNED_FILE = "vips.json"


class Vips(Protocol):
    """Make the host carry exactly the wanted VIPs (as far as this mode manages them)."""

    def sync(self, wanted: set[str]) -> list[str]:
        """Add/remove addresses; returns errors (an empty list when all went well)."""
        ...

    def owned(self) -> list[str]:
        """The VIPs this host carries for the fleet, for the report."""
        ...


class RoutedVips:
    """Mode ``none``: something else routes the VIPs here; HAProxy binds them transparently."""

    def __init__(self) -> None:
        self._wanted: frozenset[str] = frozenset()

    def sync(self, wanted: set[str]) -> list[str]:
        self._wanted = frozenset(wanted)  # sorted when reported, not on every apply
        return []

    def owned(self) -> list[str]:
        return sorted(self._wanted)


class InterfaceVips:
    """Mode ``local``: each VIP as a /32 (/128) on ``interface``, through netlink."""

    def __init__(self, interface: str, state_dir: Path) -> None:
        self.interface = interface
        self._file = state_dir / OWNED_FILE
        self._carried: list[str] = []

    def _load(self) -> set[str]:
        try:
            data = json.loads(self._file.read_text())
        except (FileNotFoundError, ValueError):
            return set()
        return {str(a) for a in data} if isinstance(data, list) else set()

    def _save(self, owned: set[str]) -> None:
        tmp = self._file.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(owned)))
        tmp.replace(self._file)

    def sync(self, wanted: set[str]) -> list[str]:
        errors: list[str] = []
        owned = self._load()
        try:
            with IPRoute() as ipr:
                links = ipr.link_lookup(ifname=self.interface)
                if not links:
                    return [f"interface {self.interface!r} not found"]
                index = int(links[0])
                present = {str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(index=index)}
                for vip in sorted(wanted - present):
                    error = self._change(ipr, "add", index, vip)
                    if error:
                        errors.append(error)
                    else:
                        owned.add(vip)
                        present.add(vip)
                for vip in sorted(owned - wanted):
                    error = self._change(ipr, "del", index, vip) if vip in present else ""
                    if error:
                        errors.append(error)
                    else:
                        owned.discard(vip)
                        present.discard(vip)
                self._carried = sorted(wanted & present)
        except (NetlinkError, OSError) as e:
            errors.append(f"netlink on {self.interface}: {e}")
        self._save(owned)
        return errors

    def _change(self, ipr: IPRoute, op: str, index: int, vip: str) -> str:
        prefix = 32 if ipaddress.ip_address(vip).version == 4 else 128
        try:
            ipr.addr(op, index=index, address=vip, prefixlen=prefix)
        except NetlinkError as e:
            return f"{op} {vip} on {self.interface}: {e}"
        logger.info(
            "vip changed", extra={"event": f"vip_{op}", "ip": vip, "interface": self.interface}
        )
        return ""

    def owned(self) -> list[str]:
        return list(self._carried)

    def release_all(self) -> list[str]:
        """Remove every VIP this agent added (used when the host is taken out)."""
        return self.sync(set())
