"""The real kubectl works against the lab: discovery, get, create -f, patch, delete, get -w."""

from __future__ import annotations

import json
import time

from kubernetes import client

from tests.lab.conftest import Kubectl, lb_service

SERVICE_YAML = """\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: LoadBalancer
  ports:
  - port: 80
"""


def test_kubectl_create_from_file_and_get(kubectl: Kubectl, core: client.CoreV1Api) -> None:
    created = kubectl("create", "-f", "-", stdin=SERVICE_YAML)
    assert "service/web created" in created.stdout
    assert core.read_namespaced_service("web", "default").spec.ports[0].node_port
    table = kubectl("get", "svc", "web").stdout.splitlines()
    assert table[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert table[1].split()[:4] == [
        "web",
        "LoadBalancer",
        core.read_namespaced_service("web", "default").spec.cluster_ip,
        "<pending>",
    ]


def test_kubectl_shows_the_ip_from_status(kubectl: Kubectl, core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", lb_service("web"))
    core.patch_namespaced_service_status(
        "web",
        "default",
        {"status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.9", "ipMode": "Proxy"}]}}},
    )
    assert "127.0.0.9" in kubectl("get", "svc", "web").stdout
    as_json = json.loads(kubectl("get", "svc", "web", "-o", "json").stdout)
    assert as_json["status"]["loadBalancer"]["ingress"][0]["ipMode"] == "Proxy"


def test_kubectl_patch_merge(kubectl: Kubectl, core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", lb_service("web"))
    kubectl(
        "patch",
        "svc",
        "web",
        "--type=merge",
        "-p",
        '{"metadata":{"annotations":{"lbprovider.io/pool":"blue"}}}',
    )
    annotations = core.read_namespaced_service("web", "default").metadata.annotations
    assert annotations == {"lbprovider.io/pool": "blue"}


def test_kubectl_delete(kubectl: Kubectl, core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", lb_service("web"))
    assert 'service "web" deleted' in kubectl("delete", "svc", "web", "--timeout=20s").stdout
    assert [s.metadata.name for s in core.list_namespaced_service("default").items] == [
        "kubernetes"
    ]


def test_kubectl_get_watch_prints_new_objects(kubectl: Kubectl, core: client.CoreV1Api) -> None:
    watcher = kubectl.popen("get", "svc", "-w", "--request-timeout=30s")
    try:
        assert watcher.stdout is not None
        header = watcher.stdout.readline()
        assert header.split()[:2] == ["NAME", "TYPE"]
        assert watcher.stdout.readline().split()[0] == "kubernetes"
        time.sleep(0.3)
        core.create_namespaced_service("default", lb_service("late"))
        assert watcher.stdout.readline().split()[:2] == ["late", "LoadBalancer"]
    finally:
        watcher.terminate()
        watcher.communicate(timeout=10)


def test_kubectl_api_resources_and_version(kubectl: Kubectl) -> None:
    resources = kubectl("api-resources", "-o", "name").stdout.split()
    for name in (
        "services",
        "nodes",
        "endpointslices.discovery.k8s.io",
        "leases.coordination.k8s.io",
        "ingresses.networking.k8s.io",
        "events.events.k8s.io",
        "secrets",
        "namespaces",
    ):
        assert name in resources
    assert "Server Version: v1.30" in kubectl("version").stdout
