"""Every kind the lab serves, read and written through its own API group."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import pytest
from kubernetes import client


def _post(url: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    """POST what the official client refuses to send, to see the server's own answer."""
    request = urllib.request.Request(
        url, json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_default_namespaces_exist(core: client.CoreV1Api) -> None:
    names = {n.metadata.name for n in core.list_namespace().items}
    assert {"default", "kube-system"} <= names
    assert core.read_namespace("default").status.phase == "Active"


def test_nodes_keep_status_on_create_and_use_the_status_subresource(core: client.CoreV1Api) -> None:
    node = core.create_node(
        {
            "metadata": {"name": "n1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.11"}]},
        }
    )
    assert node.status.addresses[0].address == "127.0.0.11"
    core.patch_node_status("n1", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    core.patch_node("n1", {"spec": {"unschedulable": True}})
    node = core.read_node("n1")
    assert node.status.conditions[0].status == "True" and node.spec.unschedulable is True
    found = core.list_node(field_selector="spec.unschedulable=true")
    assert [n.metadata.name for n in found.items] == ["n1"]


def test_endpoint_slices(api_client: client.ApiClient) -> None:
    discovery = client.DiscoveryV1Api(api_client)
    discovery.create_namespaced_endpoint_slice(
        "default",
        {
            "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.20"]}],
            "ports": [{"port": 8080, "protocol": "TCP"}],
        },
    )
    found = discovery.list_namespaced_endpoint_slice(
        "default", label_selector="kubernetes.io/service-name=web"
    )
    assert found.items[0].endpoints[0].addresses == ["127.0.0.20"]
    code, status = _post(
        api_client.configuration.host
        + "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
        {"metadata": {"name": "x"}, "endpoints": []},
    )
    assert (code, status["reason"]) == (422, "Invalid")


def test_core_and_events_k8s_io_events_are_the_same_objects(
    api_client: client.ApiClient, core: client.CoreV1Api
) -> None:
    events = client.EventsV1Api(api_client)
    events.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "web.1"},
            "eventTime": "2024-01-01T00:00:00.000000Z",
            "reportingController": "lbprovider.io/controller",
            "reportingInstance": "c-1",
            "action": "Allocate",
            "reason": "IPAllocated",
            "note": "got 127.0.0.9",
            "type": "Normal",
            "regarding": {"kind": "Service", "namespace": "default", "name": "web"},
        },
    )
    core_event = core.read_namespaced_event("web.1", "default")
    assert (core_event.message, core_event.involved_object.name) == ("got 127.0.0.9", "web")
    core.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "web.2"},
            "reason": "IPReleased",
            "message": "bye",
            "eventTime": "2024-01-01T00:00:01.000000Z",
            "action": "Release",
            "reportingComponent": "lbprovider.io/controller",
            "reportingInstance": "c-1",
            "involvedObject": {"kind": "Service", "namespace": "default", "name": "web"},
        },
    )
    listed = events.list_namespaced_event("default", field_selector="reason=IPReleased")
    assert [(e.note, e.regarding.name) for e in listed.items] == [("bye", "web")]


def test_events_k8s_io_requires_its_fields(api_client: client.ApiClient) -> None:
    code, status = _post(
        api_client.configuration.host + "/apis/events.k8s.io/v1/namespaces/default/events",
        {"metadata": {"name": "e"}, "reason": "X"},
    )
    assert (code, status["reason"]) == (422, "Invalid")
    causes = {c["field"] for c in status["details"]["causes"]}  # type: ignore[index]
    assert {"eventTime", "reportingController"} <= causes


def test_leases_use_optimistic_concurrency(api_client: client.ApiClient) -> None:
    coordination = client.CoordinationV1Api(api_client)
    lease = coordination.create_namespaced_lease(
        "kube-system",
        {
            "metadata": {"name": "lbprovider"},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
        },
    )
    lease.spec.holder_identity = "b"
    coordination.replace_namespaced_lease("lbprovider", "kube-system", lease)
    lease.spec.holder_identity = "c"  # still carries the old resourceVersion
    with pytest.raises(client.ApiException) as excinfo:
        coordination.replace_namespaced_lease("lbprovider", "kube-system", lease)
    assert excinfo.value.status == 409


def test_ingress_status_and_ingress_classes(api_client: client.ApiClient) -> None:
    net = client.NetworkingV1Api(api_client)
    net.create_ingress_class(
        {"metadata": {"name": "haproxy"}, "spec": {"controller": "lbprovider.io/ingress"}}
    )
    net.create_namespaced_ingress(
        "default",
        {
            "metadata": {"name": "web"},
            "spec": {"ingressClassName": "haproxy", "rules": [{"host": "web.example"}]},
        },
    )
    net.patch_namespaced_ingress_status(
        "web", "default", {"status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.9"}]}}}
    )
    ingress = net.read_namespaced_ingress("web", "default")
    assert ingress.status.load_balancer.ingress[0].ip == "127.0.0.9"
    assert [c.metadata.name for c in net.list_ingress_class().items] == ["haproxy"]


def test_secrets_fold_string_data_into_data(core: client.CoreV1Api) -> None:
    secret = core.create_namespaced_secret(
        "default", {"metadata": {"name": "token"}, "stringData": {"token": "s3cret"}}
    )
    assert secret.type == "Opaque" and secret.string_data is None
    assert base64.b64decode(secret.data["token"]) == b"s3cret"
