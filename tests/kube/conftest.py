"""Fixtures: a lab API server on loopback and an official-client ApiClient pointed at it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client

from lbprovider.config import Settings
from lbprovider.kube.client import load_api_client
from lbprovider.lab.apiserver import LabAPIServer

NAMESPACE = "lbp-test"


@pytest.fixture
def lab() -> Iterator[LabAPIServer]:
    with LabAPIServer(host="127.0.0.1", port=0, version="1.30") as srv:
        yield srv


@pytest.fixture
def kubeconfig(lab: LabAPIServer, tmp_path: Path) -> Path:
    path: Path = lab.write_kubeconfig(tmp_path / "kubeconfig")
    return path


@pytest.fixture
def api(kubeconfig: Path) -> Iterator[k8s_client.ApiClient]:
    client = load_api_client(Settings(kubeconfig=str(kubeconfig)))
    core = k8s_client.CoreV1Api(client)
    try:
        core.create_namespace(
            k8s_client.V1Namespace(metadata=k8s_client.V1ObjectMeta(name=NAMESPACE))
        )
    except k8s_client.ApiException as exc:
        if exc.status != 409:
            raise
    yield client
    client.close()


@pytest.fixture
def core(api: k8s_client.ApiClient) -> Any:
    return k8s_client.CoreV1Api(api)


def make_service(
    core: Any, name: str, *, namespace: str = NAMESPACE, port: int = 80
) -> dict[str, Any]:
    """Create a LoadBalancer Service and return it as the server stored it."""
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "type": "LoadBalancer",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        },
    }
    response = core.create_namespaced_service(namespace, body, _preload_content=False)
    created: dict[str, Any] = json.loads(response.data)
    return created


def get_service(core: Any, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    response = core.read_namespaced_service(name, namespace, _preload_content=False)
    found: dict[str, Any] = json.loads(response.data)
    return found


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout``; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
