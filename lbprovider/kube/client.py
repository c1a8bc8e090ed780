"""Build the one ``ApiClient`` a process uses to talk to Kubernetes.

Where the cluster comes from is decided here and only here: ``LBP_KUBECONFIG`` when set, else
the in-cluster service account when running in a Pod, else ``~/.kube/config``. When none exists
the caller gets ``KubeNotConfigured`` with a sentence an operator can act on, so ``serve`` can
run without a controller. This module must not make API calls or hold global state.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException

from lbprovider.config import Settings
from lbprovider.kube.errors import KubeNotConfigured

logger = logging.getLogger(__name__)

# (connect, read) seconds for ordinary calls: a dead API server must not hang a reconcile.
REQUEST_TIMEOUT: tuple[float, float] = (5.0, 30.0)
# Watches, caches, the elector and workers each hold a connection; the client default is small.
CONNECTION_POOL_SIZE = 32
USER_AGENT = "lbprovider/0.1"

ApiClient = k8s_client.ApiClient


def default_kubeconfig_path() -> Path:
    """``~/.kube/config`` of the current user (``$HOME`` decides)."""
    return Path.home() / ".kube" / "config"


def in_cluster() -> bool:
    """True inside a Pod: the kubelet sets these variables and mounts a service-account token."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and bool(
        os.environ.get("KUBERNETES_SERVICE_PORT")
    )


def describe_cluster_source(settings: Settings) -> str:
    """Where ``load_api_client`` would take its cluster from, for logs and ``--help`` text."""
    if settings.kubeconfig:
        return f"kubeconfig {settings.kubeconfig} (LBP_KUBECONFIG)"
    if in_cluster():
        return "in-cluster service account"
    path = default_kubeconfig_path()
    if path.is_file():
        return f"kubeconfig {path}"
    return "none"


def load_api_client(settings: Settings) -> k8s_client.ApiClient:
    """An ``ApiClient`` for the configured cluster, or ``KubeNotConfigured``."""
    configuration = k8s_client.Configuration()
    source = _load_configuration(settings, configuration)
    configuration.connection_pool_maxsize = max(
        configuration.connection_pool_maxsize or 0, CONNECTION_POOL_SIZE
    )
    api = k8s_client.ApiClient(configuration)
    api.user_agent = USER_AGENT
    logger.info(
        "kubernetes client ready",
        extra={"event": "kube_client", "source": source, "host": configuration.host},
    )
    return api


def _load_configuration(settings: Settings, configuration: Any) -> str:
    if settings.kubeconfig:
        path = Path(settings.kubeconfig).expanduser()
        if not path.is_file():
            raise KubeNotConfigured(f"LBP_KUBECONFIG={settings.kubeconfig} is not a readable file")
        _load_kubeconfig(path, configuration)
        return str(path)
    if in_cluster():
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except ConfigException as exc:
            raise KubeNotConfigured(f"in-cluster configuration is incomplete: {exc}") from exc
        return "in-cluster"
    path = default_kubeconfig_path()
    if path.is_file():
        _load_kubeconfig(path, configuration)
        return str(path)
    raise KubeNotConfigured(
        "no Kubernetes cluster configured: LBP_KUBECONFIG is unset, this is not a Pod "
        f"(KUBERNETES_SERVICE_HOST unset) and {path} does not exist"
    )


def _load_kubeconfig(path: Path, configuration: Any) -> None:
    try:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(path), client_configuration=configuration, persist_config=False
        )
    except (ConfigException, OSError, ValueError, yaml.YAMLError) as exc:
        raise KubeNotConfigured(f"kubeconfig {path} is unusable: {exc}") from exc
