"""``lbprovider serve`` runs the controller in-process when a cluster is configured;
``lbprovider controller --help`` documents the standalone command."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client as k8s_client

from lbprovider.db.session import make_engine, session_factory

from .helpers import create_service, ip_of, make_pool, wait_until

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_controller_command_help() -> None:
    # A real process: the CLI configures process-wide logging, which must not leak into pytest.
    result = subprocess.run(
        [sys.executable, "-m", "lbprovider", "controller", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "controller" in result.stdout and "LBP_KUBECONFIG" in result.stdout


def test_serve_runs_the_controller_when_a_cluster_is_configured(
    core: Any, api: Any, kubeconfig: Path, tmp_path: Path
) -> None:
    """The Service gets its IP from the serve process; SIGTERM hands the Lease over."""
    coordination = k8s_client.CoordinationV1Api(api)
    db_file = tmp_path / "serve.db"
    port = free_port()
    env = {
        **os.environ,
        "LBP_KUBECONFIG": str(kubeconfig),
        "LBP_DATABASE_URL": f"sqlite:///{db_file}",
        "LBP_LEASE_NAMESPACE": "lbp-system",
        # Any free port: the default 127.0.0.1:9101 may be taken by another process here.
        "LBP_CONTROLLER_METRICS_LISTEN": "127.0.0.1:0",
    }
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lbprovider", "serve", "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    engine = None
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(healthy, timeout=30), (tmp_path / "serve.log").read_text()
        engine = make_engine(f"sqlite:///{db_file}")
        make_pool(session_factory(engine), "serve", "127.0.18.1-127.0.18.9")
        create_service(core, "web")
        assert wait_until(lambda: ip_of(core, "web"), timeout=20) == "127.0.18.1"

        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
        lease = coordination.read_namespaced_lease(
            "lbprovider-controller", "lbp-system", _preload_content=False
        )
        assert json.loads(lease.data)["spec"].get("holderIdentity") in ("", None)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        log.close()
        if engine is not None:
            engine.dispose()
