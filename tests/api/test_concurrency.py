"""Eight pipelines claiming "next free" addresses from one pool at once, over real HTTP, on
PostgreSQL: every claim gets its own address and the pool's utilisation adds up. And two
reservation sweepers racing release each expired reservation once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.api.sweeper import SWEEPER
from lbprovider.db.models import LedgerEntry, Reservation
from lbprovider.db.session import session_factory, transaction
from lbprovider.services.context import Actor
from lbprovider.services.reservations import expire_reservations
from tests.api.conftest import Api, create_pool, start_api

CLIENTS = 8
PER_CLIENT = 12


@pytest.fixture
def pg_api(pg_engine: Engine) -> Iterator[Api]:
    from tests.conftest import _truncate

    _truncate(pg_engine)
    yield from start_api(pg_engine, session_factory(pg_engine))
    _truncate(pg_engine)


def claim(url: str, secret: str, barrier: threading.Barrier, owner: str) -> list[str]:
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=60
    ) as client:
        barrier.wait()
        ips = []
        for _ in range(PER_CLIENT):
            r = client.post("/api/v1/reservations", json={"pool": "web", "owner": owner})
            assert r.status_code == 201, r.text
            ips.append(r.json()["ip"])
        return ips


@pytest.mark.postgres
def test_eight_clients_claiming_next_free_get_distinct_addresses(pg_api: Api) -> None:
    create_pool(pg_api.write, ranges=["127.2.0.0/24"])
    barrier = threading.Barrier(CLIENTS)
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [
            pool.submit(claim, pg_api.url, pg_api.secrets["write"], barrier, f"ci-{i}")
            for i in range(CLIENTS)
        ]
        results = [f.result() for f in futures]
    every = [ip for ips in results for ip in ips]
    assert len(every) == CLIENTS * PER_CLIENT
    assert len(set(every)) == len(every), "two clients got the same address"
    (usage,) = pg_api.read.get("/api/v1/pools/web").json()["utilisation"]
    assert usage["reserved"] == CLIENTS * PER_CLIENT
    assert usage["used"] == 0
    assert usage["free"] == usage["total"] - CLIENTS * PER_CLIENT == 256 - 96
    listed = pg_api.read.get("/api/v1/reservations", params={"limit": 1}).json()
    assert listed["count"] == CLIENTS * PER_CLIENT


@pytest.mark.postgres
def test_racing_sweepers_release_each_expiry_once(pg_api: Api) -> None:
    create_pool(pg_api.write, ranges=["127.2.0.0/24"])
    expiry = datetime.now(UTC) + timedelta(hours=1)
    for _ in range(20):
        body = {"pool": "web", "owner": "ci", "expires_at": expiry.isoformat()}
        assert pg_api.write.post("/api/v1/reservations", json=body).status_code == 201
    sessions: sessionmaker[Session] = pg_api.sessions
    barrier = threading.Barrier(4)

    def sweep(_: int) -> int:
        """What every API replica's sweeper does, an hour later."""
        with transaction(sessions) as session:
            barrier.wait()
            return expire_reservations(
                session=session, actor=Actor(SWEEPER), now=expiry + timedelta(seconds=1)
            )

    with ThreadPoolExecutor(4) as pool:
        released = sum(pool.map(sweep, range(4)))
    assert released == 20
    with transaction(sessions) as session:
        assert session.scalar(select(func.count()).select_from(Reservation)) == 0
        unreserved = session.scalar(
            select(func.count()).select_from(LedgerEntry).where(LedgerEntry.action == "unreserved")
        )
    assert unreserved == 20, "an expiry was written to the ledger more than once"
