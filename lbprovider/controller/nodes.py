"""Reconcile one Node into the database: eligible for traffic, draining, and its address.

Eligible means not being deleted, not labelled
``node.kubernetes.io/exclude-from-external-load-balancers`` and not tainted
``ToBeDeletedByClusterAutoscaler``; a cordoned node stays eligible but is marked draining so
the fleet stops sending it new connections. The address is the configured type (InternalIP by
default), falling back to the other type. This module writes nothing to Kubernetes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from lbprovider.config import Settings
from lbprovider.controller.loadbalancers import Reader
from lbprovider.controller.result import DONE, Result
from lbprovider.controller.status import meta, spec
from lbprovider.db.session import transaction
from lbprovider.services.nodes import NodeData, delete_node, upsert_node

logger = logging.getLogger(__name__)

EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
AUTOSCALER_TAINT = "ToBeDeletedByClusterAutoscaler"
ADDRESS_TYPES = ("InternalIP", "ExternalIP")


def eligibility(node: Mapping[str, Any]) -> tuple[bool, str]:
    """(eligible, why not) for a Node object."""
    if meta(node).get("deletionTimestamp"):
        return False, "node is being deleted"
    if EXCLUDE_LABEL in (meta(node).get("labels") or {}):
        return False, f"labelled {EXCLUDE_LABEL}"
    if any(t.get("key") == AUTOSCALER_TAINT for t in spec(node).get("taints") or []):
        return False, f"tainted {AUTOSCALER_TAINT} (cluster autoscaler removes it)"
    return True, ""


def preferred_address(addresses: list[dict[str, str]], preferred: str) -> str | None:
    order = [preferred, *(t for t in ADDRESS_TYPES if t != preferred)]
    for wanted in order:
        for entry in addresses:
            if entry.get("type") == wanted and entry.get("address"):
                return entry["address"]
    return None


def node_data(node: Mapping[str, Any], address_type: str) -> NodeData:
    addresses = [
        {"type": str(a.get("type") or ""), "address": str(a.get("address") or "")}
        for a in (node.get("status") or {}).get("addresses") or []
    ]
    eligible, reason = eligibility(node)
    draining = bool(spec(node).get("unschedulable"))
    if eligible and draining:
        reason = "cordoned: draining"
    return NodeData(
        name=str(meta(node).get("name")),
        address=preferred_address(addresses, address_type),
        addresses=addresses,
        labels={str(k): str(v) for k, v in (meta(node).get("labels") or {}).items()},
        eligible=eligible,
        draining=draining,
        reason=reason,
    )


class NodeReconciler:
    def __init__(
        self, *, settings: Settings, nodes: Reader, sessions: sessionmaker[Session]
    ) -> None:
        self._settings = settings
        self._nodes = nodes
        self._sessions = sessions

    def reconcile(self, name: str) -> Result:
        node = self._nodes.get(name)
        with transaction(self._sessions) as session:
            # Gone from the cluster: the fleet must stop using it.
            if node is None:
                changed = delete_node(session=session, name=name)
            else:
                data = node_data(node, self._settings.node_address_type)
                changed = upsert_node(session=session, data=data)
        if changed:
            logger.info(
                "node recorded", extra={"event": "node", "node": name, "gone": node is None}
            )
        return DONE
