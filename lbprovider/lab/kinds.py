"""The resource kinds the lab API server serves, with the per-kind facts a real server encodes.

For each kind: its group/version, plural and scope, whether it has a `/status` subresource,
whether the server keeps `metadata.generation` (real strategies differ: Ingresses and
EndpointSlices have it, Services and Nodes do not), which field selectors it answers, which lists a
strategic merge patch merges by key, and how its names are validated. The lab serves exactly
these kinds; it must not grow a generic "accept any resource" path, because a controller
asking for something a real cluster lacks should fail here too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lbprovider.lab.patch import ListStrategy

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
FieldGetter = Callable[[JSON], str]

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _path(*keys: str) -> FieldGetter:
    def get(obj: JSON) -> str:
        node: Any = obj
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, bool):
            return "true" if node else "false"
        return "" if node is None else str(node)

    return get


_META_FIELDS: dict[str, FieldGetter] = {
    "metadata.name": _path("metadata", "name"),
    "metadata.namespace": _path("metadata", "namespace"),
}

_EVENT_FIELDS: dict[str, FieldGetter] = {
    **{
        f"involvedObject.{k}": _path("involvedObject", k)
        for k in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
    },
    "reason": _path("reason"),
    "reportingComponent": _path("reportingComponent"),
    "source": _path("source", "component"),
    "type": _path("type"),
}

_COMMON_LISTS: dict[tuple[str, ...], ListStrategy] = {
    ("metadata", "finalizers"): ("set",),
    ("metadata", "ownerReferences"): ("merge", "uid"),
    ("status", "conditions"): ("merge", "type"),
}


@dataclass(frozen=True)
class Kind:
    """One served resource (one group/version/plural)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    name_rule: str = "subdomain"  # "subdomain", "label" (RFC 1123) or "dns1035"
    has_status: bool = False
    has_generation: bool = False
    short_names: tuple[str, ...] = ()
    storage: str = ""  # kinds sharing storage (core and events.k8s.io Events) name it alike
    returns_deleted: bool = False  # DELETE answers with the object, not a Status (Services)
    fields: dict[str, FieldGetter] = field(default_factory=dict)
    lists: dict[tuple[str, ...], ListStrategy] = field(default_factory=dict)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_key(self) -> str:
        return self.storage or f"{self.plural}.{self.group}"

    @property
    def field_labels(self) -> dict[str, FieldGetter]:
        return {**_META_FIELDS, **self.fields}

    def list_strategy(self, path: tuple[str, ...]) -> ListStrategy:
        return self.lists.get(path, _COMMON_LISTS.get(path))


KINDS: tuple[Kind, ...] = (
    Kind(
        "",
        "v1",
        "namespaces",
        "Namespace",
        False,
        "label",
        has_status=True,
        short_names=("ns",),
        fields={"status.phase": _path("status", "phase")},
    ),
    Kind(
        "",
        "v1",
        "services",
        "Service",
        True,
        "dns1035",
        has_status=True,
        short_names=("svc",),
        returns_deleted=True,
        fields={"spec.type": _path("spec", "type"), "spec.clusterIP": _path("spec", "clusterIP")},
        lists={("spec", "ports"): ("merge", "port")},
    ),
    Kind(
        "",
        "v1",
        "nodes",
        "Node",
        False,
        has_status=True,
        short_names=("no",),
        fields={"spec.unschedulable": _path("spec", "unschedulable")},
        lists={("status", "addresses"): ("merge", "type")},
    ),
    Kind("", "v1", "secrets", "Secret", True, fields={"type": _path("type")}),
    Kind(
        "",
        "v1",
        "events",
        "Event",
        True,
        short_names=("ev",),
        storage="events",
        fields=_EVENT_FIELDS,
    ),
    Kind(
        "events.k8s.io",
        "v1",
        "events",
        "Event",
        True,
        short_names=("ev",),
        storage="events",
        fields=_EVENT_FIELDS,
    ),
    Kind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True, has_generation=True),
    Kind("coordination.k8s.io", "v1", "leases", "Lease", True),
    Kind(
        "networking.k8s.io",
        "v1",
        "ingresses",
        "Ingress",
        True,
        has_status=True,
        has_generation=True,
        short_names=("ing",),
    ),
    Kind("networking.k8s.io", "v1", "ingressclasses", "IngressClass", False, has_generation=True),
)

_BY_PATH = {(k.group, k.version, k.plural): k for k in KINDS}


def find_kind(group: str, version: str, plural: str) -> Kind | None:
    return _BY_PATH.get((group, version, plural))


def group_versions() -> dict[str, list[str]]:
    """Groups (excluding the core group) and their versions, in a stable order."""
    groups: dict[str, list[str]] = {}
    for kind in KINDS:
        if kind.group and kind.version not in groups.setdefault(kind.group, []):
            groups[kind.group].append(kind.version)
    return groups


def resource_list(group: str, version: str) -> JSON | None:
    """The `APIResourceList` discovery document of one group/version."""
    kinds = [k for k in KINDS if k.group == group and k.version == version]
    if not kinds:
        return None
    resources: list[JSON] = []
    for kind in kinds:
        entry: JSON = {
            "name": kind.plural,
            "singularName": kind.kind.lower(),
            "namespaced": kind.namespaced,
            "kind": kind.kind,
            "verbs": VERBS,
        }
        if kind.short_names:
            entry["shortNames"] = list(kind.short_names)
        resources.append(entry)
        if kind.has_status:
            resources.append(
                {
                    "name": f"{kind.plural}/status",
                    "singularName": "",
                    "namespaced": kind.namespaced,
                    "kind": kind.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    gv = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }
