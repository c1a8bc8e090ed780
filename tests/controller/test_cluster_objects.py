"""Nodes, ExternalName Services and Ingresses recorded in the database for the fleet."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.session import transaction
from lbprovider.services.externalnames import get_external_name
from lbprovider.services.ingress import RouteData, routes_of
from lbprovider.services.nodes import get_node

from .conftest import StartController
from .dnsserver import DNSServer
from .helpers import NAMESPACE, create_service, delete_service, patch_service, wait_until

CONTROLLER = "lbprovider.io/haproxy"


def node_body(name: str, ip: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": extra.pop("labels", {})},
        "spec": extra.pop("spec", {}),
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ]
        },
    }
    return body


def node_row(db: sessionmaker[Session], name: str) -> tuple[Any, ...] | None:
    with transaction(db) as s:
        row = get_node(session=s, name=name)
        return None if row is None else (row.address, row.eligible, row.draining, row.reason)


def test_nodes_eligible_draining_and_address_changes(
    core: Any, db: sessionmaker[Session], start_controller: StartController
) -> None:
    start_controller(db)
    core.create_node(node_body("n1", "10.0.0.1"), _preload_content=False)
    core.create_node(
        node_body(
            "n2",
            "10.0.0.2",
            labels={"node.kubernetes.io/exclude-from-external-load-balancers": ""},
        ),
        _preload_content=False,
    )
    core.create_node(
        node_body(
            "n3",
            "10.0.0.3",
            spec={"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]},
        ),
        _preload_content=False,
    )

    assert wait_until(lambda: node_row(db, "n1") == ("10.0.0.1", True, False, ""))
    n2 = wait_until(lambda: node_row(db, "n2"))
    assert n2[1] is False and "exclude-from-external-load-balancers" in n2[3]
    n3 = wait_until(lambda: node_row(db, "n3"))
    assert n3[1] is False and "ToBeDeletedByClusterAutoscaler" in n3[3]

    core.patch_node("n1", {"spec": {"unschedulable": True}}, _preload_content=False)
    assert wait_until(lambda: node_row(db, "n1") == ("10.0.0.1", True, True, "cordoned: draining"))

    addresses = [{"type": "InternalIP", "address": "10.0.9.1"}]
    core.patch_node_status(
        "n1",
        {"status": {"addresses": addresses}},
        _content_type="application/merge-patch+json",
        _preload_content=False,
    )
    assert wait_until(lambda: (node_row(db, "n1") or ())[:1] == ("10.0.9.1",))

    core.delete_node("n3", _preload_content=False)
    assert wait_until(lambda: node_row(db, "n3") is None)


def mapping(db: sessionmaker[Session], name: str) -> dict[str, Any] | None:
    with transaction(db) as s:
        row = get_external_name(session=s, namespace=NAMESPACE, name=name)
        if row is None:
            return None
        return {
            "target": row.external_name,
            "ports": [p["port"] for p in row.ports],
            "dns": row.dns_status,
            "addresses": list(row.dns_addresses),
            "checked": row.dns_checked_at is not None,
            "removed": row.removed_at is not None,
        }


def test_external_name_recorded_with_dns_status(
    core: Any, db: sessionmaker[Session], start_controller: StartController
) -> None:
    records = {"db.example.test": ["192.0.2.10", "2001:db8::10"]}
    with DNSServer(records, silent={"slow.example.test"}) as dns:
        start_controller(db, dns_servers=[dns.address], dns_timeout_seconds=0.3)
        for name, target in (
            ("good", "db.example.test"),
            ("missing", "nope.example.test"),
            ("slow", "slow.example.test"),
        ):
            create_service(
                core, name, type="ExternalName", externalName=target, ports=((5432, "TCP"),)
            )

        def status(name: str) -> str:
            found = mapping(db, name)
            return found["dns"] if found else ""

        assert wait_until(lambda: status("good") == "resolves")
        good = mapping(db, "good")
        assert good is not None
        assert good["target"] == "db.example.test" and good["ports"] == [5432]
        assert sorted(good["addresses"]) == ["192.0.2.10", "2001:db8::10"] and good["checked"]
        assert wait_until(lambda: status("missing") == "nxdomain")
        assert wait_until(lambda: status("slow") == "timeout")

        # A new target is checked again at once; removal is recorded, not forgotten.
        patch_service(core, "missing", {"spec": {"externalName": "db.example.test"}})
        assert wait_until(lambda: status("missing") == "resolves")
        delete_service(core, "good")
        assert wait_until(lambda: (mapping(db, "good") or {}).get("removed"))


def create_ingress(net: Any, body: dict[str, Any]) -> None:
    net.create_namespaced_ingress(NAMESPACE, body, _preload_content=False)


def test_ingress_routes_recorded_with_node_ports_or_errors(
    core: Any, net: Any, db: sessionmaker[Session], start_controller: StartController
) -> None:
    net.create_ingress_class(
        {"metadata": {"name": "lbp"}, "spec": {"controller": CONTROLLER}}, _preload_content=False
    )
    net.create_ingress_class(
        {"metadata": {"name": "other"}, "spec": {"controller": "example.com/nginx"}},
        _preload_content=False,
    )
    created = create_service(core, "web", type="NodePort", ports=((80, "TCP"),))
    node_port = created["spec"]["ports"][0]["nodePort"]
    create_service(core, "internal", type="ClusterIP", ports=((8080, "TCP"),))
    start_controller(db)
    rules = [
        {
            "host": "shop.example.test",
            "http": {
                "paths": [
                    {
                        "path": "/",
                        "pathType": "Prefix",
                        "backend": {"service": {"name": "web", "port": {"number": 80}}},
                    },
                    {
                        "path": "/api",
                        "pathType": "Exact",
                        "backend": {"service": {"name": "internal", "port": {"number": 8080}}},
                    },
                ]
            },
        }
    ]
    create_ingress(
        net,
        {
            "metadata": {"name": "shop"},
            "spec": {
                "ingressClassName": "lbp",
                "tls": [{"hosts": ["shop.example.test"], "secretName": "shop-tls"}],
                "rules": rules,
            },
        },
    )
    create_ingress(
        net, {"metadata": {"name": "theirs"}, "spec": {"ingressClassName": "other", "rules": rules}}
    )

    def routes(name: str) -> list[RouteData]:
        with transaction(db) as s:
            return routes_of(session=s, namespace=NAMESPACE, ingress_name=name)

    found = wait_until(lambda: routes("shop"))
    assert found[0] == RouteData(
        host="shop.example.test",
        path="/",
        path_type="Prefix",
        backend_service="web",
        backend_port="80",
        node_port=node_port,
        tls_secret="shop-tls",
    )
    assert found[1].node_port is None and "has no NodePort" in found[1].error
    assert routes("theirs") == []

    # The backend becomes a NodePort Service: the route heals without touching the Ingress.
    patch_service(core, "internal", {"spec": {"type": "NodePort"}})
    healed = wait_until(lambda: [r for r in routes("shop") if r.path == "/api" and r.node_port])
    assert healed[0].error == ""

    net.delete_namespaced_ingress("shop", NAMESPACE, _preload_content=False)
    assert wait_until(lambda: routes("shop") == [])
