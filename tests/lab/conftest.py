"""Fixtures for the lab API server tests: a real server on loopback and real clients."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from lbprovider.lab.apiserver import LabAPIServer


@pytest.fixture
def lab() -> Iterator[LabAPIServer]:
    with LabAPIServer() as server:
        yield server


@pytest.fixture
def kubeconfig(lab: LabAPIServer, tmp_path: Path) -> Path:
    return lab.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def api_client(kubeconfig: Path) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(str(kubeconfig))
    yield api
    api.close()


@pytest.fixture
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


def kubectl_binary() -> str:
    found = shutil.which("kubectl") or "/usr/bin/kubectl"
    if not Path(found).exists():
        pytest.fail("kubectl is missing: install Debian's kubernetes-client")
    return found


class Kubectl:
    """Runs the real kubectl against the lab, with its own discovery cache."""

    def __init__(self, kubeconfig: Path, cache: Path) -> None:
        self.prefix = [kubectl_binary(), "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache)]

    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.prefix, *args], input=stdin, capture_output=True, text=True, timeout=60
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*self.prefix, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path) -> Kubectl:
    return Kubectl(kubeconfig, tmp_path / "kube-cache")


def lb_service(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80}], **spec},
    }
