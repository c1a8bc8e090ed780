"""Small builders shared by the services tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.models import LedgerEntry
from lbprovider.db.session import transaction
from lbprovider.ipam.allocator import Request, ServiceRef
from lbprovider.services.allocations import Outcome, allocate_service
from lbprovider.services.context import Actor, IPPolicy
from lbprovider.services.pools import PoolFields, create_pool

ACTOR = Actor("test", request_id="req-1")
POLICY = IPPolicy()

UNIT: list[Any] = [transaction]
"""The unit of work ``allocate`` runs in: ``transaction`` (an ORM session), or
``connection_transaction`` where a test module swaps it (``test_on_a_connection``)."""


def make_pool(sessions: sessionmaker[Session], name: str, *ranges: str, **kw: object) -> None:
    with transaction(sessions) as s:
        create_pool(
            session=s,
            data=PoolFields(name=name, ranges=list(ranges), **kw),  # type: ignore[arg-type]
            actor=ACTOR,
        )


def svc_request(
    name: str, ns: str = "default", ports: tuple[int, ...] = (80,), **kw: object
) -> Request:
    return Request(
        service=ServiceRef(ns, name, uid=f"uid-{ns}-{name}"),
        ports=frozenset(("TCP", p) for p in ports),
        **kw,
    )  # type: ignore[arg-type]


def allocate(sessions: sessionmaker[Session], name: str, **kw: object) -> Outcome:
    with UNIT[0](sessions) as s:
        return allocate_service(
            session=s, request=svc_request(name, **kw), actor=ACTOR, policy=POLICY
        )


def ledger(sessions: sessionmaker[Session], **where: str) -> list[tuple[str, str, str]]:
    with sessions() as s:
        q = select(LedgerEntry).order_by(LedgerEntry.id)
        for k, v in where.items():
            q = q.where(getattr(LedgerEntry, k) == v)
        return [(e.action, e.ip, e.service_name) for e in s.scalars(q)]


def count(sessions: sessionmaker[Session], model: type) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


@contextmanager
def statements(sessions: sessionmaker[Session]) -> Iterator[list[str]]:
    """Every SQL statement the engine of ``sessions`` runs inside the block, as sent."""
    engine = sessions.kw["bind"]
    assert isinstance(engine, Engine)
    seen: list[str] = []

    def record(_c: Any, _cur: Any, statement: str, *_rest: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)
