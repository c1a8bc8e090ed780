"""``lbprovider lab``: the whole system on one machine, for a first run and for tests.

Composition only, like ``server.py``: the lab Kubernetes API server (in this process), ``lbprovider
serve`` on SQLite (API, dashboard, controller — a subprocess), one ``lbprovider agent`` with a real
``haproxy`` on loopback (a subprocess), two demo "nodes" whose NodePorts are small HTTP servers,
a demo pool on a 127.x range and a demo LoadBalancer Service. It prints the dashboard URL, an admin
token and a ``curl`` line that reaches the demo through HAProxy.

Everything it starts it stops, by handle or PID, when it ends. It must never be pointed at a real
cluster: with a kubeconfig configured, use ``lbprovider serve``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lbprovider.lab.apiserver import LabAPIServer
from lbprovider.lab.backends import KUBE_PROXY_HEALTH_PORT, DemoNode

logger = logging.getLogger(__name__)

DEMO_NAMESPACE = "demo"
DEMO_SERVICE = "hello"
DEMO_POOL = "demo"
DEMO_NODES = (("lab-node-1", "127.0.1.1"), ("lab-node-2", "127.0.1.2"))
AGENT_HOST = "lab-haproxy"


@dataclass
class LabOptions:
    state_dir: Path = Path(".lab")
    listen: str = "127.0.0.1:8080"
    pool_range: str = "127.77.0.0/28"
    service_port: int = 8088
    kube_version: str = "1.30"
    haproxy_bin: str = "haproxy"


@dataclass
class LabInfo:
    dashboard_url: str
    admin_token: str
    kubeconfig: Path
    service_ip: str
    service_port: int

    @property
    def curl(self) -> str:
        return f"curl http://{self.service_ip}:{self.service_port}/"


@dataclass
class LabStack:
    """Start with ``start()``; ``stop()`` undoes everything in reverse order."""

    options: LabOptions = field(default_factory=LabOptions)
    _stops: list[Callable[[], None]] = field(default_factory=list)
    info: LabInfo | None = None

    def start(self, timeout: float = 60.0) -> LabInfo:
        try:
            self.info = self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self.info

    def stop(self) -> None:
        while self._stops:
            stop = self._stops.pop()
            try:
                stop()
            except Exception:
                logger.exception("lab: stopping a part failed", extra={"event": "lab_stop"})

    def __enter__(self) -> LabStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the steps --------------------------------------------------------------------------

    def _start(self, timeout: float) -> LabInfo:
        opts = self.options
        state = opts.state_dir.resolve()
        if state.exists():
            shutil.rmtree(state)
        (state / "agent").mkdir(parents=True)
        apiserver = LabAPIServer(host="127.0.0.1", port=0, version=opts.kube_version).start()
        self._stops.append(apiserver.stop)
        kubeconfig = apiserver.write_kubeconfig(state / "kubeconfig")
        kube = httpx.Client(base_url=apiserver.url, timeout=10)
        self._stops.append(kube.close)
        _seed_cluster(kube)
        db_url = f"sqlite:///{state / 'lbprovider.db'}"
        admin, agent_token = _seed_database(db_url, opts.pool_range)
        env = _base_env(db_url, kubeconfig, opts)
        api_url = f"http://{opts.listen}"
        self._spawn([sys.executable, "-m", "lbprovider", "serve"], env, state / "serve.log")
        _wait_http(f"{api_url}/readyz", timeout)
        self._spawn(
            [sys.executable, "-m", "lbprovider", "agent"],
            _agent_env(env, api_url, agent_token, state / "agent", opts),
            state / "agent.log",
        )
        self._stops.append(lambda: stop_agent_haproxy(state / "agent"))
        node_port = _create_demo_service(kube, opts.service_port)
        self._start_demo_nodes(node_port)
        ip = _wait_for_ip(kube, timeout)
        _wait_http(f"http://{ip}:{opts.service_port}/", timeout)
        return LabInfo(f"{api_url}/", admin, kubeconfig, ip, opts.service_port)

    def _spawn(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        out = log.open("ab")
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

        def stop() -> None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            out.close()

        self._stops.append(stop)

    def _start_demo_nodes(self, node_port: int) -> None:
        for name, address in DEMO_NODES:
            node = DemoNode(name, address)
            self._stops.append(node.stop)
            node.listen(KUBE_PROXY_HEALTH_PORT)
            node.listen(node_port)


def _seed_cluster(kube: httpx.Client) -> None:
    for ns in ("lbprovider-system", DEMO_NAMESPACE):
        kube.post("/api/v1/namespaces", json={"metadata": {"name": ns}}).raise_for_status()
    for name, address in DEMO_NODES:
        node = {
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {
                "addresses": [{"type": "InternalIP", "address": address}],
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
        kube.post("/api/v1/nodes", json=node).raise_for_status()


def _seed_database(db_url: str, pool_range: str) -> tuple[str, str]:
    from lbprovider.db.migrate import upgrade
    from lbprovider.db.session import make_engine, session_factory, transaction
    from lbprovider.services.context import Actor
    from lbprovider.services.pools import PoolFields, create_pool
    from lbprovider.services.tokens import create_token

    upgrade(db_url)
    engine = make_engine(db_url)
    actor = Actor("lab")
    with transaction(session_factory(engine)) as s:
        create_pool(
            session=s,
            actor=actor,
            data=PoolFields(
                name=DEMO_POOL,
                ranges=[pool_range],
                avoid_buggy_ips=True,
                description="lab demo pool (loopback)",
            ),
        )
        _, admin = create_token(session=s, name="lab-admin", scopes=["admin"], actor=actor)
        _, agent = create_token(
            session=s, name="lab-agent", scopes=["agent"], host=AGENT_HOST, actor=actor
        )
    engine.dispose()
    return admin, agent


def _base_env(db_url: str, kubeconfig: Path, opts: LabOptions) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LBP_")}
    env.update(
        {
            "LBP_DATABASE_URL": db_url,
            "LBP_KUBECONFIG": str(kubeconfig),
            "LBP_LISTEN": opts.listen,
            "LBP_LEASE_NAMESPACE": "lbprovider-system",
            "LBP_QUARANTINE_SECONDS": "0",
        }
    )
    return env


def _agent_env(
    base: dict[str, str], api_url: str, token: str, state_dir: Path, opts: LabOptions
) -> dict[str, str]:
    env = dict(base)
    env.update(
        {
            "LBP_AGENT_API_URL": api_url,
            "LBP_AGENT_TOKEN": token,
            "LBP_AGENT_HOST": AGENT_HOST,
            "LBP_AGENT_STATE_DIR": str(state_dir),
            "LBP_AGENT_VIP_MODE": "none",
            "LBP_AGENT_BIND_MODE": "per-vip",
            "LBP_AGENT_HAPROXY_BIN": opts.haproxy_bin,
        }
    )
    return env


def _create_demo_service(kube: httpx.Client, port: int) -> int:
    svc = {
        "metadata": {
            "name": DEMO_SERVICE,
            "namespace": DEMO_NAMESPACE,
            "annotations": {"lbprovider.io/pool": DEMO_POOL},
        },
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": DEMO_SERVICE},
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        },
    }
    r = kube.post(f"/api/v1/namespaces/{DEMO_NAMESPACE}/services", json=svc)
    r.raise_for_status()
    return int(r.json()["spec"]["ports"][0]["nodePort"])


def _wait_for_ip(kube: httpx.Client, timeout: float) -> str:
    def ip() -> str | None:
        r = kube.get(f"/api/v1/namespaces/{DEMO_NAMESPACE}/services/{DEMO_SERVICE}")
        ingress = (r.json().get("status", {}).get("loadBalancer", {}) or {}).get("ingress") or []
        return str(ingress[0]["ip"]) if ingress else None

    return str(_until(ip, timeout, "the demo Service to get an IP"))


def _wait_http(url: str, timeout: float) -> None:
    def ok() -> bool | None:
        try:
            return httpx.get(url, timeout=2).status_code == 200 or None
        except httpx.HTTPError:
            return None

    _until(ok, timeout, f"{url} to answer")


def _until(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"lab: timed out waiting for {what} (logs in the lab state directory)")


def stop_agent_haproxy(agent_state: Path) -> None:
    """The agent leaves HAProxy running on purpose (the next agent attaches); the lab does not.
    The master's PID comes from its own master socket."""
    from lbprovider.haproxy.process import HAProxyProcess
    from lbprovider.haproxy.render import MASTER_SOCKET

    sock = agent_state / "run" / MASTER_SOCKET
    if not sock.exists():
        return
    try:
        pid = HAProxyProcess.attach(sock).pid
    except Exception:  # no master behind the socket: nothing to stop
        return
    for sig, wait in ((signal.SIGUSR1, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        if not Path(f"/proc/{pid}").exists():
            return
