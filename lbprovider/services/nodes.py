"""Cluster nodes as the fleet needs them: which may carry traffic, which are draining, where.

The controller mirrors every Node here; the fleet compiler reads these rows to build the
backend server list. One call is one unit of work inside the caller's transaction. Nothing here
reads Kubernetes or decides eligibility: the controller does that from the Node object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from lbprovider.db.models import Node


@dataclass
class NodeData:
    name: str
    address: str | None = None
    addresses: list[dict[str, str]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    eligible: bool = True
    draining: bool = False
    reason: str = ""


def upsert_node(*, session: Session, data: NodeData) -> bool:
    """Create or update the node's row; True when anything changed."""
    row = session.scalar(select(Node).where(Node.name == data.name))
    if row is None:
        row = Node(name=data.name)
        session.add(row)
    changed = row.id is None
    for key, value in vars(data).items():
        if getattr(row, key, None) != value:
            setattr(row, key, value)
            changed = True
    session.flush()
    return changed


def delete_node(*, session: Session, name: str) -> bool:
    """Forget a node that left the cluster; True when a row was removed."""
    result: Any = session.execute(delete(Node).where(Node.name == name))
    return bool(result.rowcount)


def node_names(*, session: Session) -> set[str]:
    return set(session.scalars(select(Node.name)))


def get_node(*, session: Session, name: str) -> Node | None:
    return session.scalar(select(Node).where(Node.name == name))
