"""The serving decision's helpers (no database): what a report touches costs what it touched."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lbprovider.fleet.compile import Compiled
from lbprovider.fleet.models import HealthCheckSpec, RouteSpec
from lbprovider.fleet.serving import HostView, touched_services


class Unwalked(tuple):  # type: ignore[type-arg]
    """A route tuple that refuses to be walked: the code under test must not iterate it."""

    def __iter__(self) -> Iterator[Any]:
        raise AssertionError("every route was walked")


def compiled(services: dict[str, list[tuple[str, int]]], *, walkable: bool) -> Compiled:
    by_service = {
        svc: tuple(
            RouteSpec(
                route_id=f"{svc}/{address}:{port}",
                service=svc,
                address=address,
                port=port,
                node_port=30000 + port,
            )
            for address, port in routes
        )
        for svc, routes in services.items()
    }
    routes = tuple(r for rs in by_service.values() for r in rs)
    return Compiled(
        routes=routes if walkable else Unwalked(routes),
        nodes=(),
        health_check=HealthCheckSpec(),
        by_service=by_service,
        problems={},
    )


def reference(before: Compiled, after: Compiled, old: HostView, new: HostView) -> set[str]:
    """touched_services as it was: the changed route ids looked for in every route."""
    routes = {k for k in {**old.applied, **new.applied} if old.applied.get(k) != new.applied.get(k)}
    routes |= {k for k in {**old.errors, **new.errors} if old.errors.get(k) != new.errors.get(k)}
    services = {r.service for r in after.routes if r.route_id in routes}
    return services | {r.service for r in before.routes if r.route_id in routes}


def test_a_report_touches_the_services_of_its_changed_routes_without_walking_every_route() -> None:
    fleet = {f"shop/s{i}": [(f"127.30.{i // 250}.{i % 250 + 1}", 80)] for i in range(2000)}
    fleet["shop/two"] = [("127.31.0.1", 80), ("127.31.0.1", 443)]
    fleet["shop/v6"] = [("fd00::1", 80)]
    later = dict(fleet) | {"shop/new": [("127.31.0.2", 80)]}
    del later["shop/s5"]
    walk = {"before": compiled(fleet, walkable=True), "after": compiled(later, walkable=True)}
    no_walk = {"before": compiled(fleet, walkable=False), "after": compiled(later, walkable=False)}
    old = HostView(
        "edge-1",
        {
            "shop/s1/127.30.0.2:80": "a",
            "shop/s5/127.30.0.6:80": "b",
            "shop/two/127.31.0.1:443": "c",
        },
        {"shop/s9/127.30.0.10:80": "check pending"},
    )
    new = HostView(
        "edge-1",
        {
            "shop/s1/127.30.0.2:80": "a",  # unchanged
            "shop/two/127.31.0.1:443": "d",  # changed digest
            "shop/new/127.31.0.2:80": "e",  # new
            "shop/v6/fd00::1:80": "f",  # IPv6 key
            "shop/ghost/127.9.9.9:80": "g",  # a route no compilation has
            "shop/s7/127.30.0.99:80": "h",  # a Service's name with another route's id
        },
        {},  # s9's error gone; s5's route gone
    )
    got = touched_services(no_walk["before"], no_walk["after"], old, new)
    assert got == touched_services(walk["before"], walk["after"], old, new)
    want = reference(walk["before"], walk["after"], old, new)
    want |= {"shop/new", "shop/s5"}  # compiled otherwise (by_service differs)
    assert got == want
    assert {"shop/two", "shop/new", "shop/v6", "shop/s9", "shop/s5"} <= got
    assert not {"shop/ghost", "shop/s7", "shop/s1"} & got


class Unread(dict):  # type: ignore[type-arg]
    """An applied map that refuses to be walked or compared whole."""

    def __iter__(self) -> Iterator[Any]:
        raise AssertionError("every applied digest was walked")

    def items(self) -> Any:
        raise AssertionError("every applied digest was walked")

    def keys(self) -> Any:
        raise AssertionError("every applied digest was walked")


def test_a_delta_reports_ids_stand_for_comparing_every_applied_digest() -> None:
    """With the ids a delta report upserted and dropped (``applied_changed``), the two views'
    applied maps (10,000 routes each at scale) are not compared: the same Services as the
    comparison, also when the ids are a superset (an upsert of an unchanged digest)."""
    fleet = {f"shop/s{i}": [(f"127.30.{i // 250}.{i % 250 + 1}", 80)] for i in range(500)}
    before = after = compiled(fleet, walkable=True)
    applied = {f"shop/s{i}/127.30.{i // 250}.{i % 250 + 1}:80": "a" for i in range(500)}
    now = dict(applied) | {"shop/s3/127.30.0.4:80": "b"}  # changed
    del now["shop/s7/127.30.0.8:80"]  # gone
    old = HostView("edge-1", applied, {"shop/s9/127.30.0.10:80": "check pending"})
    new = HostView("edge-1", now, {})
    want = touched_services(before, after, old, new)
    assert want == {"shop/s3", "shop/s7", "shop/s9"}
    hint = {"shop/s3/127.30.0.4:80", "shop/s7/127.30.0.8:80", "shop/s1/127.30.0.2:80"}
    fast = touched_services(
        before,
        after,
        HostView("edge-1", Unread(applied), old.errors),
        HostView("edge-1", Unread(now), new.errors),
        applied_changed=hint,
    )
    assert fast == want | {"shop/s1"}  # the superset's unchanged one: recomputed, harmless
