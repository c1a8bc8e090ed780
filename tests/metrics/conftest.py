"""Fixtures for the metrics story: the real API app served over HTTP, the lab API server, the
official client, and controllers that put their metrics in the app's registry (as ``serve``
does) or in their own (as ``lbprovider controller`` does)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from kubernetes import client as k8s_client
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.api.app import create_app
from lbprovider.config import Settings
from lbprovider.controller.runner import Controller
from lbprovider.kube.client import load_api_client
from lbprovider.lab.apiserver import LabAPIServer
from tests.api.conftest import LiveServer, api_settings
from tests.controller.conftest import settings_for
from tests.controller.helpers import NAMESPACE

Sample = tuple[str, dict[str, str], float]


def scrape(url: str) -> list[Sample]:
    """``GET url`` over HTTP, parsed by prometheus_client's own parser."""
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    ]


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The one sample named ``name`` whose labels include ``labels``; None if absent."""
    found = [v for n, ls, v in samples if n == name and labels.items() <= ls.items()]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


@dataclass
class Served:
    url: str
    app: FastAPI

    def scrape(self) -> list[Sample]:
        return scrape(self.url + "/metrics")


@pytest.fixture
def served(engine: Engine) -> Iterator[Served]:
    url = engine.url.render_as_string(hide_password=False)
    app = create_app(api_settings(url), engine=engine)
    server = LiveServer(app).start()
    try:
        yield Served(server.url, app)
    finally:
        server.stop()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Path]:
    """The lab API server; yields a kubeconfig for it with our namespaces created."""
    with LabAPIServer(host="127.0.0.1", port=0, version="1.30") as srv:
        path: Path = srv.write_kubeconfig(tmp_path / "kubeconfig")
        client = load_api_client(Settings(kubeconfig=str(path)))
        core = k8s_client.CoreV1Api(client)
        for name in (NAMESPACE, "lbp-system"):
            core.create_namespace({"metadata": {"name": name}}, _preload_content=False)
        client.close()
        yield path


@pytest.fixture
def core(lab: Path) -> Iterator[Any]:
    client = load_api_client(Settings(kubeconfig=str(lab)))
    yield k8s_client.CoreV1Api(client)
    client.close()


StartController = Callable[..., Controller]


@pytest.fixture
def start_controller(lab: Path, sessions: sessionmaker[Session]) -> Iterator[StartController]:
    """``start_controller(registry)``: a started, active controller; stopped at teardown."""
    started: list[Controller] = []

    def start(registry: CollectorRegistry | None) -> Controller:
        url = sessions.kw["bind"].url.render_as_string(hide_password=False)
        ctl = Controller(settings_for(lab, url), sessions=sessions, registry=registry)
        started.append(ctl)
        ctl.start()
        assert ctl.wait_active(10), "controller did not become active"
        return ctl

    yield start
    for ctl in reversed(started):
        ctl.stop()
