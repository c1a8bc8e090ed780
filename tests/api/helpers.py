"""Setup that a Kubernetes Service would cause: the controller's service call, on the same DB."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.session import transaction
from lbprovider.ipam.allocator import Request, ServiceRef
from lbprovider.services.allocations import allocate_service, release_service
from lbprovider.services.context import CONTROLLER, IPPolicy


def allocate(
    sessions: sessionmaker[Session], namespace: str, name: str, *, ip: str | None = None
) -> str:
    """Allocate like the controller does for a LoadBalancer Service; returns its address."""
    request = Request(
        service=ServiceRef(namespace, name, uid=f"uid-{name}"),
        ports=frozenset({("TCP", 80)}),
        requested_ips=(ip,) if ip else (),
    )
    with transaction(sessions) as session:
        outcome = allocate_service(
            session=session, request=request, actor=CONTROLLER, policy=IPPolicy()
        )
    assert outcome.decision.ok, outcome.decision.message
    return outcome.ips[0]


def release(sessions: sessionmaker[Session], namespace: str, name: str) -> None:
    with transaction(sessions) as session:
        release_service(
            session=session, namespace=namespace, name=name, actor=CONTROLLER, reason="deleted"
        )
