"""Which applied routes still wait for their serving check, and the error each one reports.

Why: after an apply every new, changed or failing route reports :data:`CHECK_PENDING` (or its
last failure) until a serving check has connected to it at its current digest: a route is
never reported served unchecked. Recomputing that from the whole applied state after every
apply (five passes over dicts of every route) cost ~9 ms of the agent's main loop per change
at 10,000 routes, right before its next long-poll went out. A change of a few routes now costs
those routes: they are found by object identity against the last state marked (a delta keeps
the route objects it does not change, see :meth:`FleetDelta.apply_to`), and the routes waiting
for a check are kept as they come and go instead of being looked for in every route.

The whole computation (:meth:`CheckBook._mark_whole`) stays the reference: it runs for the
first state, after a failed apply replaced the errors, when a route was refused (now or in
the last state marked), and when a state shares no identity with the last one. A test drives
both through random histories and finds them equal.

What it must not do: lock (the agent holds its ``_checks_lock`` around every call: the main
loop marks, the reporter thread takes verdicts) or connect (``agent.checks`` does).
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Mapping

from lbprovider.fleet.models import FleetState, RouteSpec

CHECK_PENDING = "serving check pending"

Target = tuple[str, str, int, str]  # route_id, address, port, digest


class CheckBook:
    """The serving checks' bookkeeping for the applied state (see the module)."""

    def __init__(self) -> None:
        self.checked: dict[str, str] = {}  # route_id -> digest checked OK
        self.errors: dict[str, str] = {}  # route_id -> the error reported for it
        self.digests: dict[str, str] = {}  # route_id -> digest, of the state marked
        self.refused: dict[str, str] = {}  # its refused routes
        self._ids: dict[int, RouteSpec] = {}  # id -> route of the state marked (ids stay valid)
        self._waiting: dict[str, RouteSpec] = {}  # not checked at its digest, not refused
        self._exact = False  # a state was marked and ``errors`` is what marks and verdicts made

    @property
    def waiting(self) -> int:
        """Routes of the state marked not yet checked OK at their digest."""
        return len(self._waiting)

    def mark(
        self,
        state: FleetState,
        refused: Mapping[str, str],
        specs: dict[int, RouteSpec] | None = None,
    ) -> dict[str, str]:
        """``state`` was applied (``refused``: its routes left out): its new, changed and
        failing routes wait for a check. Returns the digest of every route of ``state``
        (route_id -> digest; not changed afterwards, so it may be shared). ``specs``: id ->
        route of ``state``'s routes when already made (the translation's), else made here."""
        ids = specs
        if ids is None:
            ids = dict(zip(map(id, state.routes), state.routes, strict=True))
        if self._exact and not refused and not self.refused and len(ids) == len(state.routes):
            self._mark_change(
                [ids[i] for i in ids.keys() - self._ids.keys()],
                [self._ids[i] for i in self._ids.keys() - ids.keys()],
            )
        else:
            self._mark_whole(state, refused)
        self.refused, self._ids, self._exact = dict(refused), ids, True
        return self.digests

    def _mark_whole(self, state: FleetState, refused: Mapping[str, str]) -> None:
        digests = {r.route_id: r.digest() for r in state.routes}
        checked = {k: d for k, d in self.checked.items() if digests.get(k) == d}
        errors = {k: v for k, v in self.errors.items() if k in digests}
        waiting: dict[str, RouteSpec] = {}
        for r in state.routes:
            if r.route_id not in refused and checked.get(r.route_id) != digests[r.route_id]:
                errors.setdefault(r.route_id, CHECK_PENDING)
                waiting[r.route_id] = r
        self.digests, self.checked, self._waiting = digests, checked, waiting
        self.errors = {k: v for k, v in errors.items() if k not in checked} | dict(refused)

    def _mark_change(self, added: list[RouteSpec], gone: list[RouteSpec]) -> None:
        digests = dict(self.digests)  # a copy: the last one may be shared
        for r in gone:
            digests.pop(r.route_id, None)
        for r in added:
            digests[r.route_id] = r.digest()
        for route_id, route in _by_id(gone, added):
            digest = digests.get(route_id)
            if digest is None:  # gone
                self.checked.pop(route_id, None)
                self.errors.pop(route_id, None)
                self._waiting.pop(route_id, None)
            elif self.checked.get(route_id) != digest:  # new or changed
                self.checked.pop(route_id, None)
                self.errors.setdefault(route_id, CHECK_PENDING)
                self._waiting[route_id] = route
            # else: sent again with the content it was checked at
        self.digests = digests

    def failed(self, errors: dict[str, str]) -> None:
        """An apply failed: ``errors`` (route_id -> why) is what the routes report now, until
        the next state applied is marked (whole)."""
        self.errors = errors
        self._exact = False

    def todo(self, batch: int) -> tuple[list[Target], bool]:
        """Up to ``batch`` routes to check now, and whether more wait after them."""
        targets: list[Target] = []
        for route_id, route in self._waiting.items():
            if len(targets) == batch:
                return targets, True
            targets.append((route_id, route.address, route.port, self.digests[route_id]))
        return targets, False

    def take(self, todo: Iterable[Target], verdicts: Mapping[str, str]) -> bool:
        """Keep the verdicts (route_id -> error, "" or absent: not checked) of ``todo`` for
        the routes the applied state still holds at the digest checked; whether some changed
        meanwhile (to check again). A failing route goes to the back of the queue."""
        again = False
        for route_id, _, _, digest in todo:
            error = verdicts.get(route_id, "not checked")
            if self.digests.get(route_id) != digest:
                again = True  # changed or gone meanwhile: waits (or not) as marked since
            elif error:
                self.errors[route_id] = error
                route = self._waiting.pop(route_id, None)
                if route is not None:
                    self._waiting[route_id] = route
            else:
                self.checked[route_id] = digest
                self.errors.pop(route_id, None)
                self._waiting.pop(route_id, None)
        return again


def _by_id(gone: list[RouteSpec], added: list[RouteSpec]) -> ItemsView[str, RouteSpec]:
    """The route ids a change touched, each with its new route (its old one when gone)."""
    out = {r.route_id: r for r in gone}
    out.update((r.route_id, r) for r in added)
    return out.items()
