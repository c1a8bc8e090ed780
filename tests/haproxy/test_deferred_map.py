"""A route-only change's routes.map is written after its runtime commands, off the apply: the
apply returns once HAProxy serves the change, and a reload (or the next whole write) never
finds, or leaves, a map file behind what runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from lbprovider.haproxy import apply as apply_module
from lbprovider.haproxy import render
from lbprovider.haproxy.layout import ROUTES_MAP
from lbprovider.haproxy.runtime import RuntimeClient

from .conftest import free_port, get, route, vip

pytestmark = pytest.mark.haproxy

SLOW = 1.0  # seconds each file write takes in these tests


def map_keys(run_dir: str) -> set[str]:
    text = (Path(run_dir) / ROUTES_MAP).read_text()
    return {line.split(" ", 1)[0] for line in text.splitlines() if line}


def live_keys(run_dir: str) -> set[str]:
    with RuntimeClient(f"{run_dir}/admin.sock") as client:
        return {k for k, _ in client.show_map(f"{run_dir}/{ROUTES_MAP}")}


def test_a_route_change_is_served_before_its_map_file_is_written_and_a_reload_loses_nothing(
    lab_factory: Any, backends: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, np = free_port(), backends.node_port()
    routes = [route(0, port, np)]
    lab = lab_factory(routes)
    run = lab.settings.run_dir
    assert lab.applier.apply(lab.state(routes)).applied
    real = render.write_atomic

    def slow(path: Path, text: str) -> None:
        time.sleep(SLOW)
        real(path, text)

    monkeypatch.setattr(render, "write_atomic", slow)  # the synchronous writes
    monkeypatch.setattr(apply_module, "write_atomic", slow)  # the writer thread's
    routes.append(route(1, port, np))
    started = time.monotonic()
    result = lab.applier.apply(lab.state(routes), live=False)
    took = time.monotonic() - started
    assert result.applied and not result.reloaded and result.errors == []
    assert took < SLOW / 2, took  # on main: the map file was written (and fsynced) first
    assert get(vip(1), port).endswith(f":{np}")  # served at once
    assert f"{vip(1)}:{port}" not in map_keys(run)  # its file still being written

    # A skeleton change (a new port) right away: the reload writes every file itself, and
    # the older route map the writer holds never lands after it.
    routes.append(route(2, free_port(), np))
    result = lab.applier.apply(lab.state(routes))
    assert result.applied and result.reloaded, result.errors
    lab.applier.flush()
    time.sleep(0.1)
    want = {f"{vip(0)}:{port}", f"{vip(1)}:{port}", f"{vip(2)}:{routes[2].port}"}
    assert map_keys(run) == live_keys(run) == want
    for r in routes:
        assert get(str(r.address), r.port).endswith(f":{np}")


def test_the_map_file_follows_every_route_change_and_a_failed_write_is_reported(
    lab_factory: Any, backends: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, np = free_port(), backends.node_port()
    routes = [route(0, port, np)]
    lab = lab_factory(routes)
    run = lab.settings.run_dir
    assert lab.applier.apply(lab.state(routes)).applied
    for i in range(1, 6):  # several changes in a row: the file ends with the last
        routes.append(route(i, port, np))
        assert lab.applier.apply(lab.state(routes), live=False).applied
    lab.applier.flush()
    assert map_keys(run) == live_keys(run) == {f"{vip(i)}:{port}" for i in range(6)}

    def broken(path: Path, text: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(apply_module, "write_atomic", broken)
    routes.append(route(6, port, np))
    assert lab.applier.apply(lab.state(routes), live=False).applied
    lab.applier.flush()
    monkeypatch.undo()
    # the next apply says so and persists everything itself (the whole path)
    routes.append(route(7, port, np))
    result = lab.applier.apply(lab.state(routes), live=False)
    assert result.applied and any("disk full" in e for e in result.errors), result.errors
    assert map_keys(run) == live_keys(run) == {f"{vip(i)}:{port}" for i in range(8)}
    result = lab.applier.apply(lab.state(routes), live=False)
    assert result.applied and result.errors == []


def test_a_burst_of_route_changes_writes_the_map_file_once_per_gap(
    lab_factory: Any, backends: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten route changes in a row within the writer's gap: served at once each, the file
    written for the first and then once for the last (at 10,000 routes each write renders and
    fsyncs every route beside the next change), and ``flush`` does not wait out the gap."""
    port, np = free_port(), backends.node_port()
    routes = [route(0, port, np)]
    lab = lab_factory(routes)
    run = lab.settings.run_dir
    assert lab.applier.apply(lab.state(routes)).applied
    lab.applier.flush()
    lab.applier.write_gap = 0.3
    real = apply_module.write_atomic
    written: list[set[str]] = []

    def recording(path: Path, text: str) -> None:
        real(path, text)
        written.append(map_keys(run))

    monkeypatch.setattr(apply_module, "write_atomic", recording)  # the writer thread's
    for i in range(1, 11):
        routes.append(route(i, port, np))
        assert lab.applier.apply(lab.state(routes), live=False).applied
        assert get(vip(i), port).endswith(f":{np}")  # served before any write
    want = {f"{vip(i)}:{port}" for i in range(11)}
    deadline = time.monotonic() + 5
    while (not written or written[-1] != want) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert written[-1] == want == live_keys(run)
    assert len(written) <= 3, [len(w) for w in written]  # on main: one write per change

    lab.applier.write_gap = 30.0  # flush writes what waits at once
    routes.append(route(11, port, np))
    assert lab.applier.apply(lab.state(routes), live=False).applied
    started = time.monotonic()
    lab.applier.flush()
    assert time.monotonic() - started < 5
    assert map_keys(run) == live_keys(run) == want | {f"{vip(11)}:{port}"}
