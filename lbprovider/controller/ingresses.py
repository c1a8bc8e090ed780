"""Ingresses of our IngressClass become routes in the database, recorded faithfully.

An Ingress is ours when its ``ingressClassName`` (or legacy ``kubernetes.io/ingress.class``
annotation) names an IngressClass whose ``spec.controller`` is ``LBP_INGRESS_CLASS``, or when it
names none and our IngressClass is the cluster default. Each (host, path) becomes a route with
its backend Service:port, that port's NodePort and the TLS secret for the host; a backend with
no NodePort is recorded with an ``error`` instead of being dropped. Serving at L7 is the fleet's
job; this module only records, and writes nothing to Kubernetes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from lbprovider.config import Settings
from lbprovider.controller.loadbalancers import Reader
from lbprovider.controller.result import DONE, Result
from lbprovider.controller.status import meta, spec
from lbprovider.db.session import transaction
from lbprovider.services.ingress import RouteData, delete_ingress_routes, replace_ingress_routes

LEGACY_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"


def backend_names(ingress: Mapping[str, Any]) -> set[str]:
    """Names of the Services an Ingress routes to."""
    s = spec(ingress)
    backends = [s.get("defaultBackend") or {}]
    for rule in s.get("rules") or []:
        backends += [p.get("backend") or {} for p in (rule.get("http") or {}).get("paths") or []]
    return {str(b["service"]["name"]) for b in backends if (b.get("service") or {}).get("name")}


class IngressReconciler:
    def __init__(
        self,
        *,
        settings: Settings,
        ingresses: Reader,
        classes: Reader,
        services: Reader,
        sessions: sessionmaker[Session],
    ) -> None:
        self._settings = settings
        self._ingresses = ingresses
        self._classes = classes
        self._services = services
        self._sessions = sessions

    def is_ours(self, ingress: Mapping[str, Any]) -> bool:
        name = spec(ingress).get("ingressClassName") or (
            meta(ingress).get("annotations") or {}
        ).get(LEGACY_CLASS_ANNOTATION)
        if name:
            cls = self._classes.get(str(name))
            return cls is not None and self._controls(cls)
        return any(
            self._controls(c)
            and (meta(c).get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true"
            for c in self._classes.list()
        )

    def _controls(self, cls: Mapping[str, Any]) -> bool:
        return spec(cls).get("controller") == self._settings.ingress_class

    def reconcile(self, key: str) -> Result:
        namespace, _, name = key.partition("/")
        ingress = self._ingresses.get(key)
        with transaction(self._sessions) as session:
            # Gone, or handed to another controller: its routes must not be served by us.
            if (
                ingress is None
                or not self.is_ours(ingress)
                or meta(ingress).get("deletionTimestamp")
            ):
                delete_ingress_routes(session=session, namespace=namespace, ingress_name=name)
                return DONE
            replace_ingress_routes(
                session=session,
                namespace=namespace,
                ingress_name=name,
                routes=self.routes_for(ingress),
            )
        return DONE

    def routes_for(self, ingress: Mapping[str, Any]) -> list[RouteData]:
        s = spec(ingress)
        namespace = str(meta(ingress).get("namespace"))
        secrets = {
            str(host): str(tls.get("secretName") or "")
            for tls in s.get("tls") or []
            for host in tls.get("hosts") or []
        }
        routes: list[RouteData] = []
        if s.get("defaultBackend"):
            routes.append(self._route(namespace, "", "/", "Default", s["defaultBackend"], None))
        for rule in s.get("rules") or []:
            host = str(rule.get("host") or "")
            for path in (rule.get("http") or {}).get("paths") or []:
                routes.append(
                    self._route(
                        namespace,
                        host,
                        str(path.get("path") or "/"),
                        str(path.get("pathType") or "ImplementationSpecific"),
                        path.get("backend") or {},
                        secrets.get(host) or None,
                    )
                )
        return routes

    def _route(
        self,
        namespace: str,
        host: str,
        path: str,
        path_type: str,
        backend: Mapping[str, Any],
        tls_secret: str | None,
    ) -> RouteData:
        service = backend.get("service") or {}
        port = service.get("port") or {}
        port_ref = str(port.get("number") or port.get("name") or "")
        route = RouteData(
            host=host,
            path=path,
            path_type=path_type,
            backend_service=str(service.get("name") or ""),
            backend_port=port_ref,
            tls_secret=tls_secret,
        )
        if not service:
            return _with(route, error="only Service backends are supported")
        node_port, error = self._node_port(namespace, route.backend_service, port)
        return _with(route, node_port=node_port, error=error)

    def _node_port(
        self, namespace: str, name: str, port: Mapping[str, Any]
    ) -> tuple[int | None, str]:
        svc = self._services.get(f"{namespace}/{name}")
        if svc is None:
            return None, f"backend Service {namespace}/{name} does not exist"
        for entry in spec(svc).get("ports") or []:
            if entry.get("port") == port.get("number") or (
                port.get("name") and entry.get("name") == port.get("name")
            ):
                if entry.get("nodePort"):
                    return int(entry["nodePort"]), ""
                return None, (
                    f"backend Service {namespace}/{name} port {entry.get('port')} has no NodePort "
                    f"(type {spec(svc).get('type') or 'ClusterIP'}): use NodePort or LoadBalancer"
                )
        wanted = port.get("number") or port.get("name")
        return None, f"backend Service {namespace}/{name} has no port {wanted}"


def _with(route: RouteData, **changes: Any) -> RouteData:
    from dataclasses import replace

    return replace(route, **changes)
