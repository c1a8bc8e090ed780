"""Where the cluster comes from, and errors arriving as our own classes."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client

from lbprovider.config import Settings
from lbprovider.kube.client import describe_cluster_source, load_api_client
from lbprovider.kube.errors import (
    KubeConflict,
    KubeInvalid,
    KubeNotConfigured,
    KubeNotFound,
    KubeUnavailable,
    wrap_errors,
)

from .conftest import NAMESPACE, make_service


def test_no_cluster_configured_is_reported_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = Settings(kubeconfig=None)

    assert describe_cluster_source(settings) == "none"
    with pytest.raises(KubeNotConfigured, match="no Kubernetes cluster configured"):
        load_api_client(settings)


def test_missing_kubeconfig_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(KubeNotConfigured, match=r"LBP_KUBECONFIG=.*not a readable file"):
        load_api_client(Settings(kubeconfig=str(tmp_path / "absent")))


def test_home_kubeconfig_is_used_when_nothing_else_is(
    kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text(kubeconfig.read_text())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    api = load_api_client(Settings(kubeconfig=None))
    try:
        version = k8s_client.VersionApi(api).get_code()
    finally:
        api.close()
    assert version.minor.startswith("30")


def test_api_errors_arrive_as_our_classes(core: Any) -> None:
    make_service(core, "web")
    with pytest.raises(KubeConflict) as conflict, wrap_errors("create service"):
        make_service(core, "web")
    assert conflict.value.status == 409
    assert "create service" in str(conflict.value)
    assert isinstance(conflict.value.__cause__, k8s_client.ApiException)

    with pytest.raises(KubeNotFound), wrap_errors("read service"):
        core.read_namespaced_service("absent", NAMESPACE)

    taken = make_service(core, "first")["spec"]["ports"][0]["nodePort"]
    body = {
        "metadata": {"name": "second"},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": taken}]},
    }
    with pytest.raises(KubeInvalid) as invalid, wrap_errors("create service"):
        core.create_namespaced_service(NAMESPACE, body)
    assert invalid.value.status == 422


def test_unreachable_server_is_unavailable(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    configuration = k8s_client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    configuration.retries = 0
    api = k8s_client.ApiClient(configuration)
    try:
        with pytest.raises(KubeUnavailable, match="cannot reach"), wrap_errors("list nodes"):
            k8s_client.CoreV1Api(api).list_node(_request_timeout=(1, 1))
    finally:
        api.close()
