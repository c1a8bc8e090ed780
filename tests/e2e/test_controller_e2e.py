"""The controller stories against a real cluster (opt-in: set LBP_E2E_KUBECONFIG).

Each run works in its own namespace, which it deletes at the end. Pools come from
LBP_E2E_POOL (a range the cluster's network can use, default 127.0.200.1-127.0.200.40: the
addresses are only recorded, nothing binds them). Skipped when LBP_E2E_KUBECONFIG is unset.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.config import Settings
from lbprovider.controller.runner import Controller
from lbprovider.db.models import Base
from lbprovider.db.session import make_engine, session_factory
from lbprovider.kube.client import load_api_client
from tests.controller.helpers import (
    condition,
    create_service,
    db_ips,
    delete_service,
    get_service,
    ip_of,
    ledger,
    make_pool,
    patch_service,
    wait_until,
)

KUBECONFIG = os.environ.get("LBP_E2E_KUBECONFIG")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not KUBECONFIG, reason="LBP_E2E_KUBECONFIG is not set"),
]


@pytest.fixture
def namespace() -> str:
    return f"lbp-e2e-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def core(namespace: str) -> Iterator[Any]:
    api = load_api_client(Settings(kubeconfig=KUBECONFIG))
    core = k8s_client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}}, _preload_content=False)
    yield core
    core.delete_namespace(namespace, _preload_content=False)
    api.close()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'e2e.db'}")
    Base.metadata.create_all(engine)
    sessions = session_factory(engine)
    make_pool(sessions, "e2e", os.environ.get("LBP_E2E_POOL", "127.0.200.1-127.0.200.40"))
    yield sessions
    engine.dispose()


@pytest.fixture
def controller(
    db: sessionmaker[Session], namespace: str, core: Any, tmp_path: Path
) -> Iterator[Controller]:
    url = db.kw["bind"].url.render_as_string(hide_password=False)
    settings = Settings(
        kubeconfig=KUBECONFIG,
        database_url=url,
        lease_namespace=namespace,
        lease_name=f"lbprovider-e2e-{namespace}",
        loadbalancer_class="lbprovider.io/e2e",
        handle_default_class=False,
        sticky_hold_seconds=0,
        quarantine_seconds=0,
    )
    ctl = Controller(settings, sessions=db).start()
    assert ctl.wait_active(30)
    yield ctl
    ctl.stop()


CLASS = {"lb_class": "lbprovider.io/e2e"}


def test_create_gets_ip_then_type_change_releases(
    core: Any, db: sessionmaker[Session], namespace: str, controller: Controller
) -> None:
    create_service(core, "web", namespace=namespace, **CLASS)
    ip = wait_until(lambda: ip_of(core, "web", namespace), timeout=30)
    assert ip and db_ips(db, "web", namespace) == [ip]
    svc = get_service(core, "web", namespace)
    assert (condition(svc, "lbprovider.io/IPAllocated") or {}).get("status") == "True"

    patch_service(core, "web", {"spec": {"type": "ClusterIP"}}, namespace=namespace)
    assert wait_until(
        lambda: not (get_service(core, "web", namespace) or {})["metadata"].get("finalizers"),
        timeout=30,
    )
    assert db_ips(db, "web", namespace) == []
    assert ledger(db, "web")[-1] == ("released", ip)


def test_other_class_is_never_written(core: Any, namespace: str, controller: Controller) -> None:
    created = create_service(core, "theirs", namespace=namespace, lb_class="example.com/other")
    create_service(core, "ours", namespace=namespace, **CLASS)
    assert wait_until(lambda: ip_of(core, "ours", namespace), timeout=30)
    theirs = get_service(core, "theirs", namespace) or {}
    assert not theirs["metadata"].get("finalizers")
    assert condition(theirs, "lbprovider.io/IPAllocated") is None
    assert created["metadata"]["uid"] == theirs["metadata"]["uid"]


def test_requested_ip_taken_and_deletion_frees_it(
    core: Any, db: sessionmaker[Session], namespace: str, controller: Controller
) -> None:
    first = create_service(core, "first", namespace=namespace, **CLASS)
    ip = wait_until(lambda: ip_of(core, "first", namespace), timeout=30)
    create_service(
        core, "second", namespace=namespace, annotations={"lbprovider.io/ips": ip}, **CLASS
    )

    def reason() -> str:
        cond = condition(get_service(core, "second", namespace), "lbprovider.io/IPAllocated")
        return (cond or {}).get("reason", "")

    assert wait_until(lambda: reason() == "AlreadyAllocated", timeout=30)
    delete_service(core, "first", namespace=namespace)
    assert wait_until(lambda: ip_of(core, "second", namespace), timeout=30) == ip
    assert json.dumps(first)  # the deleted Service's body was a real API answer


def test_restart_keeps_ips(
    core: Any, db: sessionmaker[Session], namespace: str, controller: Controller
) -> None:
    names = [f"svc-{i}" for i in range(10)]
    for name in names:
        create_service(core, name, namespace=namespace, **CLASS)
    assert wait_until(lambda: all(ip_of(core, n, namespace) for n in names), timeout=60)
    before = {n: ip_of(core, n, namespace) for n in names}
    controller.stop()

    again = Controller(controller.settings, sessions=db).start()
    try:
        assert again.wait_active(30)
        assert wait_until(again.idle, timeout=60)
        assert {n: ip_of(core, n, namespace) for n in names} == before
    finally:
        again.stop()
