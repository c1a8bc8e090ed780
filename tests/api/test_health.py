"""Probes, metrics and the OpenAPI document: /healthz, /readyz (database reachable and
migrations at head), /metrics computed at scrape time, every error documented as problem+json."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from lbprovider.api.app import create_app
from lbprovider.db import migrate
from lbprovider.db.session import make_engine
from tests.api.conftest import Api, api_settings, create_pool, serve
from tests.api.helpers import allocate


@pytest.fixture
def migrated_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'migrated.db'}"
    migrate.upgrade(url)
    return url


def _get(url: str, path: str) -> Iterator[httpx.Response]:
    engine = make_engine(url)
    try:
        for server in serve(create_app(api_settings(url), engine=engine)):
            yield httpx.get(server.url + path, timeout=10)
    finally:
        engine.dispose()


def test_ready_when_migrated_to_head(migrated_url: str) -> None:
    (r,) = _get(migrated_url, "/readyz")
    assert r.status_code == 200, r.text
    head = migrate.head_revision()  # the newest revision file, whichever it is
    assert head is not None
    assert r.json() == {"status": "ready", "revision": head}


def test_not_ready_when_migrations_are_behind(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    engine.dispose()
    (r,) = _get(migrated_url, "/readyz")
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    assert "0000" in r.json()["detail"] and r.json()["field"] == "database"


def test_not_ready_when_never_migrated(api: Api) -> None:
    r = httpx.get(api.url + "/readyz")
    assert r.status_code == 503
    assert "none" in r.json()["detail"]
    assert httpx.get(api.url + "/healthz").json() == {"status": "ok"}


def test_not_ready_when_the_database_is_unreachable(tmp_path: Path) -> None:
    (r,) = _get(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}", "/readyz")
    assert r.status_code == 503
    assert r.json()["detail"] == "the database is unreachable"


def _samples(body: str) -> dict[str, float]:
    out = {}
    for line in body.splitlines():
        if line.startswith("lbprovider_"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_count_addresses_per_pool_and_family(api: Api) -> None:
    create_pool(api.write, ranges=["127.1.0.0/29", "fd00::/120"])
    allocate(api.sessions, "shop", "front")
    api.write.post("/api/v1/reservations", json={"pool": "web", "owner": "ci", "family": 4})
    r = httpx.get(api.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = _samples(r.text)

    def value(family: int, state: str) -> float:
        return samples[f'lbprovider_pool_addresses{{family="{family}",pool="web",state="{state}"}}']

    assert (value(4, "total"), value(4, "used"), value(4, "reserved"), value(4, "free")) == (
        8.0,
        1.0,
        1.0,
        6.0,
    )
    assert value(6, "total") == 256.0 and value(6, "used") == 0.0
    assert samples["lbprovider_database_up"] == 1.0
    allocate(api.sessions, "shop", "back")
    assert (
        _samples(httpx.get(api.url + "/metrics").text)[
            'lbprovider_pool_addresses{family="4",pool="web",state="used"}'
        ]
        == 2.0
    ), "computed at scrape time"


def test_openapi_documents_every_error_as_problem_json(api: Api) -> None:
    r = httpx.get(api.url + "/api/v1/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            codes = {int(c) for c in op["responses"]}
            for code in {c for c in codes if c >= 400}:
                content = op["responses"][str(code)]["content"]
                assert list(content) == ["application/problem+json"], (path, method, code)
            if path.startswith("/api/v1/"):
                assert op["security"] == [{"BearerToken": []}], (path, method)
                assert {401, 403, 422, 429} <= codes, (path, method)
    assert httpx.get(api.url + "/api/v1/docs").status_code == 200
