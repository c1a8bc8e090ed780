"""Service records: the DB mirror of a LoadBalancer Service that the fleet and dashboard read.

The controller writes them; pool edits read them back to rebuild an allocation request when a
forced edit must move a Service.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session

from lbprovider.db.models import Allocation, ServiceRecord
from lbprovider.ipam.allocator import Request, ServiceRef
from lbprovider.services.state import port_set


@dataclass
class ServiceData:
    namespace: str
    name: str
    uid: str = ""
    load_balancer_class: str | None = None
    ports: list[dict[str, Any]] = field(default_factory=list)
    external_traffic_policy: str = "Cluster"
    health_check_node_port: int | None = None
    source_ranges: list[str] = field(default_factory=list)
    session_affinity: str = "None"
    ip_families: list[str] = field(default_factory=lambda: ["IPv4"])
    ip_family_policy: str = "SingleStack"
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


# Built once: constructing the statement costs more than running it on the reconcile path.
RECORD_BY_KEY = select(ServiceRecord).where(
    ServiceRecord.namespace == bindparam("ns"), ServiceRecord.name == bindparam("name")
)


def get_record(session: Session, namespace: str, name: str) -> ServiceRecord | None:
    return session.scalar(RECORD_BY_KEY, {"ns": namespace, "name": name})


def upsert_service_record(
    *, session: Session, data: ServiceData, flush: bool = True
) -> ServiceRecord:
    """Create or update the record; only changed columns are written. ``flush=False`` leaves
    the write to the transaction's next flush (the controller sets the condition too, so a
    new record costs one INSERT and a changed one one UPDATE)."""
    rec = get_record(session, data.namespace, data.name)
    if rec is None:
        # The column defaults, set now: the caller reads them before anything is flushed.
        rec = ServiceRecord(
            namespace=data.namespace,
            name=data.name,
            condition_reason="",
            condition_message="",
            serving=False,
            serving_message="",
        )
        session.add(rec)
    for key, value in vars(data).items():
        if getattr(rec, key, None) != value:
            setattr(rec, key, value)
    if flush:
        session.flush()
    return rec


def record_matches(rec: object, data: ServiceData) -> bool:
    """Whether ``upsert_service_record(data)`` would leave ``rec`` unchanged (a record, or a
    row with the same column names)."""
    return all(getattr(rec, key, None) == value for key, value in vars(data).items())


def delete_service_record(*, session: Session, namespace: str, name: str) -> None:
    session.execute(
        delete(ServiceRecord).where(
            ServiceRecord.namespace == namespace, ServiceRecord.name == name
        )
    )


def set_condition(
    *,
    session: Session,
    namespace: str,
    name: str,
    reason: str,
    message: str,
    record: ServiceRecord | None = None,
) -> None:
    """Record the allocation condition; ``record``, when the caller holds it, saves a read."""
    rec = record if record is not None else get_record(session, namespace, name)
    if rec is not None and (rec.condition_reason, rec.condition_message) != (reason, message):
        rec.condition_reason = reason
        rec.condition_message = message


FAMILY = {"IPv4": 4, "IPv6": 6}


def request_for_record(rec: ServiceRecord) -> Request:
    """The allocation request a Service's record stands for."""
    opts = rec.options or {}
    return Request(
        service=ServiceRef(rec.namespace, rec.name, rec.uid),
        ports=frozenset((str(p.get("protocol", "TCP")), int(p["port"])) for p in rec.ports),
        namespace_labels=dict(opts.get("namespace_labels", {})),
        service_labels=dict(rec.labels),
        requested_ips=tuple(opts.get("ips", ())),
        requested_pool=opts.get("pool"),
        sharing_key=opts.get("sharing_key"),
        families=tuple(FAMILY[f] for f in rec.ip_families if f in FAMILY) or (4,),
        family_policy=rec.ip_family_policy,
    )


def request_for_allocation(session: Session, row: Allocation) -> Request:
    """The request behind a live allocation: from its Service record, else from the row."""
    rec = get_record(session, row.service_namespace, row.service_name)
    if rec is not None:
        return request_for_record(rec)
    return Request(
        service=ServiceRef(row.service_namespace, row.service_name, row.service_uid),
        ports=port_set(row.ports),
        sharing_key=row.sharing_key,
        families=(row.family,),
    )
