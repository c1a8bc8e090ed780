"""Object semantics: selectors, optimistic concurrency, status subresource, patches,
finalizers, generation, errors — each through HTTP with the official client."""

from __future__ import annotations

import json

import pytest
from kubernetes import client

from tests.lab.conftest import lb_service


def _error(excinfo: pytest.ExceptionInfo[client.ApiException]) -> dict[str, object]:
    body: dict[str, object] = json.loads(excinfo.value.body)
    return body


def _svc(name: str, **labels: str) -> dict[str, object]:
    return {"metadata": {"name": name, "labels": labels}, "spec": {"ports": [{"port": 80}]}}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("tier=front", ["a"]),
        ("tier==front", ["a"]),
        ("tier!=front", ["b", "c"]),
        ("tier in (front,back)", ["a", "b"]),
        ("tier notin (front)", ["b", "c"]),
        ("tier", ["a", "b"]),
        ("!tier", ["c"]),
        ("tier,app=web", ["a"]),
    ],
)
def test_label_selectors(core: client.CoreV1Api, selector: str, expected: list[str]) -> None:
    core.create_namespaced_service("default", _svc("a", tier="front", app="web"))
    core.create_namespaced_service("default", _svc("b", tier="back"))
    core.create_namespaced_service("default", _svc("c"))
    found = core.list_namespaced_service("default", label_selector=selector)
    assert (
        sorted(s.metadata.name for s in found.items if s.metadata.name != "kubernetes") == expected
    )


def test_field_selectors_name_namespace_and_service_type(core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "team"}})
    core.create_namespaced_service("team", lb_service("lb"))
    core.create_namespaced_service("team", _svc("plain"))
    by_type = core.list_service_for_all_namespaces(field_selector="spec.type=LoadBalancer")
    assert [s.metadata.name for s in by_type.items] == ["lb"]
    by_name = core.list_service_for_all_namespaces(
        field_selector="metadata.name=plain,metadata.namespace=team"
    )
    assert [s.metadata.name for s in by_name.items] == ["plain"]
    not_lb = core.list_namespaced_service("team", field_selector="spec.type!=LoadBalancer")
    assert [s.metadata.name for s in not_lb.items] == ["plain"]


def test_unknown_field_selector_is_a_bad_request(core: client.CoreV1Api) -> None:
    with pytest.raises(client.ApiException) as excinfo:
        core.list_namespaced_service("default", field_selector="spec.color=red")
    assert excinfo.value.status == 400
    assert _error(excinfo)["reason"] == "BadRequest"


def test_stale_resource_version_update_is_a_conflict(core: client.CoreV1Api) -> None:
    stale = core.create_namespaced_service("default", _svc("web"))
    core.patch_namespaced_service("web", "default", {"metadata": {"labels": {"x": "1"}}})
    stale.metadata.labels = {"x": "2"}
    with pytest.raises(client.ApiException) as excinfo:
        core.replace_namespaced_service("web", "default", stale)
    assert excinfo.value.status == 409
    assert _error(excinfo)["reason"] == "Conflict"
    assert core.read_namespaced_service("web", "default").metadata.labels == {"x": "1"}


def test_update_with_current_resource_version_succeeds_and_bumps_it(core: client.CoreV1Api) -> None:
    current = core.create_namespaced_service("default", _svc("web"))
    current.metadata.labels = {"x": "2"}
    updated = core.replace_namespaced_service("web", "default", current)
    assert int(updated.metadata.resource_version) > int(current.metadata.resource_version)


def test_a_no_op_write_does_not_change_the_resource_version(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_service("default", _svc("web", a="b"))
    again = core.patch_namespaced_service("web", "default", {"metadata": {"labels": {"a": "b"}}})
    assert again.metadata.resource_version == created.metadata.resource_version


def test_main_resource_write_never_changes_status(core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", lb_service("web"))
    core.patch_namespaced_service(
        "web", "default", {"status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.9"}]}}}
    )
    assert core.read_namespaced_service("web", "default").status.load_balancer.ingress is None


def test_service_status_write_changes_status_and_metadata_but_never_spec(
    core: client.CoreV1Api,
) -> None:
    """kube-apiserver's Service status strategy resets only spec (PrepareForUpdate,
    GetResetFields): labels and finalizers sent to services/status are kept, in the same
    version as the status; system fields are not."""
    created = core.create_namespaced_service("default", lb_service("web"))
    written = core.patch_namespaced_service_status(
        "web",
        "default",
        {
            "metadata": {
                "labels": {"sneaky": "yes"},
                "finalizers": ["example.com/f"],
                "generation": 7,
            },
            "spec": {"type": "ClusterIP"},
            "status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.9", "ipMode": "Proxy"}]}},
        },
    )
    assert written.status.load_balancer.ingress[0].ip == "127.0.0.9"
    assert written.spec.type == "LoadBalancer"
    assert written.metadata.labels == {"sneaky": "yes"}
    assert written.metadata.finalizers == ["example.com/f"]
    assert written.metadata.uid == created.metadata.uid
    assert written.metadata.generation == created.metadata.generation


def test_status_write_of_a_deleting_service_cannot_add_finalizers(
    core: client.CoreV1Api,
) -> None:
    core.create_namespaced_service(
        "default",
        {**lb_service("web"), "metadata": {"name": "web", "finalizers": ["example.com/a"]}},
    )
    core.delete_namespaced_service("web", "default")
    with pytest.raises(client.ApiException) as excinfo:
        core.patch_namespaced_service_status(
            "web", "default", {"metadata": {"finalizers": ["example.com/a", "example.com/b"]}}
        )
    assert excinfo.value.status == 422


def test_created_objects_do_not_keep_status(core: client.CoreV1Api) -> None:
    body = lb_service("web")
    body["status"] = {"loadBalancer": {"ingress": [{"ip": "127.0.0.9"}]}}
    created = core.create_namespaced_service("default", body)
    assert created.status.load_balancer.ingress is None


def test_json_merge_patch(core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", _svc("web", a="1", b="2"))
    core.patch_namespaced_service(
        "web",
        "default",
        {"metadata": {"labels": {"a": None, "c": "3"}}, "spec": {"ports": [{"port": 8080}]}},
        _content_type="application/merge-patch+json",
    )
    svc = core.read_namespaced_service("web", "default")
    assert svc.metadata.labels == {"b": "2", "c": "3"}
    assert [p.port for p in svc.spec.ports] == [8080]  # merge patch replaces lists


def test_json_patch(core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", _svc("web", a="1"))
    core.patch_namespaced_service(
        "web",
        "default",
        [
            {"op": "test", "path": "/metadata/labels/a", "value": "1"},
            {"op": "add", "path": "/spec/ports/0/name", "value": "a"},
            {"op": "add", "path": "/spec/ports/-", "value": {"name": "b", "port": 443}},
            {"op": "replace", "path": "/metadata/labels/a", "value": "2"},
        ],
    )
    svc = core.read_namespaced_service("web", "default")
    assert [p.port for p in svc.spec.ports] == [80, 443]
    assert svc.metadata.labels == {"a": "2"}


def test_failed_json_patch_test_is_rejected_whole(core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", _svc("web", a="1"))
    with pytest.raises(client.ApiException) as excinfo:
        core.patch_namespaced_service(
            "web",
            "default",
            [
                {"op": "replace", "path": "/metadata/labels/a", "value": "2"},
                {"op": "test", "path": "/metadata/labels/a", "value": "1"},
            ],
        )
    assert excinfo.value.status == 422
    assert core.read_namespaced_service("web", "default").metadata.labels == {"a": "1"}


def test_strategic_merge_patch_merges_ports_by_port(core: client.CoreV1Api) -> None:
    core.create_namespaced_service(
        "default",
        {
            "metadata": {"name": "web"},
            "spec": {"ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]},
        },
    )
    core.patch_namespaced_service(
        "web",
        "default",
        {"spec": {"ports": [{"port": 443, "targetPort": 8443}, {"name": "admin", "port": 9000}]}},
    )
    ports = core.read_namespaced_service("web", "default").spec.ports
    assert [(p.name, p.port, p.target_port) for p in ports] == [
        ("http", 80, 80),
        ("https", 443, 8443),
        ("admin", 9000, 9000),
    ]


def test_strategic_merge_patch_merges_conditions_by_type(core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", lb_service("web"))

    def condition(kind: str, status: str) -> dict[str, str]:
        return {
            "type": kind,
            "status": status,
            "reason": "Test",
            "message": "",
            "lastTransitionTime": "2024-01-01T00:00:00Z",
        }

    core.patch_namespaced_service_status(
        "web",
        "default",
        {"status": {"conditions": [condition("lbprovider.io/IPAllocated", "False")]}},
    )
    core.patch_namespaced_service_status(
        "web", "default", {"status": {"conditions": [condition("lbprovider.io/Serving", "True")]}}
    )
    core.patch_namespaced_service_status(
        "web",
        "default",
        {"status": {"conditions": [condition("lbprovider.io/IPAllocated", "True")]}},
    )
    conditions = core.read_namespaced_service("web", "default").status.conditions
    assert [(c.type, c.status) for c in conditions] == [
        ("lbprovider.io/IPAllocated", "True"),
        ("lbprovider.io/Serving", "True"),
    ]


def test_strategic_merge_patch_unions_finalizers_and_deletes_from_them(
    core: client.CoreV1Api,
) -> None:
    core.create_namespaced_service(
        "default", {**_svc("web"), "metadata": {"name": "web", "finalizers": ["example.com/a"]}}
    )
    core.patch_namespaced_service("web", "default", {"metadata": {"finalizers": ["example.com/b"]}})
    assert core.read_namespaced_service("web", "default").metadata.finalizers == [
        "example.com/a",
        "example.com/b",
    ]
    core.patch_namespaced_service(
        "web", "default", {"metadata": {"$deleteFromPrimitiveList/finalizers": ["example.com/a"]}}
    )
    assert core.read_namespaced_service("web", "default").metadata.finalizers == ["example.com/b"]


def test_patch_carrying_a_stale_resource_version_is_a_conflict(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_service("default", _svc("web"))
    core.patch_namespaced_service("web", "default", {"metadata": {"labels": {"x": "1"}}})
    with pytest.raises(client.ApiException) as excinfo:
        core.patch_namespaced_service(
            "web",
            "default",
            {
                "metadata": {
                    "resourceVersion": created.metadata.resource_version,
                    "labels": {"x": "2"},
                }
            },
        )
    assert excinfo.value.status == 409


def test_delete_with_finalizers_only_marks_the_object(core: client.CoreV1Api) -> None:
    core.create_namespaced_service(
        "default",
        {
            **lb_service("web"),
            "metadata": {
                "name": "web",
                "finalizers": ["service.kubernetes.io/load-balancer-cleanup"],
            },
        },
    )
    core.delete_namespaced_service("web", "default")
    marked = core.read_namespaced_service("web", "default")
    assert marked.metadata.deletion_timestamp is not None
    core.patch_namespaced_service(
        "web", "default", [{"op": "remove", "path": "/metadata/finalizers"}]
    )
    with pytest.raises(client.ApiException) as excinfo:
        core.read_namespaced_service("web", "default")
    assert excinfo.value.status == 404


def test_no_new_finalizers_on_an_object_being_deleted(core: client.CoreV1Api) -> None:
    core.create_namespaced_service(
        "default", {**_svc("web"), "metadata": {"name": "web", "finalizers": ["example.com/a"]}}
    )
    core.delete_namespaced_service("web", "default")
    with pytest.raises(client.ApiException) as excinfo:
        core.patch_namespaced_service(
            "web", "default", {"metadata": {"finalizers": ["example.com/b"]}}
        )
    assert excinfo.value.status == 422


def test_generation_bumps_on_spec_change_only(api_client: client.ApiClient) -> None:
    net = client.NetworkingV1Api(api_client)
    created = net.create_namespaced_ingress(
        "default", {"metadata": {"name": "web"}, "spec": {"ingressClassName": "a"}}
    )
    assert created.metadata.generation == 1
    labelled = net.patch_namespaced_ingress("web", "default", {"metadata": {"labels": {"x": "y"}}})
    assert labelled.metadata.generation == 1
    status = net.patch_namespaced_ingress_status(
        "web", "default", {"status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.9"}]}}}
    )
    assert status.metadata.generation == 1
    changed = net.patch_namespaced_ingress("web", "default", {"spec": {"ingressClassName": "b"}})
    assert changed.metadata.generation == 2


def test_uid_and_creation_timestamp_are_set_and_kept(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_service("default", _svc("web"))
    assert created.metadata.uid and created.metadata.creation_timestamp
    updated = core.patch_namespaced_service("web", "default", {"metadata": {"labels": {"a": "b"}}})
    assert updated.metadata.uid == created.metadata.uid
    assert updated.metadata.creation_timestamp == created.metadata.creation_timestamp


def test_not_found_is_a_status_404(core: client.CoreV1Api) -> None:
    with pytest.raises(client.ApiException) as excinfo:
        core.read_namespaced_service("missing", "default")
    assert excinfo.value.status == 404
    assert _error(excinfo) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'services "missing" not found',
        "reason": "NotFound",
        "details": {"name": "missing", "kind": "services"},
        "code": 404,
    }


def test_duplicate_create_is_already_exists(core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", _svc("web"))
    with pytest.raises(client.ApiException) as excinfo:
        core.create_namespaced_service("default", _svc("web"))
    assert (excinfo.value.status, _error(excinfo)["reason"]) == (409, "AlreadyExists")


def test_invalid_object_is_422_with_causes(core: client.CoreV1Api) -> None:
    with pytest.raises(client.ApiException) as excinfo:
        core.create_namespaced_service(
            "default", {"metadata": {"name": "Bad_Name"}, "spec": {"ports": [{"port": 70000}]}}
        )
    error = _error(excinfo)
    assert (excinfo.value.status, error["reason"]) == (422, "Invalid")
    fields = {c["field"] for c in error["details"]["causes"]}  # type: ignore[index]
    assert fields == {"metadata.name", "spec.ports[0].port"}


def test_creating_in_a_missing_namespace_is_not_found(core: client.CoreV1Api) -> None:
    with pytest.raises(client.ApiException) as excinfo:
        core.create_namespaced_service("nowhere", _svc("web"))
    assert excinfo.value.status == 404
    assert _error(excinfo)["message"] == 'namespaces "nowhere" not found'


def test_deleting_a_namespace_deletes_its_contents(core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "team"}})
    core.create_namespaced_service("team", _svc("web"))
    core.delete_namespace("team")
    with pytest.raises(client.ApiException):
        core.read_namespace("team")
    assert (
        core.list_service_for_all_namespaces(field_selector="metadata.namespace=team").items == []
    )


def test_namespace_waits_for_finalized_content(core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "team"}})
    core.create_namespaced_service(
        "team", {**_svc("web"), "metadata": {"name": "web", "finalizers": ["example.com/a"]}}
    )
    core.delete_namespace("team")
    assert core.read_namespace("team").status.phase == "Terminating"
    with pytest.raises(client.ApiException) as excinfo:
        core.create_namespaced_service("team", _svc("late"))
    assert excinfo.value.status == 403
    core.patch_namespaced_service("web", "team", {"metadata": {"finalizers": None}})
    with pytest.raises(client.ApiException):
        core.read_namespace("team")


def test_pagination_with_limit_and_continue(core: client.CoreV1Api) -> None:
    for i in range(5):
        core.create_namespaced_service("default", _svc(f"s{i}"))
    first = core.list_namespaced_service("default", limit=4)
    rest = core.list_namespaced_service("default", limit=4, _continue=first.metadata._continue)
    names = [s.metadata.name for s in first.items + rest.items]
    assert names == ["kubernetes", "s0", "s1", "s2", "s3", "s4"]
    assert first.metadata.remaining_item_count == 2
    assert rest.metadata._continue is None


def test_generate_name(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_service(
        "default", {"metadata": {"generateName": "web-"}, "spec": {"ports": [{"port": 80}]}}
    )
    assert created.metadata.name.startswith("web-") and len(created.metadata.name) == 9
