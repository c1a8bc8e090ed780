"""`LabAPIServer`: a Kubernetes-API-compatible server on one machine. A LAB TOOL, NOT FOR
PRODUCTION: no authentication, no TLS, no persistence, one process.

No real kube-apiserver can be installed where lbprovider is developed and first tried, yet
the controller must be exercised through HTTP with the official client and with kubectl.
This server keeps the API semantics a controller relies on (resourceVersions, watches with
bookmarks and 410 expiry, selectors, optimistic concurrency, the status subresource, three
PATCH dialects, finalizers, Service IP/port allocation, a 1.28 or 1.30+ version switch), so
what passes here passes against a real cluster. It must not import the rest of lbprovider
(the "lab stands alone" contract) and must never be pointed at by a production controller.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from lbprovider.lab.api import Api
from lbprovider.lab.http import LabHTTPServer
from lbprovider.lab.kinds import Kind, find_kind
from lbprovider.lab.services import ServiceStrategy
from lbprovider.lab.store import Store
from lbprovider.lab.strategies import (
    EndpointSliceStrategy,
    EventStrategy,
    IngressStrategy,
    NamespaceStrategy,
    NodeStrategy,
    SecretStrategy,
)
from lbprovider.lab.strategy import Strategy

logger = logging.getLogger(__name__)

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def parse_minor(version: str) -> int:
    """`"1.30"` or `"v1.28.3"` -> 30 or 28; only Kubernetes 1.x versions exist."""
    match = re.fullmatch(r"v?1\.(\d+)(\.\d+)?", version.strip())
    if not match:
        raise ValueError(f"unsupported Kubernetes version {version!r}: expected like '1.30'")
    return int(match.group(1))


def _kind(group: str, plural: str) -> Kind:
    kind = find_kind(group, "v1", plural)
    assert kind is not None, plural
    return kind


def _strategies(minor: int) -> dict[str, Strategy]:
    return {
        _kind("", "services").storage_key: ServiceStrategy(minor),
        _kind("", "namespaces").storage_key: NamespaceStrategy(),
        _kind("", "nodes").storage_key: NodeStrategy(),
        _kind("", "secrets").storage_key: SecretStrategy(),
        _kind("", "events").storage_key: EventStrategy(),
        _kind("discovery.k8s.io", "endpointslices").storage_key: EndpointSliceStrategy(),
        _kind("networking.k8s.io", "ingresses").storage_key: IngressStrategy(),
    }


def _seed(store: Store) -> None:
    for name in DEFAULT_NAMESPACES:
        store.seed(_kind("", "namespaces"), {"metadata": {"name": name}})
    store.seed(
        _kind("", "services"),
        {
            "metadata": {
                "name": "kubernetes",
                "namespace": "default",
                "labels": {"component": "apiserver", "provider": "kubernetes"},
            },
            "spec": {
                "clusterIP": "10.96.0.1",
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
            },
        },
    )


class LabAPIServer:
    """The lab API server; `start()` serves in a background thread until `stop()`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        version: str = "1.30",
        *,
        watch_window: int = 100_000,
        bookmark_interval: float = 60.0,
    ) -> None:
        self.minor = parse_minor(version)
        self._host, self._port = host, port
        self.store = Store(_strategies(self.minor), window=watch_window)
        _seed(self.store)
        self._bookmark_interval = bookmark_interval
        self._server: LabHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the lab API server is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> LabAPIServer:
        api = Api(self.store, self.minor, lambda: self.url.removeprefix("http://"))
        self._server = LabHTTPServer(
            (self._host, self._port), api, self.store, self._bookmark_interval
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="lab-apiserver",
            daemon=True,
        )
        self._thread.start()
        logger.info("lab API server listening", extra={"event": "lab_started", "url": self.url})
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server, self._thread = None, None
        logger.info("lab API server stopped", extra={"event": "lab_stopped"})

    def __enter__(self) -> LabAPIServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def write_kubeconfig(self, path: str | Path) -> Path:
        """A kubeconfig (plain HTTP, no credentials) for kubectl and the official client."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(kubeconfig_text(self.url))
        return target


def kubeconfig_text(url: str) -> str:
    return (
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        "- name: lbprovider-lab\n"
        "  cluster:\n"
        f"    server: {url}\n"
        "users:\n"
        "- name: lbprovider-lab\n"
        "  user: {}\n"
        "contexts:\n"
        "- name: lbprovider-lab\n"
        "  context:\n"
        "    cluster: lbprovider-lab\n"
        "    user: lbprovider-lab\n"
        "    namespace: default\n"
        "current-context: lbprovider-lab\n"
    )


def run_lab_apiserver(host: str, port: int, version: str, kubeconfig_path: str | Path) -> None:
    """Serve until SIGINT/SIGTERM (for `lbprovider lab`), with a kubeconfig written first."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with LabAPIServer(host=host, port=port, version=version) as server:
            written = server.write_kubeconfig(kubeconfig_path)
            logger.info(
                "lab kubeconfig written", extra={"event": "lab_kubeconfig", "path": str(written)}
            )
            stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
