"""LoadBalancer Service stories through the lab API server and a real database."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import watch
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.session import transaction
from lbprovider.services.records import get_record

from .conftest import StartController
from .helpers import (
    CLASS,
    FINALIZER,
    NAMESPACE,
    condition,
    create_service,
    db_ips,
    delete_service,
    event_reasons,
    get_service,
    ip_of,
    ledger,
    make_pool,
    patch_service,
    wait_until,
)


def test_create_gets_ip_in_status_and_db(
    core: Any, db: sessionmaker[Session], pool: str, start_controller: StartController
) -> None:
    start_controller(db)
    create_service(core, "web", ports=((80, "TCP"), (443, "TCP")))

    ip = wait_until(lambda: ip_of(core, "web"))

    assert ip and ip.startswith("127.0.10.")
    svc = get_service(core, "web")
    assert svc is not None
    assert svc["status"]["loadBalancer"]["ingress"] == [
        {
            "ip": ip,
            "ipMode": "Proxy",
            "ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}],
        }
    ]
    assert FINALIZER in svc["metadata"]["finalizers"]
    allocated = condition(svc, "lbprovider.io/IPAllocated")
    assert allocated and allocated["status"] == "True" and allocated["reason"] == "Satisfied"
    serving = condition(svc, "lbprovider.io/Serving")
    assert serving and serving["status"] == "False" and serving["reason"] == "NotYetServed"
    assert db_ips(db, "web") == [ip]
    assert ledger(db, "web") == [("allocated", ip)]
    assert wait_until(lambda: "IPAllocated" in event_reasons(core, "web"))


def stored_versions(core: Any, rv: str) -> list[tuple[str, dict[str, Any]]]:
    """Every (event type, raw Service) the namespace stored since resourceVersion ``rv``."""
    stream = watch.Watch().stream(
        core.list_namespaced_service,
        NAMESPACE,
        resource_version=rv,
        timeout_seconds=2,
        _preload_content=False,
    )
    return [(event["type"], event["raw_object"]) for event in stream]


def test_no_version_of_a_new_service_shows_an_ip_without_the_finalizer(
    core: Any, db: sessionmaker[Session], pool: str, start_controller: StartController
) -> None:
    """The finalizer goes on in the status PATCH that shows the IP, after the allocating
    transaction committed: every stored version with an IP carries the finalizer, and the IP
    it shows is already in the database."""
    start_controller(db)
    rv = core.list_namespaced_service(NAMESPACE).metadata.resource_version
    names = [f"order-{i}" for i in range(5)]
    for name in names:
        create_service(core, name)
    assert wait_until(lambda: all(ip_of(core, n) for n in names))
    versions = [raw for _, raw in stored_versions(core, rv)]
    shown = [v for v in versions if (v.get("status") or {}).get("loadBalancer", {}).get("ingress")]
    assert {v["metadata"]["name"] for v in shown} == set(names)
    assert all(FINALIZER in (v["metadata"].get("finalizers") or []) for v in shown)
    for name in names:
        assert db_ips(db, name) == [ip_of(core, name)]


def test_a_new_service_gets_its_finalizer_and_ip_in_one_write(
    core: Any, db: sessionmaker[Session], pool: str, start_controller: StartController
) -> None:
    """One PATCH to services/status carries the finalizer and the first status (the Service
    status strategy keeps metadata): no version has the finalizer without the IP, and the
    controller's writes are one per Service."""
    ctl = start_controller(db)
    rv = core.list_namespaced_service(NAMESPACE).metadata.resource_version
    names = [f"one-{i}" for i in range(3)]
    for name in names:
        create_service(core, name)
    assert wait_until(lambda: all(ip_of(core, n) for n in names))
    assert wait_until(lambda: ctl.idle())
    versions = [raw for kind, raw in stored_versions(core, rv) if kind == "MODIFIED"]
    for name in names:
        mine = [v for v in versions if v["metadata"]["name"] == name]
        assert len(mine) == 1
        assert FINALIZER in mine[0]["metadata"]["finalizers"]
        assert mine[0]["status"]["loadBalancer"]["ingress"]
    assert ctl.services.writes == len(names)


@pytest.mark.parametrize("lab_version", ["1.28", "1.30"])
def test_steady_state_writes_nothing(
    core: Any,
    db: sessionmaker[Session],
    pool: str,
    start_controller: StartController,
    lab_version: str,
) -> None:
    ctl = start_controller(db, resync_seconds=0.3)
    create_service(core, "web", ports=((80, "TCP"), (53, "UDP")))
    assert wait_until(lambda: ip_of(core, "web"))
    assert wait_until(lambda: ctl.idle())
    settled = get_service(core, "web")
    assert settled is not None
    resyncs_before = ctl.caches["services"].resyncs

    # Several resyncs later (each reconciles every Service), nothing was written.
    assert wait_until(lambda: ctl.caches["services"].resyncs >= resyncs_before + 4, timeout=5)
    assert wait_until(lambda: ctl.idle())
    after = get_service(core, "web")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == settled["metadata"]["resourceVersion"]
    entry = after["status"]["loadBalancer"]["ingress"][0]
    assert ("ipMode" in entry) is (lab_version == "1.30")
    assert entry["ports"][1] == {
        "port": 53,
        "protocol": "UDP",
        "error": "lbprovider.io/UnsupportedProtocol",
    }
    assert event_reasons(core, "web").count("UnsupportedProtocol") == 1


def test_a_resync_reconciles_only_the_service_whose_status_drifted(
    core: Any, db: sessionmaker[Session], pool: str, start_controller: StartController
) -> None:
    """The resync checks every Service in bulk: a status someone else cleared (an event our
    fingerprint ignores) gets its IP back, and the converged Services are not queued."""
    # No serving poll: the resync alone must find the drift.
    ctl = start_controller(db, resync_seconds=0.5, serving_poll_seconds=300)
    names = [f"calm-{i}" for i in range(8)]
    for name in names:
        create_service(core, name)
    assert wait_until(lambda: all(ip_of(core, n) for n in names))
    assert wait_until(ctl.idle)
    before = {n: ip_of(core, n) for n in names}
    adds = ctl.queues["services"].adds
    resyncs = ctl.caches["services"].resyncs
    core.patch_namespaced_service_status(
        "calm-3",
        NAMESPACE,
        {"status": {"loadBalancer": {"ingress": None}}},
        _content_type="application/merge-patch+json",
        _preload_content=False,
    )
    assert not ip_of(core, "calm-3")

    assert wait_until(lambda: ip_of(core, "calm-3") == before["calm-3"], timeout=5)
    assert wait_until(lambda: ctl.caches["services"].resyncs >= resyncs + 3, timeout=5)
    assert wait_until(ctl.idle)
    assert {n: ip_of(core, n) for n in names} == before
    assert ctl.queues["services"].adds - adds == 1


def test_service_of_another_class_is_never_written(
    core: Any, db: sessionmaker[Session], pool: str, start_controller: StartController
) -> None:
    ctl = start_controller(db, resync_seconds=0.3)
    other = create_service(core, "theirs", lb_class="example.com/other")
    create_service(core, "ours", lb_class=CLASS)
    assert wait_until(lambda: ip_of(core, "ours"))
    resyncs = ctl.caches["services"].resyncs
    assert wait_until(lambda: ctl.caches["services"].resyncs >= resyncs + 2, timeout=5)

    theirs = get_service(core, "theirs")
    assert theirs is not None
    assert theirs["metadata"]["resourceVersion"] == other["metadata"]["resourceVersion"]
    assert not theirs["metadata"].get("finalizers")
    assert event_reasons(core, "theirs") == []
    assert db_ips(db, "theirs") == []


def test_class_less_service_ignored_when_not_default(
    core: Any, db: sessionmaker[Session], pool: str, start_controller: StartController
) -> None:
    start_controller(db, handle_default_class=False)
    created = create_service(core, "plain")
    create_service(core, "ours", lb_class=CLASS)
    assert wait_until(lambda: ip_of(core, "ours"))

    plain = get_service(core, "plain")
    assert plain is not None
    assert plain["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_sharing_by_key(
    core: Any, db: sessionmaker[Session], pool: str, start_controller: StartController
) -> None:
    start_controller(db)
    key = {"lbprovider.io/sharing-key": "shop"}
    create_service(core, "http", ports=((80, "TCP"),), annotations=key)
    first = wait_until(lambda: ip_of(core, "http"))
    create_service(core, "https", ports=((443, "TCP"),), annotations=key)
    second = wait_until(lambda: ip_of(core, "https"))
    create_service(core, "clash", ports=((80, "TCP"),), annotations=key)
    create_service(core, "nokey", ports=((8080, "TCP"),))

    assert first == second
    assert wait_until(lambda: ip_of(core, "clash"))
    assert ip_of(core, "clash") != first  # port 80 is taken on the shared address
    assert wait_until(lambda: ip_of(core, "nokey")) not in (first, None)
    assert sorted(db_ips(db, "http") + db_ips(db, "https")) == [first, first]


def test_requested_ip_taken_reports_already_allocated(
    core: Any, db: sessionmaker[Session], pool: str, start_controller: StartController
) -> None:
    start_controller(db)
    create_service(core, "first", annotations={"lbprovider.io/ips": "127.0.10.7"})
    assert wait_until(lambda: ip_of(core, "first")) == "127.0.10.7"
    create_service(core, "second", annotations={"lbprovider.io/ips": "127.0.10.7"})

    def failed() -> dict[str, Any] | None:
        cond = condition(get_service(core, "second"), "lbprovider.io/IPAllocated")
        return cond if cond and cond["status"] == "False" else None

    cond = wait_until(failed)
    assert cond["reason"] == "AlreadyAllocated"
    assert "127.0.10.7" in cond["message"]
    assert ip_of(core, "second") is None
    assert wait_until(lambda: "AllocationFailed" in event_reasons(core, "second"))
    assert ip_of(core, "first") == "127.0.10.7"


def test_pool_exhausted_then_satisfied_after_a_delete(
    core: Any, db: sessionmaker[Session], start_controller: StartController
) -> None:
    make_pool(db, "tiny", "127.0.11.1-127.0.11.2")
    start_controller(db, resync_seconds=300)
    create_service(core, "a")
    assert wait_until(lambda: ip_of(core, "a"))
    create_service(core, "b")
    assert wait_until(lambda: ip_of(core, "b"))
    create_service(core, "c")

    def reason() -> str | None:
        cond = condition(get_service(core, "c"), "lbprovider.io/IPAllocated")
        return cond["reason"] if cond else None

    assert wait_until(lambda: reason() == "OutOfIPs")
    freed = ip_of(core, "a")
    delete_service(core, "a")

    # No resync for 300 s: the freed address reaches the pending Service at once.
    assert wait_until(lambda: ip_of(core, "c"), timeout=5) == freed
    assert reason() == "Satisfied"
    assert wait_until(lambda: get_service(core, "a") is None)
    assert ("released", freed) in ledger(db, "a")


def test_deletion_releases_clears_and_drops_finalizer(
    core: Any, db: sessionmaker[Session], pool: str, start_controller: StartController
) -> None:
    start_controller(db)
    create_service(core, "web")
    ip = wait_until(lambda: ip_of(core, "web"))

    delete_service(core, "web")

    assert wait_until(lambda: get_service(core, "web") is None)
    assert db_ips(db, "web") == []
    assert ledger(db, "web") == [("allocated", ip), ("released", ip)]
    with transaction(db) as s:
        assert get_record(s, "lbp-test", "web") is None


def test_type_change_releases(
    core: Any, db: sessionmaker[Session], pool: str, start_controller: StartController
) -> None:
    start_controller(db)
    create_service(core, "web")
    ip = wait_until(lambda: ip_of(core, "web"))

    patch_service(core, "web", {"spec": {"type": "ClusterIP"}})

    def cleaned() -> bool:
        svc = get_service(core, "web")
        return bool(svc) and not (svc or {})["metadata"].get("finalizers")

    assert wait_until(cleaned)
    svc = get_service(core, "web")
    assert svc is not None
    assert not svc["status"].get("loadBalancer", {}).get("ingress")
    assert condition(svc, "lbprovider.io/IPAllocated") is None
    assert db_ips(db, "web") == []
    assert ledger(db, "web")[-1] == ("released", ip)
    assert wait_until(lambda: "IPReleased" in event_reasons(core, "web"))


def test_invalid_annotations_become_condition_and_event_without_stalling(
    core: Any, db: sessionmaker[Session], pool: str, start_controller: StartController
) -> None:
    start_controller(db)
    create_service(
        core,
        "bad",
        annotations={"lbprovider.io/ips": "not-an-ip", "lbprovider.io/timeout-client": "soon"},
    )
    create_service(core, "unknown-pool", annotations={"lbprovider.io/pool": "nope"})
    create_service(core, "good")

    assert wait_until(lambda: ip_of(core, "good"))

    def cond(name: str) -> dict[str, Any] | None:
        return condition(get_service(core, name), "lbprovider.io/IPAllocated")

    bad = wait_until(lambda: cond("bad"))
    assert bad["reason"] == "InvalidRequest"
    assert "not-an-ip" in bad["message"] and "timeout-client" in bad["message"]
    assert wait_until(lambda: "AnnotationInvalid" in event_reasons(core, "bad"))
    assert ip_of(core, "bad") is None
    unknown = wait_until(lambda: cond("unknown-pool"))
    assert unknown["reason"] == "NoPool" and "'nope'" in unknown["message"]
    assert wait_until(lambda: "AllocationFailed" in event_reasons(core, "unknown-pool"))

    # Fixing the annotation is picked up (annotation changes trigger a reconcile).
    patch_service(
        core,
        "bad",
        {
            "metadata": {
                "annotations": {
                    "lbprovider.io/ips": "127.0.10.9",
                    "lbprovider.io/timeout-client": "30s",
                }
            }
        },
    )
    assert wait_until(lambda: ip_of(core, "bad")) == "127.0.10.9"
    with transaction(db) as s:
        record = get_record(s, "lbp-test", "bad")
        assert record is not None and record.options["timeout_client_ms"] == 30_000


def test_label_change_ignored_but_port_change_mirrored(
    core: Any, db: sessionmaker[Session], pool: str, start_controller: StartController
) -> None:
    ctl = start_controller(db)
    create_service(core, "web")
    assert wait_until(lambda: ip_of(core, "web"))
    assert wait_until(ctl.idle)
    adds = ctl.queues["services"].adds

    patch_service(core, "web", {"metadata": {"labels": {"tier": "front"}}})
    patch_service(core, "web", {"metadata": {"labels": {"tier": "back"}}})
    assert wait_until(
        lambda: (get_service(core, "web") or {})["metadata"]["labels"].get("tier") == "back"
    )
    assert wait_until(ctl.idle)
    assert ctl.queues["services"].adds == adds

    patch_service(
        core, "web", {"spec": {"ports": [{"name": "p80-tcp", "port": 8080, "protocol": "TCP"}]}}
    )

    def ports() -> list[int]:
        svc = get_service(core, "web") or {}
        ingress = svc["status"]["loadBalancer"]["ingress"]
        return [p["port"] for p in ingress[0]["ports"]]

    assert wait_until(lambda: ports() == [8080])
    with transaction(db) as s:
        record = get_record(s, "lbp-test", "web")
        assert record is not None and [p["port"] for p in record.ports] == [8080]
        assert record.ports[0]["nodePort"] > 0


def test_serving_condition_follows_the_fleet_report(
    core: Any, db: sessionmaker[Session], pool: str, start_controller: StartController
) -> None:
    start_controller(db)
    create_service(core, "web")
    assert wait_until(lambda: ip_of(core, "web"))

    with transaction(db) as s:
        record = get_record(s, "lbp-test", "web")
        assert record is not None
        record.serving = True
        record.serving_message = "served by 2 of 2 hosts"

    def serving() -> dict[str, Any] | None:
        cond = condition(get_service(core, "web"), "lbprovider.io/Serving")
        return cond if cond and cond["status"] == "True" else None

    cond = wait_until(serving)
    assert cond["message"] == "served by 2 of 2 hosts"
