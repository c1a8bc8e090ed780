"""The serving checks' bookkeeping: a change costs what changed, and ends where the whole
computation (the agent's before ``agent.checkbook``) ends, through any history."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from hypothesis import given, settings
from hypothesis import strategies as st

from lbprovider.agent.checkbook import CHECK_PENDING, CheckBook, Target
from lbprovider.fleet.models import FleetState, RouteSpec


class Reference:
    """What the agent computed on every apply before: every route, every time."""

    def __init__(self) -> None:
        self.checked: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.digests: dict[str, str] = {}
        self.refused: dict[str, str] = {}
        self.state: FleetState | None = None

    def mark(self, state: FleetState, refused: Mapping[str, str]) -> None:
        digests = {r.route_id: r.digest() for r in state.routes}
        self.state, self.digests, self.refused = state, digests, dict(refused)
        self.checked = {k: d for k, d in self.checked.items() if digests.get(k) == d}
        errors = {k: v for k, v in self.errors.items() if k in digests}
        for route_id, digest in digests.items():
            if route_id not in refused and self.checked.get(route_id) != digest:
                errors.setdefault(route_id, CHECK_PENDING)
        self.errors = {k: v for k, v in errors.items() if k not in self.checked} | dict(refused)

    def waiting(self) -> set[str]:
        if self.state is None:
            return set()
        return {
            r.route_id
            for r in self.state.routes
            if r.route_id not in self.refused
            and self.checked.get(r.route_id) != self.digests[r.route_id]
        }

    def take(self, todo: list[Target], verdicts: Mapping[str, str]) -> None:
        for route_id, _, _, digest in todo:
            error = verdicts.get(route_id, "not checked")
            if self.digests.get(route_id) != digest:
                continue
            if error:
                self.errors[route_id] = error
            else:
                self.checked[route_id] = digest
                self.errors.pop(route_id, None)


def route(
    i: int, node_port: int = 30000, *, net: str = "10.1", kind: type[RouteSpec] = RouteSpec
) -> RouteSpec:
    address = f"{net}.{i // 250}.{i % 250 + 1}"
    return kind(
        route_id=f"shop/s{i}/{address}:80",
        service=f"shop/s{i}",
        address=address,
        port=80,
        node_port=node_port,
    )


def state_of(routes: dict[int, RouteSpec]) -> FleetState:
    ordered = tuple(sorted(routes.values(), key=lambda r: (r.order, r.route_id)))
    return FleetState.model_construct(host="edge-1", routes=ordered, version="")


step = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 40)),
    st.tuples(st.just("remove"), st.integers(0, 40)),
    st.tuples(st.just("change"), st.integers(0, 40), st.integers(30000, 30003)),
    st.tuples(st.just("copy"), st.integers(0, 40)),  # same content, a new object
    st.tuples(st.just("refuse"), st.integers(0, 40)),
    st.tuples(st.just("fail"), st.integers(0, 40)),
    st.tuples(st.just("check"), st.integers(1, 5), st.lists(st.sampled_from(["", "x", None]))),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=40))
def test_marks_and_verdicts_end_where_the_whole_computation_ends(steps: list[Any]) -> None:
    book, ref = CheckBook(), Reference()
    routes = {i: route(i) for i in range(10)}
    state = state_of(routes)
    book.mark(state, {})
    ref.mark(state, {})
    for kind, n, *rest in steps:
        refused: dict[str, str] = {}
        if kind == "add":
            routes[n] = route(n)
        elif kind == "remove":
            routes.pop(n, None)
        elif kind == "change":
            routes[n] = route(n, rest[0])
        elif kind == "copy" and n in routes:
            routes[n] = routes[n].model_copy()
        elif kind == "refuse" and n in routes:
            refused = {routes[n].route_id: "refused: test"}
        if kind == "fail":
            errors = {r.route_id: "not applied: test" for r in list(routes.values())[:n]}
            book.failed(dict(errors))
            ref.errors = errors
        elif kind == "check":
            todo, _ = book.todo(n)
            answers = rest[0]
            verdicts = {
                t[0]: answers[j % len(answers)] if answers else ""
                for j, t in enumerate(todo)
                if not answers or answers[j % len(answers)] is not None
            }
            book.take(todo, verdicts)  # type: ignore[arg-type]
            ref.take(todo, verdicts)  # type: ignore[arg-type]
        else:
            state = state_of(routes)
            ref.mark(state, refused)
            assert book.mark(state, refused) == ref.digests
        assert book.digests == ref.digests
        assert book.checked == ref.checked
        assert book.errors == ref.errors
        todo, more = book.todo(10_000)
        assert {t[0] for t in todo} == ref.waiting() and not more
        assert book.waiting == len(ref.waiting())


class CountingRoute(RouteSpec):
    digests: ClassVar[int] = 0

    def digest(self) -> str:
        CountingRoute.digests += 1
        return super().digest()


def test_a_change_of_one_route_at_10000_digests_that_route_only() -> None:
    routes = {i: route(i, net="10.2", kind=CountingRoute) for i in range(10_000)}
    book = CheckBook()
    book.mark(state_of(dict(routes)), {})
    todo, _ = book.todo(10_000)
    book.take(todo, {t[0]: "" for t in todo})  # every one checked OK
    assert book.waiting == 0 and not book.errors
    new = CountingRoute(
        route_id="shop/new/10.3.0.1:80",
        service="shop/new",
        address="10.3.0.1",
        port=80,
        node_port=1,
    )
    routes[10_000] = new
    routes.pop(5)
    CountingRoute.digests = 0
    digests = book.mark(state_of(routes), {})
    assert CountingRoute.digests == 1  # before agent.checkbook: 10,000, every apply
    assert book.errors == {new.route_id: CHECK_PENDING}
    assert book.todo(256) == ([(new.route_id, "10.3.0.1", 80, new.digest())], False)
    assert len(digests) == 10_000 and "shop/s5/10.2.0.6:80" not in digests
