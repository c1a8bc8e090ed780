"""Delta reports between a real agent (real HAProxy) and the API: after one whole report the
agent sends only what changed, the API's stored report is what a whole report would store, an
API that lost the base gets a whole report again, and a restarted agent starts whole."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select, update

from lbprovider.agent.loop import CHECK_PENDING, STATE_FILE, Agent
from lbprovider.db.models import FleetHost
from lbprovider.db.session import transaction
from lbprovider.fleet.models import FleetState
from tests.fleet.helpers import add_service, make_pool, remove_service, service_data, set_node
from tests.haproxy.conftest import free_port

from .conftest import HOST, Fleet, serving, try_get, wait_until

pytestmark = pytest.mark.haproxy


def stored(fleet: Fleet) -> dict[str, Any]:
    with transaction(fleet.sessions) as s:
        host = s.scalar(select(FleetHost).where(FleetHost.name == HOST))
        return dict(host.status) if host is not None and isinstance(host.status, dict) else {}


def caught_up(fleet: Fleet, agent: Agent) -> bool:
    """The API holds the agent's last acknowledged report, and it is the agent's whole view."""
    p, row = agent.progress, stored(fleet)
    return (
        bool(p.acked_report)
        and row.get("report_id") == p.acked_report
        and row.get("applied_routes") == p.applied_routes
        and p.applied is not None
        and row.get("applied_version") == p.applied.version
    )


def record_reports(agent: Agent) -> list[Any]:
    """Every report ``agent`` sends from now on, in order (each still goes to the real API)."""
    sent: list[Any] = []
    post = agent.api.post_status
    agent.api.post_status = lambda status: sent.append(status) or post(status)  # type: ignore[method-assign]
    return sent


def test_delta_reports_keep_the_stored_report_whole(
    fleet: Fleet, fast_backend: Callable[[], int]
) -> None:
    make_pool(fleet.sessions, "127.41.0.0/24")
    set_node(fleet.sessions, "node-1", "127.0.0.2")
    np, port = fast_backend(), free_port()
    (a,) = add_service(fleet.sessions, service_data("a", [(port, np)]))
    agent = fleet.start_agent(fleet.config(heartbeat_seconds=2.0))
    wait_until(lambda: try_get(a, port), what="a answers")
    wait_until(lambda: caught_up(fleet, agent), what="first report taken")
    assert agent.progress.deltas
    sent = record_reports(agent)
    (b,) = add_service(fleet.sessions, service_data("b", [(port, np)]))
    remove_service(fleet.sessions, "a")
    wait_until(lambda: try_get(b, port) and try_get(a, port) is None, what="b in, a out")
    # b's route alone applied: HAProxy serves a state a moment before the agent records it as
    # applied, so "one route" alone could still be a's (the report not sent yet)
    wait_until(
        lambda: (
            caught_up(fleet, agent)
            and [r.split("/")[1] for r in agent.progress.applied_routes] == ["b"]
        ),
        what="delta taken",
    )
    deltas = [s for s in sent if s.base_report]
    assert deltas, "the agent sent no delta report"
    assert any(s.gone_routes for s in deltas)  # a's route left as a removal, not a resend
    # the live map is read every heartbeat_seconds (not right after an apply): b's backend
    # follows within one, a's is dropped at once
    assert stored(fleet)["route_backends"].keys() <= agent.progress.applied_routes.keys()
    wait_until(
        lambda: stored(fleet)["route_backends"].keys() == agent.progress.applied_routes.keys(),
        what="b's backend reported",
    )
    row = stored(fleet)
    assert set(row["counters"]) <= {f"{a}:{port}", f"{b}:{port}"}

    # the API loses the base (here: another report id on the row): a whole report follows
    with transaction(fleet.sessions) as s:
        s.execute(update(FleetHost).where(FleetHost.name == HOST).values(status={}))
    sent.clear()
    agent._report_soon()
    wait_until(lambda: caught_up(fleet, agent), what="resynced after a lost base")
    assert sent[0].base_report and any(not s.base_report for s in sent[1:])
    assert stored(fleet)["route_backends"].keys() == agent.progress.applied_routes.keys()  # whole

    # a restarted agent (new run, same state dir) starts with a whole report
    state_dir, process = agent.config.state_dir, agent.process
    assert process is not None
    fleet.stop_agent(agent, stop_haproxy=False)
    try:
        second = fleet.start_agent(fleet.config(state_dir=str(state_dir), heartbeat_seconds=2.0))
        wait_until(lambda: caught_up(fleet, second), what="restarted agent reported")
        assert second.progress.acked_report.split("-")[0] != row["report_id"].split("-")[0]
        assert stored(fleet)["applied_routes"] == second.progress.applied_routes
        fleet.stop_agent(second, stop_haproxy=False)
    finally:
        # The second agent attached to the first one's HAProxy (it does not own it): the
        # process the first agent started is the one to stop.
        process.stop(timeout=5)


def test_serving_checks_go_in_rounds_and_nothing_is_served_unchecked(
    fleet: Fleet, fast_backend: Callable[[], int]
) -> None:
    make_pool(fleet.sessions, "127.42.0.0/24")
    set_node(fleet.sessions, "node-1", "127.0.0.2")
    np, port = fast_backend(), free_port()
    ips = [add_service(fleet.sessions, service_data(f"s{i}", [(port, np)]))[0] for i in range(4)]
    agent = Agent(fleet.config(heartbeat_seconds=2.0))
    agent.check_batch = 1  # one check per round (CHECK_BATCH at scale)
    sent = record_reports(agent)
    agent.start()
    thread = threading.Thread(target=agent.run, name="agent-rounds")
    thread.start()
    fleet.agents.append((agent, thread))
    wait_until(lambda: all(try_get(ip, port) for ip in ips), what="all answer")
    wait_until(lambda: all(serving(fleet, f"s{i}")[0] for i in range(4)), what="all served")
    assert not agent.progress.checks.errors and len(agent.progress.checks.checked) == 4
    pending = [s for s in sent if CHECK_PENDING in (s.route_errors or {}).values()]
    assert pending, "no report showed a route waiting for its check"
    # a route reported applied but pending is not Serving: its error holds it back
    first = pending[0]
    waiting = {k for k, v in first.route_errors.items() if v == CHECK_PENDING}
    assert waiting and waiting <= set(agent.progress.applied_routes)


def test_a_serving_check_does_not_hold_up_the_next_change(
    fleet: Fleet, fast_backend: Callable[[], int]
) -> None:
    """The checks run beside the fetch/apply loop: a served route's check waits its whole
    timeout on an open connection, and the next change is applied meanwhile, not after it."""
    make_pool(fleet.sessions, "127.42.0.0/24")
    set_node(fleet.sessions, "node-1", "127.0.0.2")
    np, port = fast_backend(), free_port()
    timeout = 3.0
    agent = fleet.start_agent(fleet.config(heartbeat_seconds=2.0, check_timeout_seconds=timeout))
    (first,) = add_service(fleet.sessions, service_data("first", [(port, np)]))
    wait_until(lambda: try_get(first, port), what="first answers")
    started = time.monotonic()  # the first one's check is waiting on its connection now
    (second,) = add_service(fleet.sessions, service_data("second", [(port, np)]))
    wait_until(lambda: try_get(second, port), what="second answers")
    took = time.monotonic() - started
    assert took < timeout / 2, f"the second change waited {took:.1f} s for the first's check"
    # the checks themselves still happen, and Serving waits for them
    assert not serving(fleet, "second")[0]
    wait_until(lambda: serving(fleet, "first")[0] and serving(fleet, "second")[0], timeout=20)
    assert set(agent.progress.checks.checked) >= {
        r for r in agent.progress.applied_routes if first in r or second in r
    }


def test_the_state_file_is_kept_off_the_change_path_and_current_at_stop(
    fleet: Fleet, fast_backend: Callable[[], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last good state is written by the reporter after its report, not by the apply: a
    slow disk does not hold up the next change; the last applied state is on disk at stop."""
    make_pool(fleet.sessions, "127.43.0.0/24")
    set_node(fleet.sessions, "node-1", "127.0.0.2")
    np, port = fast_backend(), free_port()
    slow = 2.0
    save = Agent._save

    def slow_save(self: Agent, state: FleetState) -> None:
        time.sleep(slow)
        save(self, state)

    monkeypatch.setattr(Agent, "_save", slow_save)
    agent = fleet.start_agent(fleet.config(heartbeat_seconds=2.0))
    (first,) = add_service(fleet.sessions, service_data("first", [(port, np)]))
    wait_until(lambda: try_get(first, port), what="first answers")
    started = time.monotonic()
    (second,) = add_service(fleet.sessions, service_data("second", [(port, np)]))
    wait_until(lambda: try_get(second, port), what="second answers")
    took = time.monotonic() - started
    assert took < slow / 2, f"the second change waited {took:.1f} s for the first's save"
    fleet.stop_agent(agent)
    applied = agent.progress.applied  # the last one the agent applied before it stopped
    assert applied is not None
    kept = FleetState.model_validate_json((agent.config.state_dir / STATE_FILE).read_text())
    assert kept.version == applied.version
