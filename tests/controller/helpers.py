"""Builders and probes shared by the controller tests: Services through the API, DB reads."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.models import Allocation, IPLease, LedgerEntry
from lbprovider.db.session import transaction
from lbprovider.services.context import Actor
from lbprovider.services.pools import PoolFields, create_pool

NAMESPACE = "lbp-test"
CLASS = "lbprovider.io/haproxy"
FINALIZER = "service.kubernetes.io/load-balancer-cleanup"


def make_pool(sessions: sessionmaker[Session], name: str, *ranges: str, **kw: Any) -> None:
    with transaction(sessions) as s:
        create_pool(
            session=s, data=PoolFields(name=name, ranges=list(ranges), **kw), actor=Actor("test")
        )


def service_body(
    name: str,
    *,
    namespace: str = NAMESPACE,
    ports: tuple[tuple[int, str], ...] = ((80, "TCP"),),
    annotations: dict[str, str] | None = None,
    lb_class: str | None = None,
    type: str = "LoadBalancer",
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": name},
            "annotations": annotations or {},
        },
        "spec": {
            "type": type,
            "selector": {"app": name},
            "ports": [
                {"name": f"p{port}-{proto.lower()}", "port": port, "protocol": proto}
                for port, proto in ports
            ],
            **spec,
        },
    }
    if lb_class:
        body["spec"]["loadBalancerClass"] = lb_class
    return body


def create_service(core: Any, name: str, **kw: Any) -> dict[str, Any]:
    body = service_body(name, **kw)
    namespace = body["metadata"]["namespace"]
    response = core.create_namespaced_service(namespace, body, _preload_content=False)
    created: dict[str, Any] = json.loads(response.data)
    return created


def get_service(core: Any, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
    try:
        response = core.read_namespaced_service(name, namespace, _preload_content=False)
    except Exception as exc:
        if getattr(exc, "status", None) == 404:
            return None
        raise
    found: dict[str, Any] = json.loads(response.data)
    return found


def patch_service(core: Any, name: str, body: dict[str, Any], namespace: str = NAMESPACE) -> None:
    core.patch_namespaced_service(
        name,
        namespace,
        body,
        _content_type="application/merge-patch+json",
        _preload_content=False,
    )


def delete_service(core: Any, name: str, namespace: str = NAMESPACE) -> None:
    core.delete_namespaced_service(name, namespace, _preload_content=False)


def status_ips(svc: dict[str, Any] | None) -> list[str]:
    if svc is None:
        return []
    ingress = (svc.get("status") or {}).get("loadBalancer", {}).get("ingress") or []
    return [e["ip"] for e in ingress if e.get("ip")]


def ip_of(core: Any, name: str, namespace: str = NAMESPACE) -> str | None:
    ips = status_ips(get_service(core, name, namespace))
    return ips[0] if ips else None


def condition(svc: dict[str, Any] | None, type: str) -> dict[str, Any] | None:
    for cond in ((svc or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type:
            return dict(cond)
    return None


def events_for(core: Any, name: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    response = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}", _preload_content=False
    )
    items: list[dict[str, Any]] = json.loads(response.data)["items"]
    return items


def event_reasons(core: Any, name: str, namespace: str = NAMESPACE) -> list[str]:
    return [e["reason"] for e in events_for(core, name, namespace)]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until truthy or ``timeout``; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def db_ips(sessions: sessionmaker[Session], name: str, namespace: str = NAMESPACE) -> list[str]:
    with transaction(sessions) as s:
        return list(
            s.scalars(
                select(Allocation.ip).where(
                    Allocation.active,
                    Allocation.service_namespace == namespace,
                    Allocation.service_name == name,
                )
            )
        )


def active_rows(sessions: sessionmaker[Session]) -> list[tuple[str, str, str]]:
    """(namespace, name, ip) of every live allocation."""
    with transaction(sessions) as s:
        rows = s.execute(
            select(Allocation.service_namespace, Allocation.service_name, Allocation.ip).where(
                Allocation.active
            )
        )
        return [(ns, n, ip) for ns, n, ip in rows]


def lease_ips(sessions: sessionmaker[Session]) -> list[str]:
    with transaction(sessions) as s:
        return list(s.scalars(select(IPLease.ip)))


def ledger(sessions: sessionmaker[Session], name: str | None = None) -> list[tuple[str, str]]:
    """(action, ip) of the ledger, oldest first, optionally for one Service."""
    with transaction(sessions) as s:
        query = select(LedgerEntry.action, LedgerEntry.ip).order_by(LedgerEntry.id)
        if name:
            query = query.where(LedgerEntry.service_name == name)
        return [(a, ip) for a, ip in s.execute(query)]
