"""End to end through Kubernetes: the lab API server, the real controller and API (``lbprovider
serve``), the real agent (``lbprovider agent``) with a real HAProxy on loopback, and two demo
nodes. A Service created through the Kubernetes API gets an IP, answers from both nodes and is
marked Serving; a cordoned node takes no new connections; uncordoned, both again; the Service
deleted, its VIP stops answering.

Everything is started by ``LabStack`` (stopped by its own handles) or by this test (the demo
node servers of the new Service's NodePort, stopped by their own handles).
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lbprovider.lab.backends import DemoNode
from lbprovider.labstack import DEMO_NAMESPACE, DEMO_NODES, DEMO_POOL, LabOptions, LabStack

pytestmark = [pytest.mark.haproxy, pytest.mark.slow]

SERVICE = "shop"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def until(probe: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        time.sleep(0.1)


def answer(ip: str, port: int) -> str | None:
    try:
        with socket.create_connection((ip, port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    return body.decode().strip() if head.startswith(b"HTTP/1.0 200") else None


def spread(ip: str, port: int, n: int = 20) -> Counter[str]:
    return Counter(answer(ip, port) or "failed" for _ in range(n))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[LabStack, httpx.Client]]:
    stack = LabStack(
        LabOptions(
            state_dir=tmp_path / "lab",
            listen=f"127.0.0.1:{free_port()}",
            service_port=free_port(),
        )
    )
    stack.start(timeout=60)
    kube = httpx.Client(base_url=_kube_url(tmp_path / "lab" / "kubeconfig"), timeout=10)
    try:
        yield stack, kube
    finally:
        kube.close()
        stack.stop()


def _kube_url(kubeconfig: Path) -> str:
    for line in kubeconfig.read_text().splitlines():
        if "server:" in line:
            return line.split("server:", 1)[1].strip().strip('"')
    raise AssertionError("no server in the lab kubeconfig")


def _service(kube: httpx.Client) -> dict[str, Any]:
    r = kube.get(f"/api/v1/namespaces/{DEMO_NAMESPACE}/services/{SERVICE}")
    return dict(r.json()) if r.status_code == 200 else {}


def _ip(kube: httpx.Client) -> str | None:
    ingress = (_service(kube).get("status", {}).get("loadBalancer") or {}).get("ingress") or []
    return str(ingress[0]["ip"]) if ingress else None


def _serving(kube: httpx.Client) -> bool:
    conditions = _service(kube).get("status", {}).get("conditions") or []
    return any(
        c.get("type") == "lbprovider.io/Serving" and c.get("status") == "True" for c in conditions
    )


def _cordon(kube: httpx.Client, node: str, on: bool) -> None:
    r = kube.patch(
        f"/api/v1/nodes/{node}",
        json={"spec": {"unschedulable": on}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    r.raise_for_status()


def test_service_through_kubernetes_answers_drains_and_goes_away(
    lab: tuple[LabStack, httpx.Client],
) -> None:
    _, kube = lab
    port = free_port()
    svc = {
        "metadata": {
            "name": SERVICE,
            "namespace": DEMO_NAMESPACE,
            "annotations": {"lbprovider.io/pool": DEMO_POOL},
        },
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": SERVICE},
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        },
    }
    r = kube.post(f"/api/v1/namespaces/{DEMO_NAMESPACE}/services", json=svc)
    r.raise_for_status()
    node_port = int(r.json()["spec"]["ports"][0]["nodePort"])
    nodes = [DemoNode(name, address) for name, address in DEMO_NODES]
    try:
        for node in nodes:
            node.listen(node_port)
        ip = until(lambda: _ip(kube), "the Service gets an IP")
        both = {f"hello from {name}" for name, _ in DEMO_NODES}
        until(lambda: set(spread(ip, port)) == both, "VIP:port answers from both nodes")
        until(lambda: _serving(kube), "lbprovider.io/Serving=True")

        first, second = DEMO_NODES[0][0], DEMO_NODES[1][0]
        _cordon(kube, first, True)
        until(
            lambda: set(spread(ip, port)) == {f"hello from {second}"},
            "new traffic only on the uncordoned node",
        )
        _cordon(kube, first, False)
        until(lambda: set(spread(ip, port)) == both, "both nodes again")

        kube.delete(f"/api/v1/namespaces/{DEMO_NAMESPACE}/services/{SERVICE}").raise_for_status()
        until(lambda: answer(ip, port) is None, "the VIP stops answering")
    finally:
        for node in nodes:
            node.stop()
