"""deploy/: every manifest is valid against the Kubernetes schemas, and the RBAC rules grant
exactly what lbprovider/kube calls — nothing more, nothing less."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = [ROOT / "deploy" / "lbprovider.yaml", ROOT / "deploy" / "agent" / "daemonset.yaml"]

# client method prefix → RBAC verbs (a list by our caches is followed by a watch)
VERBS = {
    "list": {"list", "watch"},
    "read": {"get"},
    "create": {"create"},
    "patch": {"patch"},
    "replace": {"update"},
    "delete": {"delete"},
}
RESOURCES = {  # client resource word → (apiGroup, plural)
    "service": ("", "services"),
    "service_status": ("", "services/status"),
    "node": ("", "nodes"),
    "namespace": ("", "namespaces"),
    "event": ("", "events"),
    "lease": ("coordination.k8s.io", "leases"),
    "endpoint_slice": ("discovery.k8s.io", "endpointslices"),
    "ingress": ("networking.k8s.io", "ingresses"),
    "ingress_status": ("networking.k8s.io", "ingresses/status"),
    "ingress_class": ("networking.k8s.io", "ingressclasses"),
}
CALL = re.compile(
    r"\.(list|read|create|patch|replace|delete)_(namespaced_)?([a-z_]+?)"
    r"(_for_all_namespaces)?\b"
)


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("version", ["1.28.0", "1.30.0"])
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid(path: Path, version: str) -> None:
    for doc in documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


def code_permissions() -> set[tuple[str, str, str]]:
    """(group, resource, verb) for every Kubernetes call in lbprovider/kube."""
    needed: set[tuple[str, str, str]] = set()
    for source in (ROOT / "lbprovider" / "kube").glob("*.py"):
        for verb, namespaced, word, _ in CALL.findall(source.read_text()):
            if word not in RESOURCES:
                continue  # our own helpers (patch_service_status ...) call the client below
            group, resource = RESOURCES[word]
            if resource == "leases" and not namespaced:
                continue
            needed |= {(group, resource, v) for v in VERBS[verb]}
    return needed


def granted(kind: str) -> set[tuple[str, str, str]]:
    out: set[tuple[str, str, str]] = set()
    for doc in documents(MANIFESTS[0]):
        if doc["kind"] == kind:
            for rule in doc["rules"]:
                for g in rule["apiGroups"]:
                    out |= {(g, r, v) for r in rule["resources"] for v in rule["verbs"]}
    return out


def test_rbac_grants_exactly_what_the_code_calls() -> None:
    needed = code_permissions()
    assert ("", "services/status", "patch") in needed, "the scan found the controller's calls"
    cluster, namespaced = granted("ClusterRole"), granted("Role")
    lease_rules = {p for p in needed if p[1] == "leases"}
    assert lease_rules <= namespaced, "leader election: leases in its own namespace only"
    assert not any(p[1] == "leases" for p in cluster)
    assert needed - lease_rules <= cluster, f"missing: {needed - lease_rules - cluster}"
    assert cluster <= needed, f"granted but never called: {cluster - needed}"
    assert namespaced <= lease_rules, f"granted but never called: {namespaced - lease_rules}"


def test_controller_pods_are_non_root_with_probes() -> None:
    deploy = next(d for d in documents(MANIFESTS[0]) if d["kind"] == "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"]
    env = {e["name"]: e for e in container["env"]}
    assert env["LBP_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "lbprovider-db"


def test_ingress_class_and_agent_without_kubernetes_access() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in documents(MANIFESTS[0])}
    assert ("IngressClass", "lbprovider") in kinds
    ic = next(d for d in documents(MANIFESTS[0]) if d["kind"] == "IngressClass")
    assert ic["spec"]["controller"] == "lbprovider.io/haproxy"
    ds = next(d for d in documents(MANIFESTS[1]) if d["kind"] == "DaemonSet")
    assert ds["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
