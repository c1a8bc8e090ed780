"""A state that shares most route objects with the last one is translated by its change only
(``Translator._delta`` and ``DesiredState.with_changes``), with the same result as a whole
translation, and ``derive_layout`` then reads the change instead of walking every route."""

from __future__ import annotations

import dataclasses
import gc
import tempfile
import weakref
from collections.abc import Iterator

import pytest

from lbprovider.agent import translate as tr
from lbprovider.fleet.models import FleetState, NodeSpec, RouteOptionsSpec, RouteSpec
from lbprovider.haproxy import model as hx
from lbprovider.haproxy.apply import Known, derive_layout, plan_delta
from lbprovider.haproxy.layout import build_layout

NODES = (NodeSpec(name="n1", address="192.168.0.1"), NodeSpec(name="n2", address="192.168.0.2"))


def spec(i: int, port: int = 80, node_port: int | None = None, **kw: object) -> RouteSpec:
    return RouteSpec(
        route_id=kw.pop("route_id", f"r{i}"),  # type: ignore[arg-type]
        service=f"ns/s{i}",
        address=f"10.0.{i // 250}.{i % 250 + 1}",
        port=port,
        node_port=node_port or 30000 + i,
        **kw,  # type: ignore[arg-type]
    )


def state(routes: tuple[RouteSpec, ...]) -> FleetState:
    return FleetState(host="h", routes=routes, nodes=NODES)


@pytest.fixture
def post_inits(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts whole validations of a DesiredState (its ``__post_init__``)."""
    calls: list[int] = []
    original = hx.DesiredState.__post_init__

    def counted(self: hx.DesiredState) -> None:
        calls.append(len(self.routes))
        original(self)

    monkeypatch.setattr(hx.DesiredState, "__post_init__", counted)
    yield calls


def same(a: tr.Translated, b: tr.Translated) -> None:
    assert a.desired == b.desired
    assert [r.route_id for r in a.desired.routes] == [r.route_id for r in b.desired.routes]
    assert a.refused == b.refused and a.problems == b.problems


def test_a_delta_is_translated_by_its_change(post_inits: list[int]) -> None:
    base = tuple(spec(i) for i in range(300))
    t = tr.Translator()
    first = t(state(base))
    kept = {r.route_id: r for r in first.desired.routes}
    post_inits.clear()
    # one new, one changed (other node port), one removed, one re-sent equal (a new object)
    routes = (*base[:10], spec(10, node_port=31999), *base[11:20], spec(20), *base[21:299])
    routes = (*routes, spec(400))
    new = t(state(routes))
    assert post_inits == []  # not validated as a whole: with_changes checked the change
    same(new, tr.translate(state(routes)))
    assert new.desired.change is not None and new.desired.change[0]() is first.desired
    by_id = {r.route_id: r for r in new.desired.routes}
    assert by_id["r20"] is kept["r20"]  # equal content keeps its Route object
    assert by_id["r5"] is kept["r5"]
    assert by_id["r10"] is not kept["r10"] and by_id["r10"].node_port == 31999
    assert "r299" not in by_id and "r400" in by_id
    assert new.desired.route_keys == {r.key for r in new.desired.routes}


def test_a_chain_of_deltas_keeps_no_old_state_alive() -> None:
    base = tuple(spec(i) for i in range(50))
    t = tr.Translator()
    first = weakref.ref(t(state(base)).desired)
    for i in range(3):
        t(state((*base, spec(100 + i))))
    assert t(state((*base, spec(200)))).desired.change is not None
    gc.collect()
    assert first() is None


@pytest.mark.parametrize(
    "extra",
    [
        spec(3, route_id="dup-key"),  # VIP:port of r3
        spec(500, route_id="r4"),  # route id of r4
        spec(501, options=RouteOptionsSpec(source_ranges=("10.0.0.1/8",))),  # invalid
    ],
)
def test_a_refused_new_route_is_translated_whole(extra: RouteSpec, post_inits: list[int]) -> None:
    base = tuple(spec(i) for i in range(20))
    t = tr.Translator()
    t(state(base))
    routes = (*base, extra)
    new = t(state(routes))
    same(new, tr.translate(state(routes)))
    assert new.refused and post_inits[-1] == 20  # the whole path, as before
    # the next change after a refusal goes the whole way too, and still matches
    after = t(state(base[1:]))
    same(after, tr.translate(state(base[1:])))


def test_derive_layout_reads_the_change() -> None:
    base = tuple(spec(i) for i in range(300))
    t = tr.Translator()
    first = t(state(base)).desired
    settings = hx.Settings(run_dir=tempfile.mkdtemp())
    known = Known.of(first, build_layout(first, settings))
    routes = (*base[:10], spec(10, node_port=31999), *base[11:299], spec(400))
    desired = t(state(routes)).desired
    gets: list[str] = []

    class Counting(dict[str, hx.Route]):
        def get(self, key, default=None):  # type: ignore[no-untyped-def, override]
            gets.append(key)
            return super().get(key, default)

    counted = Known(
        known.desired, known.layout, Counting(known.by_key), known.binds, known.profiles
    )
    derived = derive_layout(counted, desired)
    assert derived is not None
    assert len(gets) <= 4  # the added routes only, not one per route of the state
    # the same as deriving from a whole translation of the same routes
    whole = hx.DesiredState(desired.routes, desired.nodes, desired.health_check)
    assert whole.change is None
    reference = derive_layout(known, whole)
    assert reference is not None
    assert derived.layout == reference.layout
    assert derived.by_key == reference.by_key
    assert derived.binds == reference.binds and derived.profiles == reference.profiles


def test_plan_delta_of_a_derived_layout_looks_at_its_changed_keys_only() -> None:
    """The map commands of a derived layout come from the keys it set and dropped (the
    Counting map sees no walk of every key), and are the commands the whole comparison of
    the two maps gives."""
    base = tuple(spec(i) for i in range(300))
    t = tr.Translator()
    first = t(state(base)).desired
    settings = hx.Settings(run_dir=tempfile.mkdtemp())
    known = Known.of(first, build_layout(first, settings))
    # one changed (node port), one gone, one new
    routes = (*base[:10], spec(10, node_port=31999), *base[11:299], spec(400))
    derived = derive_layout(known, t(state(routes)).desired)
    assert derived is not None and derived.moved is not None
    walked: list[str] = []

    class Counting(dict[str, str]):
        def items(self):  # type: ignore[no-untyped-def, override]
            walked.append("items")
            return super().items()

        def __iter__(self):  # type: ignore[no-untyped-def]
            walked.append("iter")
            return super().__iter__()

    before = dataclasses.replace(known.layout, route_map=Counting(known.layout.route_map))
    after = dataclasses.replace(derived.layout, route_map=Counting(derived.layout.route_map))
    moved = (before, *derived.moved[1:])
    plan = plan_delta(before, after, moved)
    assert walked == []  # on main: every key of both maps
    whole = plan_delta(known.layout, derived.layout)
    assert sorted(c.text for c in plan.maps) == sorted(c.text for c in whole.maps)
    assert [c.text for c in plan.down] == [c.text for c in whole.down]
    assert len(plan.maps) == 2 and len(plan.down) == 1  # set r10, add r400; del r299
    # a hint about another layout is not trusted: the whole comparison
    assert plan_delta(known.layout, derived.layout, (after, (), ())).maps == whole.maps
