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

from collections.abc import Collection, Mapping, Sequence
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
    return [
        view_of(host.name, host.status)
        for host in hosts
        if is_live(host.enabled, host.last_heartbeat, now=now, stale=stale)
    ]


def is_live(enabled: bool, heartbeat: datetime | None, *, now: datetime, stale: timedelta) -> bool:
    """An enabled host that reported within ``stale``."""
    return enabled and heartbeat is not None and now - heartbeat <= stale


def view_of(name: str, stored: object) -> HostView:
    """The view of a host's stored status (``FleetHost.status``)."""
    status: Mapping[str, Any] = stored if isinstance(stored, dict) else {}
    applied = status.get("applied_routes")
    errors = status.get("route_errors")
    return HostView(
        name=name,
        applied=applied if isinstance(applied, dict) else {},
        errors=errors if isinstance(errors, dict) else {},
    )


def serving_states(
    compiled: Compiled, hosts: Sequence[HostView], only: Collection[str] | None = None
) -> dict[str, tuple[bool, str]]:
    """``namespace/name`` -> (serving, message) for every Service the compiler saw (with
    ``only``: for those of them in ``only``)."""
    out: dict[str, tuple[bool, str]] = {}
    if only is not None:
        by_name = {h.name: h for h in hosts}
        for key in only:
            if (problem := compiled.problems.get(key)) is not None:
                out[key] = (False, f"not programmed: {problem}")
            if (reason := compiled.no_routes.get(key)) is not None:
                out[key] = (False, reason)
            if routes := compiled.by_service.get(key):
                out[key] = _service_state(routes, by_name)
        return out
    for key, problem in compiled.problems.items():
        out[key] = (False, f"not programmed: {problem}")
    for key, reason in compiled.no_routes.items():
        out[key] = (False, reason)
    by_name = {h.name: h for h in hosts}
    for key, routes in compiled.by_service.items():
        if routes:
            out[key] = _service_state(routes, by_name)
    return out


def touched_services(
    before: Compiled,
    after: Compiled,
    old: HostView | None,
    new: HostView | None,
    *,
    applied_changed: Collection[str] | None = None,
) -> set[str]:
    """The Services whose serving may differ between (``before``, a host's view ``old``) and
    (``after``, its view ``new``), every other host's view unchanged: those compiled otherwise,
    and those with a route whose applied digest or error on that host changed.

    ``applied_changed``: the route ids whose applied digest may differ between the views (a
    superset will do: a delta report's upserted and gone ids), so the two applied maps of every
    route are not compared; None compares them."""
    out = {
        key
        for part in ("by_service", "problems", "no_routes")
        for key in _differing(getattr(before, part), getattr(after, part))
    }
    routes: set[str] = set(applied_changed or ())
    for section in ("applied", "errors") if applied_changed is None else ("errors",):
        was = getattr(old, section) if old is not None else {}
        now = getattr(new, section) if new is not None else {}
        routes |= _differing(was, now)
    if routes:
        out |= _services_routing(after, routes)
        out |= _services_routing(before, routes)
    return out


def _services_routing(compiled: Compiled, route_ids: Collection[str]) -> set[str]:
    """The Services of ``compiled`` with a route of one of ``route_ids``, found through
    ``by_service`` (a compiled route's id is ``<namespace>/<name>/<vip>:<port>``, its Service
    ``<namespace>/<name>``; ``routes`` is every route of ``by_service``): what ``{r.service
    for r in compiled.routes if r.route_id in route_ids}`` gives, for the ids' cost instead of
    every route's."""
    out: set[str] = set()
    for route_id in route_ids:
        service = route_id.rpartition("/")[0]
        if any(r.route_id == route_id for r in compiled.by_service.get(service, ())):
            out.add(service)
    return out


def _differing(a: Mapping[str, Any], b: Mapping[str, Any]) -> set[str]:
    """Keys whose values differ between ``a`` and ``b`` (the same object: equal)."""
    if a is b:
        return set()
    out = {k for k, v in b.items() if (w := a.get(k, _MISSING)) is not v and w != v}
    out |= {k for k in a if k not in b}
    return out


_MISSING = object()


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
