"""Service defaulting and allocation as a real API server does them."""

from __future__ import annotations

import pytest
from kubernetes import client

from lbprovider.lab.apiserver import LabAPIServer
from tests.lab.conftest import lb_service


def test_defaults_of_a_load_balancer_service(core: client.CoreV1Api) -> None:
    spec = core.create_namespaced_service("default", lb_service("web")).spec
    assert spec.cluster_ip.startswith("10.9") and spec.cluster_ips == [spec.cluster_ip]
    assert (spec.ip_families, spec.ip_family_policy) == (["IPv4"], "SingleStack")
    assert (spec.session_affinity, spec.external_traffic_policy, spec.internal_traffic_policy) == (
        "None",
        "Cluster",
        "Cluster",
    )
    assert spec.allocate_load_balancer_node_ports is True
    port = spec.ports[0]
    assert (port.protocol, port.target_port) == ("TCP", 80)
    assert 30000 <= port.node_port <= 32767
    assert spec.health_check_node_port is None


def test_cluster_ip_services_get_no_node_port(core: client.CoreV1Api) -> None:
    spec = core.create_namespaced_service(
        "default", {"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}
    ).spec
    assert spec.type == "ClusterIP" and spec.ports[0].node_port is None
    assert spec.external_traffic_policy is None


def test_explicit_node_port_is_honoured_and_a_duplicate_refused(core: client.CoreV1Api) -> None:
    first = core.create_namespaced_service(
        "default", lb_service("a", ports=[{"port": 80, "nodePort": 31000}])
    )
    assert first.spec.ports[0].node_port == 31000
    with pytest.raises(client.ApiException) as excinfo:
        core.create_namespaced_service(
            "default", lb_service("b", ports=[{"port": 80, "nodePort": 31000}])
        )
    assert excinfo.value.status == 422
    assert "provided port is already allocated" in excinfo.value.body


def test_node_port_outside_the_range_is_invalid(core: client.CoreV1Api) -> None:
    with pytest.raises(client.ApiException) as excinfo:
        core.create_namespaced_service(
            "default", lb_service("a", ports=[{"port": 80, "nodePort": 80}])
        )
    assert excinfo.value.status == 422
    assert "30000-32767" in excinfo.value.body


def test_allocate_load_balancer_node_ports_false_is_honoured(core: client.CoreV1Api) -> None:
    spec = core.create_namespaced_service(
        "default", lb_service("web", allocateLoadBalancerNodePorts=False)
    ).spec
    assert spec.ports[0].node_port is None


def test_health_check_node_port_for_external_traffic_policy_local(core: client.CoreV1Api) -> None:
    spec = core.create_namespaced_service(
        "default", lb_service("web", externalTrafficPolicy="Local")
    ).spec
    assert 30000 <= spec.health_check_node_port <= 32767
    assert spec.health_check_node_port != spec.ports[0].node_port


def test_node_ports_are_released_on_delete(core: client.CoreV1Api) -> None:
    core.create_namespaced_service(
        "default", lb_service("a", ports=[{"port": 80, "nodePort": 31000}])
    )
    core.delete_namespaced_service("a", "default")
    again = core.create_namespaced_service(
        "default", lb_service("b", ports=[{"port": 80, "nodePort": 31000}])
    )
    assert again.spec.ports[0].node_port == 31000


def test_type_change_to_cluster_ip_drops_and_releases_node_ports(core: client.CoreV1Api) -> None:
    core.create_namespaced_service(
        "default",
        lb_service("a", ports=[{"port": 80, "nodePort": 31000}], externalTrafficPolicy="Local"),
    )
    changed = core.patch_namespaced_service("a", "default", {"spec": {"type": "ClusterIP"}})
    assert changed.spec.ports[0].node_port is None
    assert changed.spec.health_check_node_port is None
    assert changed.spec.external_traffic_policy is None
    other = core.create_namespaced_service(
        "default", lb_service("b", ports=[{"port": 80, "nodePort": 31000}])
    )
    assert other.spec.ports[0].node_port == 31000


def test_an_update_that_omits_allocated_values_keeps_them(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_service("default", lb_service("web"))
    body = lb_service("web")  # a full PUT without clusterIP or nodePort
    body["metadata"]["resourceVersion"] = created.metadata.resource_version
    replaced = core.replace_namespaced_service("web", "default", body)
    assert replaced.spec.cluster_ip == created.spec.cluster_ip
    assert replaced.spec.ports[0].node_port == created.spec.ports[0].node_port


def test_cluster_ip_is_immutable(core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", lb_service("web"))
    with pytest.raises(client.ApiException) as excinfo:
        core.patch_namespaced_service("web", "default", {"spec": {"clusterIP": "10.96.5.5"}})
    assert excinfo.value.status == 422


def test_explicit_cluster_ip_in_range_and_duplicate(core: client.CoreV1Api) -> None:
    made = core.create_namespaced_service("default", lb_service("a", clusterIP="10.96.1.1"))
    assert made.spec.cluster_ip == "10.96.1.1"
    with pytest.raises(client.ApiException) as excinfo:
        core.create_namespaced_service("default", lb_service("b", clusterIP="10.96.1.1"))
    assert excinfo.value.status == 422


def test_load_balancer_class_only_on_load_balancers(core: client.CoreV1Api) -> None:
    with pytest.raises(client.ApiException) as excinfo:
        core.create_namespaced_service(
            "default",
            {
                "metadata": {"name": "a"},
                "spec": {"ports": [{"port": 80}], "loadBalancerClass": "lbprovider.io/haproxy"},
            },
        )
    assert excinfo.value.status == 422


def _with_ingress(version: str) -> client.V1LoadBalancerIngress:
    with LabAPIServer(version=version) as lab:
        configuration = client.Configuration()
        configuration.host = lab.url
        with client.ApiClient(configuration) as api_client:
            api = client.CoreV1Api(api_client)
            assert api_client.call_api  # the official client, over HTTP
            api.create_namespaced_service("default", lb_service("web"))
            api.patch_namespaced_service_status(
                "web",
                "default",
                {"status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.9", "ipMode": "Proxy"}]}}},
            )
            ingress: client.V1LoadBalancerIngress = api.read_namespaced_service(
                "web", "default"
            ).status.load_balancer.ingress[0]
            version_info = client.VersionApi(api_client).get_code()
    assert version_info.minor == version.split(".")[1]
    return ingress


def test_version_1_28_drops_ip_mode() -> None:
    ingress = _with_ingress("1.28")
    assert (ingress.ip, ingress.ip_mode) == ("127.0.0.9", None)


def test_version_1_30_keeps_ip_mode() -> None:
    ingress = _with_ingress("1.30")
    assert (ingress.ip, ingress.ip_mode) == ("127.0.0.9", "Proxy")


def test_version_1_30_defaults_ip_mode_to_vip(core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", lb_service("web"))
    written = core.patch_namespaced_service_status(
        "web", "default", {"status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.9"}]}}}
    )
    assert written.status.load_balancer.ingress[0].ip_mode == "VIP"


def test_the_cluster_has_its_kubernetes_service(core: client.CoreV1Api) -> None:
    svc = core.read_namespaced_service("kubernetes", "default")
    assert svc.spec.cluster_ip == "10.96.0.1"
