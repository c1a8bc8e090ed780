"""/metrics after a story: pools and allocations through the services, a controller reconciling
Services from the lab API server (one satisfied, one out of addresses), an agent heartbeat
through the API. Scraped over HTTP and parsed by prometheus_client's parser."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.controller.metrics import serve_metrics
from lbprovider.fleet.models import HostStatus, ServerHealth
from tests.api.conftest import make_token
from tests.controller.helpers import condition, create_service, get_service, make_pool, wait_until
from tests.metrics.conftest import Sample, Served, StartController, scrape, value

ALLOCATED = "lbprovider.io/IPAllocated"


def reason_of(core: Any, name: str) -> str | None:
    cond = condition(get_service(core, name), ALLOCATED)
    return str(cond["reason"]) if cond else None


def satisfied_and_out_of_ips(core: Any, sessions: sessionmaker[Session]) -> None:
    """A one-address pool: ``first`` gets it, ``second`` waits with OutOfIPs."""
    make_pool(sessions, "one", "127.0.12.1-127.0.12.1")
    create_service(core, "first")
    assert wait_until(lambda: reason_of(core, "first") == "Satisfied")
    create_service(core, "second")
    assert wait_until(lambda: reason_of(core, "second") == "OutOfIPs")


def assert_bounded_labels(samples: list[Sample]) -> None:
    for name, labels, _ in samples:
        assert not {"service", "ip", "namespace", "address"} & set(labels), (name, labels)


def test_one_scrape_shows_pools_services_controller_and_fleet(
    served: Served, core: Any, sessions: sessionmaker[Session], start_controller: StartController
) -> None:
    ctl = start_controller(served.app.state.metrics)
    satisfied_and_out_of_ips(core, sessions)
    assert wait_until(ctl.idle)
    agent = make_token(sessions, "agent-edge-1", ["agent"], host="edge-1")
    auth = {"Authorization": f"Bearer {agent}"}
    state = httpx.get(f"{served.url}/api/v1/fleet/hosts/edge-1/state", headers=auth, timeout=10)
    version = state.json()["version"]  # in sync: the host applied what the API serves it
    report = HostStatus(
        desired_version=version,
        applied_version=version,
        reloads=3,
        failed_reloads=1,
        servers=[
            ServerHealth(backend="be_a", server="node-1", state="UP"),
            ServerHealth(backend="be_a", server="node-2", state="DOWN 1/2"),
            ServerHealth(backend="be_b", server="node-1", state="UP 2/3"),
        ],
    )
    r = httpx.post(
        f"{served.url}/api/v1/fleet/hosts/edge-1/status",
        content=report.model_dump_json(),
        headers={**auth, "Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 200, r.text

    samples = served.scrape()

    # Pools (the DB, at scrape time): the one address is used.
    pool = {"pool": "one", "family": "4"}
    assert value(samples, "lbprovider_pool_addresses", **pool, state="total") == 1.0
    assert value(samples, "lbprovider_pool_addresses", **pool, state="used") == 1.0
    # Services by reason and serving state, counted, never named.
    assert value(samples, "lbprovider_services", reason="Satisfied") == 1.0
    assert value(samples, "lbprovider_services", reason="OutOfIPs", serving="false") == 1.0
    # The controller, in the same registry: decisions by reason, durations, queues, watches.
    assert (value(samples, "lbprovider_allocation_results_total", reason="Satisfied") or 0) >= 1
    assert (value(samples, "lbprovider_allocation_results_total", reason="OutOfIPs") or 0) >= 1
    count = value(
        samples, "lbprovider_reconcile_duration_seconds_count", queue="services", result="done"
    )
    assert count is not None and count > 0
    assert value(samples, "lbprovider_workqueue_depth", queue="services") == 0.0
    assert value(samples, "lbprovider_watch_restarts_total", kind="services") is not None
    assert value(samples, "lbprovider_controller_leader") == 1.0
    assert value(samples, "lbprovider_controller_active") == 1.0
    # The fleet host, from its heartbeat.
    assert value(samples, "lbprovider_fleet_host_reloads_total", host="edge-1") == 3.0
    assert value(samples, "lbprovider_fleet_host_failed_reloads_total", host="edge-1") == 1.0
    assert value(samples, "lbprovider_fleet_host_in_sync", host="edge-1") == 1.0
    age = value(samples, "lbprovider_fleet_host_heartbeat_age_seconds", host="edge-1")
    assert age is not None and 0 <= age < 60
    up = value(samples, "lbprovider_fleet_backend_servers", host="edge-1", state="UP")
    down = value(samples, "lbprovider_fleet_backend_servers", host="edge-1", state="DOWN")
    assert (up, down) == (2.0, 1.0)
    assert_bounded_labels(samples)


def test_counters_grow_with_retries_and_scrapes_stay_fresh(
    served: Served, core: Any, sessions: sessionmaker[Session], start_controller: StartController
) -> None:
    start_controller(served.app.state.metrics)
    satisfied_and_out_of_ips(core, sessions)
    before = value(served.scrape(), "lbprovider_allocation_results_total", reason="OutOfIPs")
    create_service(core, "third")
    assert wait_until(lambda: reason_of(core, "third") == "OutOfIPs")

    def out_of_ips_grew() -> bool:
        now = value(served.scrape(), "lbprovider_allocation_results_total", reason="OutOfIPs")
        return (now or 0) > (before or 0)

    assert wait_until(out_of_ips_grew)
    assert value(served.scrape(), "lbprovider_services", reason="OutOfIPs", serving="false") == 2.0


def test_controller_alone_serves_its_registry_and_healthz(
    core: Any, sessions: sessionmaker[Session], start_controller: StartController
) -> None:
    registry = CollectorRegistry(auto_describe=False)
    server = serve_metrics(registry, "127.0.0.1:0")
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        ctl = start_controller(registry)
        satisfied_and_out_of_ips(core, sessions)
        assert wait_until(ctl.idle)
        assert httpx.get(url + "/healthz", timeout=10).text == "ok\n"
        samples = scrape(url + "/metrics")
        assert (value(samples, "lbprovider_allocation_results_total", reason="OutOfIPs") or 0) >= 1
        for queue in ("services", "externalnames", "nodes", "ingresses"):
            assert value(samples, "lbprovider_workqueue_depth", queue=queue) is not None
        assert value(samples, "lbprovider_pool_addresses") is None, "no API collectors here"
        assert_bounded_labels(samples)
        ctl.stop()
        after = scrape(url + "/metrics")
        assert value(after, "lbprovider_workqueue_depth", queue="services") is None
        assert (value(after, "lbprovider_allocation_results_total", reason="OutOfIPs") or 0) >= 1
    finally:
        server.shutdown()
        server.server_close()
