"""What the dashboard shows of the agents' reports: who announces which VIP since when (fleet
page), and a Service's per-node backend health on each fleet host (Service detail page).

Why here: ``FleetHost.status`` has one shape, ``lbprovider.fleet.models.HostStatus`` (the agent
writes it, the API stores it as is); this module reads it back with that model, so the
dashboard and the agent cannot drift apart. A Service's servers are found through the routes
the compiler names ``<namespace>/<name>/<vip>:<port>`` and the backend each route goes to, as the
agent reads it from HAProxy's live routes map (``route_backends``).

What it must not do: write, or query anything but the fleet hosts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from lbprovider.db.models import FleetHost
from lbprovider.fleet.models import AnnouncementStatus, HostStatus
from lbprovider.services.fleet import fleet_hosts


def announcements(hosts: Iterable[FleetHost]) -> dict[str, list[AnnouncementStatus]]:
    """Host name -> its announcements (who announces which VIP, since when)."""
    return {h.name: HostStatus.read_stored(h.status).announcements for h in hosts}


@dataclass(frozen=True)
class BackendHealth:
    """One node (HAProxy server) behind one of a Service's VIP:ports, on one fleet host."""

    host: str
    route: str  # <vip>:<port>
    backend: str
    server: str
    address: str
    state: str
    check: str


def service_backend_health(*, session: Session, namespace: str, name: str) -> list[BackendHealth]:
    """Per fleet host and VIP:port of the Service: each node's state and last check."""
    prefix = f"{namespace}/{name}/"
    out = []
    for host in fleet_hosts(session=session):
        status = HostStatus.read_stored(host.status)
        by_backend: dict[str, list[int]] = {}
        for i, server in enumerate(status.servers):
            by_backend.setdefault(server.backend, []).append(i)
        for route_id, backend in sorted((status.route_backends or {}).items()):
            if not route_id.startswith(prefix):
                continue
            for i in by_backend.get(backend, []):
                s = status.servers[i]
                out.append(
                    BackendHealth(
                        host=host.name,
                        route=route_id[len(prefix) :],
                        backend=backend,
                        server=s.server,
                        address=s.address,
                        state=s.state.split()[0] if s.state else "UNKNOWN",
                        check=s.check,
                    )
                )
    return out
