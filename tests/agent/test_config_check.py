"""A config that ``haproxy -c`` refuses never replaces the running one, through the real agent.

A valid desired state never renders a refused config, so the refusal comes from the binary the
agent is configured with: a real executable wrapper in the test's directory that answers ``-c``
with an error (as a broken HAProxy package or an unreadable include would) while a flag file
exists, and otherwise runs the real ``haproxy``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lbprovider.haproxy.render import CONFIG_NAME
from tests.fleet.helpers import add_service, service_data
from tests.haproxy.conftest import free_port

from .conftest import Fleet, get, try_get, wait_until
from .test_reliability import host_row, serving, setup, worker

pytestmark = pytest.mark.haproxy

WRAPPER = """#!/bin/sh
for a in "$@"; do
  if [ "$a" = "-c" ] && [ -e "{flag}" ]; then
    echo "[ALERT] (test wrapper) config check refused" >&2
    exit 1
  fi
done
exec {haproxy} "$@"
"""


def test_a_config_refused_by_haproxy_c_never_replaces_the_running_one(
    fleet: Fleet, fast_backend: Callable[[], int], tmp_path: Path
) -> None:
    haproxy = shutil.which("haproxy")
    assert haproxy
    flag = tmp_path / "refuse"
    wrapper = tmp_path / "haproxy"
    wrapper.write_text(WRAPPER.format(flag=flag, haproxy=haproxy))
    wrapper.chmod(0o755)
    setup(fleet)
    np, port, new_port = fast_backend(), free_port(), free_port()
    (a,) = add_service(fleet.sessions, service_data("a", [(port, np)]))
    agent = fleet.start_agent(fleet.config(haproxy_bin=str(wrapper)))
    wait_until(lambda: serving(fleet, "a")[0], what="a serving")
    config = Path(agent.hsettings.run_dir) / CONFIG_NAME
    running = config.read_text()
    pid = worker(fleet)

    flag.touch()  # from now on `haproxy -c` refuses every config
    (b,) = add_service(fleet.sessions, service_data("b", [(new_port, np)]))  # a new port: reload
    wait_until(lambda: "config refused" in host_row(fleet).error, what="refusal reported")
    assert "config check refused" in host_row(fleet).error
    assert config.read_text() == running  # the file HAProxy would reload from is unchanged
    assert worker(fleet) == pid and get(a, port).startswith("n")  # the old worker serves
    assert try_get(b, new_port) is None
    ok, why = serving(fleet, "b")
    assert not ok and "config refused" in why, why

    flag.unlink()  # a config check that passes again: b is served, the error clears
    wait_until(lambda: try_get(b, new_port), timeout=20, what="b served")
    wait_until(lambda: serving(fleet, "b")[0] and host_row(fleet).error == "", what="healed")
