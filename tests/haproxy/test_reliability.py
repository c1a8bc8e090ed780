"""Reloads and failures: hitless changes, a bind failure keeps the old worker, hand edits heal."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path

import pytest

from lbprovider.haproxy.model import BindMode, Route
from lbprovider.haproxy.process import HAProxyProcess
from lbprovider.haproxy.render import CONFIG_NAME, ConfigCheckFailed, check_config
from lbprovider.haproxy.runtime import RuntimeClient, add_map, del_map, set_server_state

from .conftest import Lab, free_port, get, route, try_get, vip

pytestmark = pytest.mark.haproxy


def test_requests_never_fail_across_runtime_changes_and_reloads(lab_factory, backends) -> None:
    port, np = free_port(), backends.node_port()
    routes = [route(0, port, np)]
    lab = lab_factory(routes)
    failures: list[str] = []
    done = {"n": 0}
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                get(vip(0), port)
                done["n"] += 1
            except OSError as e:
                failures.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    reloads = 0
    try:
        for change in range(20):
            if change % 5 == 4:  # a new port is a skeleton change: a reload
                routes.append(route(100 + change, free_port(), np))
            else:
                routes.append(route(change + 1, port, np))
            result = lab.applier.apply(lab.state(routes))
            assert result.applied, result.errors
            reloads += result.reloaded
            time.sleep(0.1)
        while done["n"] < 5000:
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert reloads == 4
    assert lab.process.show_proc().failed_reloads == 0


def test_bind_failure_keeps_the_old_worker_serving_and_is_reported(lab_factory, backends) -> None:
    port, np = free_port(), backends.node_port()
    good = [route(1, port, np)]
    lab = lab_factory(good, bind_mode=BindMode.PER_VIP)
    pid = lab.worker_pid()
    config = Path(lab.settings.run_dir) / CONFIG_NAME
    before = config.read_text()
    # 192.0.2.1 (TEST-NET) is on no interface: `haproxy -c` passes, the bind fails.
    absent = [*good, Route("ns/absent:1", ip_address("192.0.2.1"), port, np)]
    result = lab.applier.apply(lab.state(absent))
    assert not result.applied and not result.reloaded
    assert any("192.0.2.1" in e for e in result.errors), result.errors
    assert lab.worker_pid() == pid
    assert get(vip(1), port).endswith(f":{np}")
    assert config.read_text() == before  # a master restart would not pick up the bad file
    # The next good state still applies normally.
    result = lab.applier.apply(lab.state([*good, route(3, port, np)]))
    assert result.applied and result.reloaded, result.errors
    assert get(vip(3), port).endswith(f":{np}")


def test_a_config_haproxy_refuses_never_replaces_the_file(lab_factory, backends) -> None:
    lab = lab_factory([route(1, free_port(), backends.node_port())])
    config = Path(lab.settings.run_dir) / CONFIG_NAME
    broken = config.with_name("broken.cfg")
    broken.write_text(config.read_text().replace("mode tcp", "mode tcp\n    nonsense-keyword"))
    with pytest.raises(ConfigCheckFailed, match="nonsense-keyword"):
        check_config(broken)
    check_config(config)


def test_hand_edits_through_the_socket_converge_back(lab_factory, backends) -> None:
    port, np_a, np_b = free_port(), backends.node_port(), backends.node_port()
    routes = [route(1, port, np_a), route(2, port, np_b)]
    lab = lab_factory(routes)
    pid = lab.worker_pid()
    run = lab.settings.run_dir
    routes_map = f"{run}/routes.map"
    with RuntimeClient(f"{run}/admin.sock") as hand:
        value_1 = dict(hand.show_map(routes_map))[f"{vip(1)}:{port}"]
        hand.execute(
            [
                del_map(routes_map, f"{vip(2)}:{port}"),
                add_map(routes_map, f"{vip(1)}:{port}", value_1.replace(str(np_a), str(np_b))),
                add_map(routes_map, f"{vip(9)}:{port}", value_1),
                set_server_state("be_nodes", "n1", "maint"),
            ]
        )
        for server in [s for s in hand.show_servers_state() if s.name == "n2"]:
            hand.execute([set_server_state(server.backend, "n2", "drain")])
    assert try_get(vip(2), port) is None  # unmapped by hand
    assert try_get(vip(1), port) is None  # n1 in maintenance, n2 drained: no server left
    # A new Applier: as if the agent restarted with no memory of what it did.
    from lbprovider.haproxy.apply import Applier

    fresh = Applier(lab.settings, HAProxyProcess.attach(lab.process.master_socket))
    try:
        result = fresh.apply(lab.state(routes))
    finally:
        fresh.close()
    assert result.applied and not result.reloaded, result.errors
    assert result.commands > 0
    assert {get(vip(1), port) for _ in range(20)} == {f"n1:{np_a}", f"n2:{np_a}"}
    assert get(vip(2), port).endswith(f":{np_b}")
    assert try_get(vip(9), port) is None
    with RuntimeClient(f"{run}/admin.sock") as check:
        entries = check.show_map(routes_map)
        assert sorted(k for k, _ in entries) == sorted(r.key for r in routes)
        assert all(s.admin_state & 0x09 == 0 for s in check.show_servers_state())
    assert lab.worker_pid() == pid
    assert lab.applier.apply(lab.state(routes)).commands == 0  # converged: nothing to do


def test_process_reports_reloads_and_old_worker_exits(lab_factory, backends) -> None:
    lab = lab_factory([route(1, free_port(), backends.node_port())])
    before = lab.process.show_proc()
    after = lab.process.reload()
    assert after.reloads == before.reloads + 1 and after.failed_reloads == before.failed_reloads
    assert set(after.workers).isdisjoint(before.workers)
    deadline = time.monotonic() + 10
    exits = []
    while not exits and time.monotonic() < deadline:
        exits = lab.process.worker_exits()
        time.sleep(0.1)
    assert [(e.pid, e.former) for e in exits] == [(before.workers[0], True)]
    attached = HAProxyProcess.attach(lab.process.master_socket)
    assert attached.pid == lab.process.pid and attached.stop() is None
    assert lab.process.show_proc().workers == after.workers


def test_runtime_client_reconnects_when_haproxy_closed_its_idle_connection(
    lab_factory: Callable[..., Lab],
) -> None:
    """A reload (or HAProxy's `stats timeout`) closes the agent's idle socket connection; the
    next command must go through on a new connection instead of failing the apply."""
    lab = lab_factory()
    client = RuntimeClient(f"{lab.settings.run_dir}/admin.sock")
    try:
        before = client.show_info()
        old_worker = lab.worker_pid()
        lab.process.reload()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{old_worker}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{old_worker}").exists(), "the old worker left"
        after = client.show_info()
        assert before["Pid"] != after["Pid"], "answered by the new worker"
    finally:
        client.close()


def test_a_change_sends_only_its_own_commands_and_a_live_diff_still_heals(
    lab_factory, backends
) -> None:
    """With the state it applied known, the next apply (``live=False``) sends only the map
    lines that changed, whatever the number of routes; a hand edit is undone by the next
    live diff (``live=True``), and an incremental command that fails on a hand edit falls
    back to reading everything, not to a reload."""
    port, np, np2 = free_port(), backends.node_port(), backends.node_port()
    routes = [route(i, port, np) for i in range(1, 301)]
    lab = lab_factory()
    assert lab.applier.apply(lab.state(routes)).applied  # the first bind: a reload
    pid = lab.worker_pid()
    more = [*routes, route(400, port, np)]
    added = lab.applier.apply(lab.state(more), live=False)
    assert added.applied and added.commands == 1 and not added.reloaded
    assert get(vip(400), port).endswith(f":{np}")
    fewer = [r for r in more if r.key != route(7, port, np).key]
    removed = lab.applier.apply(lab.state(fewer), live=False)
    assert removed.applied and removed.commands == 1
    assert try_get(vip(7), port) is None
    run = lab.settings.run_dir
    with RuntimeClient(f"{run}/admin.sock") as hand:
        hand.execute([del_map(f"{run}/routes.map", route(8, port, np).key)])
    assert lab.applier.apply(lab.state(fewer), live=False).commands == 0  # trusts what it knows
    assert try_get(vip(8), port) is None
    healed = lab.applier.apply(lab.state(fewer), live=True)
    assert healed.applied and healed.commands == 1
    assert get(vip(8), port).endswith(f":{np}")
    with RuntimeClient(f"{run}/admin.sock") as hand:
        hand.execute([del_map(f"{run}/routes.map", route(9, port, np).key)])
    moved = [route(9, port, np2) if r.key == route(9, port, np).key else r for r in fewer]
    result = lab.applier.apply(lab.state(moved), live=False)  # "set map" finds no line
    assert result.applied and not result.reloaded, result.errors
    assert get(vip(9), port).endswith(f":{np2}")
    assert lab.worker_pid() == pid
