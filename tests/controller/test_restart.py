"""Restarts, adoption, failover and kill -9: a restart never changes an IP, on SQLite and
PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.models import Allocation
from lbprovider.db.session import transaction

from .conftest import StartController
from .helpers import (
    NAMESPACE,
    active_rows,
    create_service,
    db_ips,
    events_for,
    get_service,
    ip_of,
    lease_ips,
    ledger,
    make_pool,
    patch_service,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]


def all_ips(core: Any, names: list[str]) -> dict[str, str | None]:
    return {name: ip_of(core, name) for name in names}


def test_restart_keeps_the_same_100_ips(
    core: Any, sessions: sessionmaker[Session], start_controller: StartController
) -> None:
    make_pool(sessions, "big", "127.0.12.1-127.0.12.250")
    names = [f"svc-{i:03d}" for i in range(100)]
    first = start_controller(sessions)
    for name in names:
        create_service(core, name)
    assert wait_until(lambda: all(all_ips(core, names).values()), timeout=60)
    before = all_ips(core, names)
    first.stop()

    second = start_controller(sessions)
    assert wait_until(second.idle, timeout=30)

    assert all_ips(core, names) == before
    assert len(set(before.values())) == 100
    assert sorted(ip for _, _, ip in active_rows(sessions)) == sorted(before.values())  # type: ignore[type-var]
    assert {a for a, _ in ledger(sessions)} == {"allocated"}


def test_restart_reconciles_only_the_services_that_changed_while_it_was_away(
    core: Any, sessions: sessionmaker[Session], start_controller: StartController
) -> None:
    """The start-up pass checks every Service in bulk and queues only those whose database
    state or status differs: a cleared status gets the same IP back, a port change is
    mirrored, and the 18 untouched Services are not reconciled (nor written) at all."""
    make_pool(sessions, "pass", "127.0.15.1-127.0.15.50")
    names = [f"svc-{i:02d}" for i in range(20)]
    first = start_controller(sessions)
    for name in names:
        create_service(core, name)
    assert wait_until(lambda: all(all_ips(core, names).values()), timeout=60)
    before = all_ips(core, names)
    untouched = {n: get_service(core, n)["metadata"]["resourceVersion"] for n in names[2:]}  # type: ignore[index]
    first.stop()
    core.patch_namespaced_service_status(
        "svc-00",
        NAMESPACE,
        {"status": {"loadBalancer": {"ingress": None}}},
        _content_type="application/merge-patch+json",
        _preload_content=False,
    )
    patch_service(core, "svc-01", {"spec": {"ports": [{"name": "p81-tcp", "port": 81}]}})

    # No serving poll here: it may queue svc-00 once more while its restored status is on the
    # way back through the watch (a harmless extra look that would blur the count below).
    second = start_controller(sessions, serving_poll_seconds=300)
    assert wait_until(second.idle, timeout=30)
    assert wait_until(lambda: ip_of(core, "svc-00") == before["svc-00"])

    assert second.queues["services"].adds == 2
    assert all_ips(core, names) == before
    ports = (get_service(core, "svc-01") or {})["status"]["loadBalancer"]["ingress"][0]["ports"]
    assert [p["port"] for p in ports] == [81]
    with transaction(sessions) as s:
        row = s.query(Allocation).filter_by(service_name="svc-01", active=True).one()
        assert row.ports == [["TCP", 81]]
    assert {n: get_service(core, n)["metadata"]["resourceVersion"] for n in names[2:]} == untouched  # type: ignore[index]


def test_adopts_status_before_allocating_anything(
    core: Any, db: sessionmaker[Session], start_controller: StartController
) -> None:
    """The database lost its rows (restore from an old backup): the Service that shows
    127.0.13.1 keeps it, although an older pending Service would get that address first."""
    make_pool(db, "small", "127.0.13.1-127.0.13.5")
    create_service(core, "pending-older")
    time.sleep(1.1)  # creationTimestamp has one-second resolution
    create_service(core, "shown")
    core.patch_namespaced_service_status(
        "shown",
        NAMESPACE,
        {"status": {"loadBalancer": {"ingress": [{"ip": "127.0.13.1", "ipMode": "Proxy"}]}}},
        _content_type="application/merge-patch+json",
        _preload_content=False,
    )

    start_controller(db)

    assert wait_until(lambda: ip_of(core, "pending-older"))
    assert ip_of(core, "shown") == "127.0.13.1"
    assert ip_of(core, "pending-older") != "127.0.13.1"
    assert ledger(db, "shown") == [("adopted", "127.0.13.1")]


def test_metallb_annotated_service_adopted_without_change(
    core: Any, db: sessionmaker[Session], start_controller: StartController
) -> None:
    make_pool(db, "migrated", "127.0.14.0/28")
    create_service(
        core,
        "legacy",
        annotations={
            "metallb.universe.tf/loadBalancerIPs": "127.0.14.9",
            "metallb.universe.tf/allow-shared-ip": "legacy-key",
        },
    )
    core.patch_namespaced_service_status(
        "legacy",
        NAMESPACE,
        {"status": {"loadBalancer": {"ingress": [{"ip": "127.0.14.9"}]}}},
        _content_type="application/merge-patch+json",
        _preload_content=False,
    )
    # A Service created at the same moment must not be handed the migrated address.
    create_service(core, "newcomer")

    start_controller(db)

    def converged() -> bool:
        svc = get_service(core, "legacy") or {}
        entries = svc.get("status", {}).get("loadBalancer", {}).get("ingress") or []
        return bool(entries) and entries[0].get("ipMode") == "Proxy"

    assert wait_until(converged)
    assert ip_of(core, "legacy") == "127.0.14.9"
    assert wait_until(lambda: ip_of(core, "newcomer")) != "127.0.14.9"
    assert ledger(db, "legacy") == [("adopted", "127.0.14.9")]
    with transaction(db) as s:
        row = s.query(Allocation).filter_by(service_name="legacy", active=True).one()
        assert row.sharing_key == "legacy-key"


def test_two_replicas_one_writer_and_failover_within_the_lease(
    core: Any, sessions: sessionmaker[Session], start_controller: StartController
) -> None:
    make_pool(sessions, "ha", "127.0.15.1-127.0.15.50")
    leader = start_controller(sessions)
    standby = start_controller(sessions, wait_active=False)
    time.sleep(1.0)  # several campaign rounds: the standby must stay standby
    assert leader.is_leader() and not standby.is_leader()

    create_service(core, "before")
    assert wait_until(lambda: ip_of(core, "before"))

    def instances(name: str) -> set[str]:
        return {e.get("reportingInstance") for e in events_for(core, name)}

    assert wait_until(lambda: instances("before")) == {leader.identity}
    assert standby.queues["services"].adds == 0

    leader.stop(release_lease=False)  # dies without handing over the Lease
    stopped_at = time.monotonic()
    create_service(core, "after")

    assert wait_until(lambda: ip_of(core, "after"), timeout=15)
    failover = time.monotonic() - stopped_at
    assert standby.is_leader()
    assert failover < leader.settings.lease_duration_seconds + 3
    assert ip_of(core, "before") == db_ips(sessions, "before")[0]
    assert wait_until(lambda: instances("after")) == {standby.identity}


def run_controller_process(kubeconfig: Path, db_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LBP_KUBECONFIG": str(kubeconfig),
        "LBP_DATABASE_URL": db_url,
        "LBP_LEASE_NAMESPACE": "lbp-system",
        "LBP_LEASE_DURATION_SECONDS": "3",
        "LBP_RENEW_DEADLINE_SECONDS": "2",
        "LBP_RETRY_PERIOD_SECONDS": "0.3",
        "LBP_RECONCILE_BACKOFF_MAX_SECONDS": "1",
        "LBP_LOG_LEVEL": "INFO",
        # Any free port: the default 127.0.0.1:9101 may be taken by another process here.
        "LBP_CONTROLLER_METRICS_LISTEN": "127.0.0.1:0",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "lbprovider", "controller"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    proc.wait(timeout=15)


def test_kill_9_mid_reconcile_then_restart_converges_without_leaks(
    core: Any, sessions: sessionmaker[Session], kubeconfig: Path, tmp_path: Path
) -> None:
    make_pool(sessions, "crash", "127.0.16.1-127.0.16.250")
    names = [f"svc-{i:03d}" for i in range(80)]
    for name in names:
        create_service(core, name)
    url = sessions.kw["bind"].url.render_as_string(hide_password=False)
    log = tmp_path / "controller.log"

    first = run_controller_process(kubeconfig, url, log)
    try:
        assert wait_until(lambda: any(all_ips(core, names[:10]).values()), timeout=30), (
            log.read_text()
        )
        stop_process(first, signal.SIGKILL)  # mid-way: some Services have an IP, most not
        partial = sum(1 for ip in all_ips(core, names).values() if ip)
    finally:
        stop_process(first, signal.SIGKILL)

    second = run_controller_process(kubeconfig, url, log)
    try:
        assert wait_until(lambda: all(all_ips(core, names).values()), timeout=60), log.read_text()
    finally:
        stop_process(second)

    shown = all_ips(core, names)
    rows = active_rows(sessions)
    assert partial < len(names)
    assert sorted((n, ip) for _, n, ip in rows) == sorted(shown.items())  # type: ignore[arg-type]
    assert len(set(shown.values())) == len(names)
    assert sorted(lease_ips(sessions)) == sorted(shown.values())  # type: ignore[type-var]
    actions = ledger(sessions)
    assert [a for a, _ in actions] == ["allocated"] * len(names)


def test_an_ip_in_status_that_cannot_be_adopted_is_left_as_it_is(
    core: Any, db: sessionmaker[Session], start_controller: StartController
) -> None:
    """A Service that shows an IP in no pool keeps showing it, with the reason, and gets no
    other address: a restart (or a migration) never silently changes an IP."""
    make_pool(db, "other", "127.0.15.0/28")
    create_service(core, "foreign")
    core.patch_namespaced_service_status(
        "foreign",
        NAMESPACE,
        {"status": {"loadBalancer": {"ingress": [{"ip": "127.0.99.9"}]}}},
        _content_type="application/merge-patch+json",
        _preload_content=False,
    )
    start_controller(db)

    def failed() -> bool:
        svc = get_service(core, "foreign") or {}
        conds = {c["type"]: c for c in svc.get("status", {}).get("conditions") or []}
        cond = conds.get("lbprovider.io/IPAllocated")
        return cond is not None and cond["reason"] == "NoPool"

    assert wait_until(failed)
    assert ip_of(core, "foreign") == "127.0.99.9"
    assert db_ips(db, "foreign") == []
    assert any("cannot be recorded" in e["message"] for e in events_for(core, "foreign"))
