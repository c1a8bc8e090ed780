"""Ingress routes recorded for the fleet: one row per (host, path) of an Ingress of our class.

The controller replaces an Ingress's routes as a whole on every change (they are few per
Ingress) and deletes them when the Ingress goes or leaves our class. A route whose backend has
no NodePort is kept with its ``error`` so an operator sees why it is not served. Nothing here
reads Kubernetes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from lbprovider.db.models import IngressRoute


@dataclass(frozen=True)
class RouteData:
    host: str = ""
    path: str = "/"
    path_type: str = "Prefix"
    backend_service: str = ""
    backend_port: str = ""
    node_port: int | None = None
    tls_secret: str | None = None
    error: str = ""


def _rows(session: Session, namespace: str, ingress_name: str) -> list[IngressRoute]:
    return list(
        session.scalars(
            select(IngressRoute)
            .where(IngressRoute.namespace == namespace, IngressRoute.ingress_name == ingress_name)
            .order_by(IngressRoute.id)
        )
    )


def _as_data(row: IngressRoute) -> RouteData:
    return RouteData(
        host=row.host,
        path=row.path,
        path_type=row.path_type,
        backend_service=row.backend_service,
        backend_port=row.backend_port,
        node_port=row.node_port,
        tls_secret=row.tls_secret,
        error=row.error,
    )


def replace_ingress_routes(
    *, session: Session, namespace: str, ingress_name: str, routes: list[RouteData]
) -> bool:
    """Make the stored routes of the Ingress equal ``routes``; True when anything changed."""
    rows = _rows(session, namespace, ingress_name)
    if [_as_data(r) for r in rows] == routes:
        return False
    for row in rows:
        session.delete(row)
    session.flush()
    for route in routes:
        session.add(IngressRoute(namespace=namespace, ingress_name=ingress_name, **asdict(route)))
    session.flush()
    return True


def delete_ingress_routes(*, session: Session, namespace: str, ingress_name: str) -> bool:
    result = session.execute(
        delete(IngressRoute).where(
            IngressRoute.namespace == namespace, IngressRoute.ingress_name == ingress_name
        )
    )
    return bool(getattr(result, "rowcount", 0))


def ingress_keys(*, session: Session) -> set[str]:
    """``namespace/name`` of every Ingress with stored routes."""
    rows = session.execute(select(IngressRoute.namespace, IngressRoute.ingress_name).distinct())
    return {f"{ns}/{name}" for ns, name in rows}


def routes_of(*, session: Session, namespace: str, ingress_name: str) -> list[RouteData]:
    return [_as_data(r) for r in _rows(session, namespace, ingress_name)]
