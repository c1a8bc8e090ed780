"""Fixtures: the lab API server over HTTP, the official client, a real database and a pool,
and a controller factory whose controllers are stopped by the test that started them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.config import Settings
from lbprovider.controller.runner import Controller
from lbprovider.db.models import Base
from lbprovider.db.session import make_engine, session_factory
from lbprovider.kube.client import load_api_client
from lbprovider.lab.apiserver import LabAPIServer

from .helpers import NAMESPACE, make_pool

StartController = Callable[..., Controller]


@pytest.fixture
def lab_version() -> str:
    return "1.30"


@pytest.fixture
def lab(lab_version: str) -> Iterator[LabAPIServer]:
    with LabAPIServer(host="127.0.0.1", port=0, version=lab_version) as srv:
        yield srv


@pytest.fixture
def kubeconfig(lab: LabAPIServer, tmp_path: Path) -> Path:
    path: Path = lab.write_kubeconfig(tmp_path / "kubeconfig")
    return path


@pytest.fixture
def api(kubeconfig: Path) -> Iterator[k8s_client.ApiClient]:
    client = load_api_client(Settings(kubeconfig=str(kubeconfig)))
    core = k8s_client.CoreV1Api(client)
    for name in (NAMESPACE, "lbp-system"):
        body = {"metadata": {"name": name, "labels": {"team": name}}}
        core.create_namespace(body, _preload_content=False)
    yield client
    client.close()


@pytest.fixture
def core(api: k8s_client.ApiClient) -> Any:
    return k8s_client.CoreV1Api(api)


@pytest.fixture
def net(api: k8s_client.ApiClient) -> Any:
    return k8s_client.NetworkingV1Api(api)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'controller.db'}")
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def db(sqlite_engine: Engine) -> sessionmaker[Session]:
    """SQLite by default; tests that must also run on PostgreSQL take ``sessions`` instead."""
    return session_factory(sqlite_engine)


@pytest.fixture
def pool(db: sessionmaker[Session]) -> str:
    make_pool(db, "lab", "127.0.10.1-127.0.10.20")
    return "lab"


def settings_for(kubeconfig: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "kubeconfig": str(kubeconfig),
        "database_url": database_url,
        "leader_election": True,
        "lease_namespace": "lbp-system",
        "lease_duration_seconds": 3.0,
        "renew_deadline_seconds": 2.0,
        "retry_period_seconds": 0.3,
        "controller_workers": 4,
        "sticky_hold_seconds": 0,
        "quarantine_seconds": 0,
        "reconcile_backoff_max_seconds": 1.0,
        "serving_poll_seconds": 0.3,
        "dns_check_seconds": 60.0,
        "dns_timeout_seconds": 0.5,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def start_controller(kubeconfig: Path) -> Iterator[StartController]:
    """``start_controller(sessions, **settings)``: a started controller, stopped at teardown."""
    started: list[Controller] = []

    def start(
        sessions: sessionmaker[Session], *, wait_active: bool = True, **overrides: Any
    ) -> Controller:
        bind = sessions.kw["bind"]
        url = bind.url.render_as_string(hide_password=False)
        ctl = Controller(settings_for(kubeconfig, url, **overrides), sessions=sessions)
        started.append(ctl)
        ctl.start()
        if wait_active:
            assert ctl.wait_active(10), "controller did not become active"
        return ctl

    yield start
    for ctl in reversed(started):
        ctl.stop()


def decode(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data
