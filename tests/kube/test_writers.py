"""Writers through the lab API server: status subresource, finalizers, Events, leader guard."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client as k8s_client

from lbprovider.kube.errors import KubeConflict, KubeNotFound, NotLeader
from lbprovider.kube.writers import (
    KubeEventRecorder,
    KubeStatusWriter,
    find_condition,
    set_condition,
)

from .conftest import NAMESPACE, get_service, make_service

FINALIZER = "service.kubernetes.io/load-balancer-cleanup"
INGRESS = [{"ip": "127.0.10.1", "ipMode": "Proxy", "ports": [{"port": 80, "protocol": "TCP"}]}]


def leader() -> bool:
    return True


def test_status_patch_is_visible_on_get_and_spec_is_untouched(core: Any, api: Any) -> None:
    created = make_service(core, "web")
    writer = KubeStatusWriter(api, is_leader=leader)

    returned = writer.set_load_balancer_ingress(NAMESPACE, "web", INGRESS)

    stored = get_service(core, "web")
    assert stored["status"]["loadBalancer"]["ingress"] == INGRESS
    assert returned["status"]["loadBalancer"]["ingress"] == INGRESS
    assert stored["spec"] == created["spec"]


def test_clearing_ingress_removes_it(core: Any, api: Any) -> None:
    make_service(core, "web")
    writer = KubeStatusWriter(api, is_leader=leader)
    writer.set_load_balancer_ingress(NAMESPACE, "web", INGRESS)

    writer.set_load_balancer_ingress(NAMESPACE, "web", [])

    assert not get_service(core, "web")["status"].get("loadBalancer", {}).get("ingress")


def test_conditions_written_and_transition_time_kept_when_status_unchanged(
    core: Any, api: Any
) -> None:
    make_service(core, "web")
    writer = KubeStatusWriter(api, is_leader=leader)
    first = set_condition(
        [], type="lbprovider.io/IPAllocated", status="False", reason="OutOfIPs", message="pool full"
    )
    writer.set_service_conditions(NAMESPACE, "web", first)
    stored = get_service(core, "web")
    cond = find_condition(stored, "lbprovider.io/IPAllocated")
    assert cond is not None and cond["reason"] == "OutOfIPs" and cond["status"] == "False"

    again = set_condition(
        stored["status"]["conditions"],
        type="lbprovider.io/IPAllocated",
        status="False",
        reason="OutOfIPs",
        message="pool full",
    )
    assert again == stored["status"]["conditions"]  # steady state: nothing to write
    flipped = set_condition(
        again, type="lbprovider.io/IPAllocated", status="True", reason="Satisfied", message="ok"
    )
    assert flipped[0]["reason"] == "Satisfied" and len(flipped) == 1


def test_finalizer_add_then_remove_lets_a_deleted_service_go(core: Any, api: Any) -> None:
    svc = make_service(core, "web")
    writer = KubeStatusWriter(api, is_leader=leader)

    svc = writer.add_finalizer(svc, FINALIZER)
    assert get_service(core, "web")["metadata"]["finalizers"] == [FINALIZER]
    assert writer.add_finalizer(svc, FINALIZER) == svc  # already there: no write

    core.delete_namespaced_service("web", NAMESPACE, _preload_content=False)
    marked = get_service(core, "web")
    assert marked["metadata"].get("deletionTimestamp")

    writer.remove_finalizer(marked, FINALIZER)
    with pytest.raises(k8s_client.ApiException) as gone:
        get_service(core, "web")
    assert gone.value.status == 404


def test_finalizer_write_from_a_stale_object_is_a_conflict(core: Any, api: Any) -> None:
    svc = make_service(core, "web")
    writer = KubeStatusWriter(api, is_leader=leader)
    writer.add_finalizer(svc, "example.com/other")  # someone else wrote meanwhile

    with pytest.raises(KubeConflict) as raised:
        writer.add_finalizer(svc, FINALIZER)

    assert isinstance(raised.value.__cause__, k8s_client.ApiException)
    assert get_service(core, "web")["metadata"]["finalizers"] == ["example.com/other"]


def test_status_of_a_missing_service_is_not_found(api: Any) -> None:
    writer = KubeStatusWriter(api, is_leader=leader)
    with pytest.raises(KubeNotFound) as raised:
        writer.set_load_balancer_ingress(NAMESPACE, "nope", INGRESS)
    assert raised.value.status == 404
    assert isinstance(raised.value.__cause__, k8s_client.ApiException)


def test_a_non_leader_writes_nothing(core: Any, api: Any) -> None:
    svc = make_service(core, "web")
    writer = KubeStatusWriter(api, is_leader=lambda: False)
    recorder = KubeEventRecorder(api, is_leader=lambda: False)

    with pytest.raises(NotLeader):
        writer.set_load_balancer_ingress(NAMESPACE, "web", INGRESS)
    with pytest.raises(NotLeader):
        writer.add_finalizer(svc, FINALIZER)
    with pytest.raises(NotLeader):
        recorder.record(svc, "Normal", "IPAllocated", "x")

    stored = get_service(core, "web")
    assert not stored["status"].get("loadBalancer", {}).get("ingress")
    assert not stored["metadata"].get("finalizers")
    assert events_about(core, "web") == []


def events_about(core: Any, name: str) -> list[dict[str, Any]]:
    response = core.list_namespaced_event(NAMESPACE, _preload_content=False)
    items = json.loads(response.data)["items"]
    return [e for e in items if e["involvedObject"]["name"] == name]


def test_repeated_event_bumps_count_instead_of_piling_up(core: Any, api: Any) -> None:
    svc = make_service(core, "web")
    recorder = KubeEventRecorder(api, is_leader=leader)

    for _ in range(3):
        recorder.record(svc, "Warning", "AllocationFailed", "OutOfIPs: pool default is full")
    recorder.record(svc, "Normal", "IPAllocated", "127.0.10.1 from pool default")

    events = sorted(events_about(core, "web"), key=lambda e: e["reason"])
    assert [(e["reason"], e["count"], e["type"]) for e in events] == [
        ("AllocationFailed", 3, "Warning"),
        ("IPAllocated", 1, "Normal"),
    ]
    failed = events[0]
    assert failed["involvedObject"]["kind"] == "Service"
    assert failed["involvedObject"]["uid"] == svc["metadata"]["uid"]
    assert failed["message"] == "OutOfIPs: pool default is full"
    assert failed["lastTimestamp"] >= failed["firstTimestamp"]


def test_event_outside_the_window_is_a_new_event(core: Any, api: Any) -> None:
    svc = make_service(core, "web")
    recorder = KubeEventRecorder(api, is_leader=leader, window_seconds=0.0)

    recorder.record(svc, "Normal", "IPReleased", "127.0.10.1 released")
    recorder.record(svc, "Normal", "IPReleased", "127.0.10.1 released")

    assert [e["count"] for e in events_about(core, "web")] == [1, 1]


def test_status_patch_with_a_stale_resource_version_is_refused(core: Any, api: Any) -> None:
    svc = make_service(core, "web")
    writer = KubeStatusWriter(api, is_leader=leader)
    writer.set_load_balancer_ingress(NAMESPACE, "web", INGRESS)  # the object moved on

    with pytest.raises(KubeConflict):
        writer.patch_service_status(
            NAMESPACE,
            "web",
            {"loadBalancer": {}},
            resource_version=svc["metadata"]["resourceVersion"],
        )
    assert get_service(core, "web")["status"]["loadBalancer"]["ingress"] == INGRESS


def test_status_patch_can_add_a_finalizer_in_the_same_version(core: Any, api: Any) -> None:
    svc = make_service(core, "web")
    writer = KubeStatusWriter(api, is_leader=leader)

    returned = writer.patch_service_status(
        NAMESPACE,
        "web",
        {"loadBalancer": {"ingress": INGRESS}},
        resource_version=svc["metadata"]["resourceVersion"],
        finalizers=[FINALIZER],
    )

    stored = get_service(core, "web")
    assert stored["metadata"]["finalizers"] == [FINALIZER]
    assert stored["status"]["loadBalancer"]["ingress"] == INGRESS
    assert returned["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
    assert int(stored["metadata"]["resourceVersion"]) == int(svc["metadata"]["resourceVersion"]) + 1
