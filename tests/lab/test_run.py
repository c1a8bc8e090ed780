"""`run_lab_apiserver`, the entry point `lbprovider lab` calls, serves until signalled."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from kubernetes import client, config

SCRIPT = (
    "import sys; from lbprovider.lab.apiserver import run_lab_apiserver; "
    "run_lab_apiserver('127.0.0.1', 0, '1.28', sys.argv[1])"
)


def test_run_lab_apiserver_writes_a_kubeconfig_and_stops_on_sigterm(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, str(kubeconfig)])
    try:
        deadline = time.monotonic() + 15
        while not kubeconfig.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with config.new_client_from_config(str(kubeconfig)) as api_client:
            assert client.VersionApi(api_client).get_code().git_version.startswith("v1.28.")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
