"""Per-agent fleet series on /metrics, from heartbeats posted through the real API: the agent's
runtime-API commands and reload durations, and whether (and since when) its applied version
lags the state the API serves it now — which changes when the database does."""

from __future__ import annotations

import time
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.fleet.models import HostStatus
from tests.api.conftest import make_token
from tests.fleet.helpers import set_node
from tests.metrics.conftest import Sample, Served, value

HOST = "edge-1"


class AgentClient:
    """The agent protocol over HTTP, with a host-scoped agent token (as the agent speaks it)."""

    def __init__(self, served: Served, sessions: sessionmaker[Session]) -> None:
        token = make_token(sessions, f"agent-{HOST}", ["agent"], host=HOST)
        self.base = f"{served.url}/api/v1/fleet/hosts/{HOST}"
        self.headers = {"Authorization": f"Bearer {token}"}

    def served_version(self) -> str:
        r = httpx.get(f"{self.base}/state", headers=self.headers, timeout=10)
        assert r.status_code == 200, r.text
        return str(r.json()["version"])

    def report(self, **fields: Any) -> None:
        body = HostStatus(**fields).model_dump_json()
        headers = {**self.headers, "Content-Type": "application/json"}
        r = httpx.post(f"{self.base}/status", content=body, headers=headers, timeout=10)
        assert r.status_code == 200, r.text


def host_value(samples: list[Sample], name: str) -> float | None:
    return value(samples, name, host=HOST)


def test_agent_counters_become_per_host_series(
    served: Served, sessions: sessionmaker[Session]
) -> None:
    agent = AgentClient(served, sessions)
    v1 = agent.served_version()
    agent.report(
        desired_version=v1,
        applied_version=v1,
        reloads=2,
        runtime_commands_total=17,
        reloads_timed=2,
        reload_seconds_total=0.75,
        reload_seconds_last=0.25,
    )
    samples = served.scrape()
    assert host_value(samples, "lbprovider_fleet_runtime_commands_total") == 17.0
    assert host_value(samples, "lbprovider_fleet_timed_reloads_total") == 2.0
    assert host_value(samples, "lbprovider_fleet_reload_seconds_total") == 0.75
    assert host_value(samples, "lbprovider_fleet_reload_seconds_last") == 0.25
    assert host_value(samples, "lbprovider_fleet_host_in_sync") == 1.0
    assert host_value(samples, "lbprovider_fleet_host_version_lag_seconds") == 0.0
    for name, labels, _ in samples:
        assert not {"service", "ip"} & set(labels), (name, labels)


def test_an_older_agent_without_the_counters_reads_as_zero(
    served: Served, sessions: sessionmaker[Session]
) -> None:
    agent = AgentClient(served, sessions)
    v1 = agent.served_version()
    agent.report(desired_version=v1, applied_version=v1)  # none of the new fields
    samples = served.scrape()
    assert host_value(samples, "lbprovider_fleet_runtime_commands_total") == 0.0
    assert host_value(samples, "lbprovider_fleet_reload_seconds_total") == 0.0
    assert host_value(samples, "lbprovider_fleet_reload_seconds_last") is None


def test_lag_counts_from_the_first_report_behind_the_served_state(
    served: Served, sessions: sessionmaker[Session]
) -> None:
    agent = AgentClient(served, sessions)
    v1 = agent.served_version()
    agent.report(desired_version=v1, applied_version=v1)
    assert host_value(served.scrape(), "lbprovider_fleet_host_in_sync") == 1.0

    # The desired state changes (a node joins): the host's last report is now behind, before
    # it even fetched the new state; the lag counts from that report.
    set_node(sessions, "node-1", "127.0.0.2")
    v2 = agent.served_version()
    assert v2 != v1
    samples = served.scrape()
    assert host_value(samples, "lbprovider_fleet_host_in_sync") == 0.0
    lag = host_value(samples, "lbprovider_fleet_host_version_lag_seconds")
    assert lag is not None and lag >= 0

    # It fetched v2 but keeps failing to apply it: the lag runs from the first report behind,
    # not from the latest one.
    behind = time.monotonic()
    agent.report(desired_version=v2, applied_version=v1, errors=["refused: bad config"])
    time.sleep(0.6)
    agent.report(desired_version=v2, applied_version=v1, errors=["refused: bad config"])
    lag = host_value(served.scrape(), "lbprovider_fleet_host_version_lag_seconds")
    assert lag is not None and 0.55 <= lag <= time.monotonic() - behind + 0.1

    # Applied: in sync, no lag; a later change starts a new count.
    agent.report(desired_version=v2, applied_version=v2)
    samples = served.scrape()
    assert host_value(samples, "lbprovider_fleet_host_in_sync") == 1.0
    assert host_value(samples, "lbprovider_fleet_host_version_lag_seconds") == 0.0
    behind = time.monotonic()
    agent.report(desired_version=v2, applied_version=v1)  # e.g. restored from an old disk state
    lag = host_value(served.scrape(), "lbprovider_fleet_host_version_lag_seconds")
    assert lag is not None and lag <= time.monotonic() - behind + 0.1
