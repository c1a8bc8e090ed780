"""What the agent does around an apply costs what changed, not every VIP (no HAProxy here)."""

from __future__ import annotations

from typing import Any

import pytest

from lbprovider.agent import vips as vips_module
from lbprovider.agent.announcing import AnnounceDriver
from lbprovider.agent.loop import Agent, _vips_of
from lbprovider.agent.vips import RoutedVips
from lbprovider.announce import NullAnnouncer
from lbprovider.fleet.models import FleetState, RouteSpec

VIPS = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(1, 10_001)]
BAD = ["127.0.0.5", "224.0.0.9", "0.0.0.0"]  # loopback, multicast, unspecified


class CountingDict(dict):  # type: ignore[type-arg]
    reads = 0

    def __getitem__(self, key: Any) -> Any:
        CountingDict.reads += 1
        return super().__getitem__(key)


class Recording(NullAnnouncer):
    def __init__(self) -> None:
        self.updates: list[frozenset[str]] = []

    def update(self, vips_serving: Any, haproxy_healthy: bool, *, owned: Any = None) -> None:
        self.updates.append(frozenset(vips_serving))


class Real:
    """An announcer that is not mode none (what BGP/VRRP would be), recording its calls."""

    def __init__(self) -> None:
        self.updates: list[frozenset[str]] = []

    def start(self) -> None: ...
    def close(self) -> None: ...
    def status(self) -> list[Any]:
        return []

    def hold_addresses(self, vips: Any) -> None: ...

    def update(self, vips_serving: Any, haproxy_healthy: bool, *, owned: Any = None) -> None:
        self.updates.append(frozenset(vips_serving))


def driver(announcer: Any = None) -> AnnounceDriver:
    return AnnounceDriver(announcer or NullAnnouncer(), lambda: True)


@pytest.mark.parametrize("enabled", [False, True])
def test_served_checks_each_vip_once_and_walks_none_in_python_after(enabled: bool) -> None:
    d = driver(Real() if enabled else Recording())
    assert d.enabled is enabled
    d.served([*VIPS, *BAD])
    assert d.serving == frozenset(VIPS)  # the bad ones are never announced
    if enabled:
        assert len(d.errors) == 3 and all("not announced" in e for e in d.errors)
    else:
        assert d.errors == []
    d._verdicts = CountingDict(d._verdicts)
    CountingDict.reads = 0
    d.served([*VIPS, "10.200.0.1", *BAD])
    assert d.serving == frozenset([*VIPS, "10.200.0.1"])
    assert CountingDict.reads <= len(BAD)  # on main: one read per VIP (10,004)
    assert d._announceable(["10.0.0.9", "10.0.0.2", "127.0.0.5"]) == ["10.0.0.2", "10.0.0.9"]
    if enabled:
        assert d.announcer.updates[-1] == frozenset([*VIPS, "10.200.0.1"])


def test_mode_none_tells_the_null_announcer_nothing() -> None:
    announcer = Recording()
    d = driver(announcer)
    d.served(VIPS)
    d.withdraw_leaving(VIPS[:10])
    assert d.serving == frozenset(VIPS[:10])
    assert announcer.updates == []  # on main: every VIP, checked again, on every apply


def test_routed_vips_are_sorted_when_reported_not_when_synced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    routed = RoutedVips()

    def no_sort(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("sorted on sync")

    monkeypatch.setattr(vips_module, "sorted", no_sort, raising=False)
    routed.sync(set(reversed(VIPS)))
    monkeypatch.undo()
    assert routed.owned() == sorted(VIPS)


def test_an_apply_builds_the_states_vip_set_once(tmp_path: Any) -> None:
    routes = tuple(
        RouteSpec(
            route_id=f"shop/s{i}/{v}:80", service=f"shop/s{i}", address=v, port=80, node_port=30080
        )
        for i, v in enumerate(VIPS[:50])
    )
    state = FleetState(host="edge-1", routes=routes, vips=tuple(VIPS[:50]))
    agent = Agent.__new__(Agent)
    agent._vips = None
    first = agent._wanted_vips(state)
    assert first == _vips_of(state) == frozenset(VIPS[:50])
    assert agent._wanted_vips(state) is first  # on main: a new set each time
    other = FleetState(host="edge-1", routes=routes[:1], vips=tuple(VIPS[:1]))
    assert agent._wanted_vips(other) == frozenset(VIPS[:1])
