"""Decide, from the compiled fleet and the hosts' reports, which Services are served.

Why: ``lbprovider.io/Serving`` must turn True only once every host that serves a Service's VIP
has applied a version containing that Service's routes *as they are now* and its serving
check passed, and must say why when not. Hosts report the digest of every route they applied
(``applied_routes``), so a changed NodePort or option is "not yet applied" until the host
catches up, without the API keeping any history of versions.

A host counts when it is enabled and reported within ``fleet_host_stale_seconds``: a dead host
must not hold every Service hostage (failover is its own issue).

What it must not do: write anything (``lbprovider.services.fleet.set_serving`` does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from lbprovider.db.models import FleetHost
from lbprovider.fleet.compile import Compiled, hosts_for_vip
from lbprovider.fleet.models import RouteSpec


@dataclass(frozen=True)
class HostView:
    """What serving needs of one host's last report."""

    name: str
    applied: Mapping[str, str]  # route_id -> digest
    errors: Mapping[str, str]  # route_id -> reason


def live_hosts(hosts: Sequence[FleetHost], *, now: datetime, stale: timedelta) -> list[HostView]:
    """Enabled hosts with a recent heartbeat, as views of their last report."""
    views = []
    for host in hosts:
        if not host.enabled or host.last_heartbeat is None or now - host.last_heartbeat > stale:
            continue
        status: Mapping[str, Any] = host.status if isinstance(host.status, dict) else {}
        applied = status.get("applied_routes")
        errors = status.get("route_errors")
        views.append(
            HostView(
                name=host.name,
                applied=applied if isinstance(applied, dict) else {},
                errors=errors if isinstance(errors, dict) else {},
            )
        )
    return views


def serving_states(compiled: Compiled, hosts: Sequence[HostView]) -> dict[str, tuple[bool, str]]:
    """``namespace/name`` -> (serving, message) for every Service the compiler saw."""
    out: dict[str, tuple[bool, str]] = {}
    for key, problem in compiled.problems.items():
        out[key] = (False, f"not programmed: {problem}")
    for key, reason in compiled.no_routes.items():
        out[key] = (False, reason)
    by_name = {h.name: h for h in hosts}
    for key, routes in compiled.by_service.items():
        if routes:
            out[key] = _service_state(routes, by_name)
    return out


def _service_state(routes: Sequence[RouteSpec], hosts: Mapping[str, HostView]) -> tuple[bool, str]:
    serving_hosts: set[str] = set()
    for route in routes:
        owners = hosts_for_vip(route.address, hosts)
        if not owners:
            return False, "no fleet host has reported recently"
        digest = route.digest()
        for name in owners:
            host = hosts[name]
            error = host.errors.get(route.route_id)
            if error:
                return False, f"fleet host {name} does not serve {route.key}: {error}"
            if host.applied.get(route.route_id) != digest:
                return False, f"fleet host {name} has not applied {route.key} yet"
            serving_hosts.add(name)
    count = len(serving_hosts)
    return True, f"served by {count} fleet host{'s' if count != 1 else ''}"
