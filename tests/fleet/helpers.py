"""Records the way the controller writes them (through the services), for fleet tests."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.session import transaction
from lbprovider.services.allocations import allocate_service
from lbprovider.services.context import Actor, IPPolicy
from lbprovider.services.loadbalancers import retire_service
from lbprovider.services.nodes import NodeData, upsert_node
from lbprovider.services.pools import PoolFields, create_pool
from lbprovider.services.records import ServiceData, request_for_record, upsert_service_record

ACTOR = Actor("test")
POLICY = IPPolicy(hold=timedelta(0), quarantine=timedelta(0))
NAMESPACE = "shop"


def make_pool(sessions: sessionmaker[Session], ranges: str, name: str = "lab") -> None:
    with transaction(sessions) as s:
        create_pool(session=s, data=PoolFields(name=name, ranges=[ranges]), actor=ACTOR)


def service_data(
    name: str,
    ports: list[tuple[int, int]] | None = None,
    *,
    namespace: str = NAMESPACE,
    protocols: dict[int, str] | None = None,
    **fields: Any,
) -> ServiceData:
    protocols = protocols or {}
    return ServiceData(
        namespace=namespace,
        name=name,
        ports=[
            {"name": f"p{p}", "protocol": protocols.get(p, "TCP"), "port": p, "nodePort": np}
            for p, np in (ports or [(80, 30080)])
        ],
        **fields,
    )


def add_service(sessions: sessionmaker[Session], data: ServiceData) -> tuple[str, ...]:
    """Record the Service and allocate it an address; returns its addresses."""
    with transaction(sessions) as s:
        return put_service(s, data)


def put_service(session: Session, data: ServiceData) -> tuple[str, ...]:
    rec = upsert_service_record(session=session, data=data)
    request = request_for_record(rec)
    return allocate_service(session=session, request=request, actor=ACTOR, policy=POLICY).ips


def remove_service(sessions: sessionmaker[Session], name: str, namespace: str = NAMESPACE) -> None:
    with transaction(sessions) as s:
        retire_service(session=s, namespace=namespace, name=name, actor=ACTOR, reason="test")


def set_node(sessions: sessionmaker[Session], name: str, address: str, **kw: Any) -> None:
    with transaction(sessions) as s:
        upsert_node(session=s, data=NodeData(name=name, address=address, **kw))
