"""Discovery documents: `/api`, `/apis`, `/version` and a minimal `/openapi/v3`.

kubectl resolves `svc` to `services` in `v1` through legacy discovery, and before
`create -f` it reads the OpenAPI v3 document of the group/version to learn that the server
validates fields itself (the `fieldValidation` parameter on PATCH). The lab publishes only
those facts, generated from the kind registry; it must not invent kinds or schemas.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from lbprovider.lab.kinds import KINDS, group_versions

logger = logging.getLogger(__name__)

JSON = dict[str, Any]


def api_versions(address: str) -> JSON:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
    }


def _group(name: str, versions: list[str]) -> JSON:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def api_group_list() -> JSON:
    groups = [_group(name, versions) for name, versions in group_versions().items()]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(name: str) -> JSON | None:
    versions = group_versions().get(name)
    if not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, versions)}


def version_info(minor: int) -> JSON:
    return {
        "major": "1",
        "minor": str(minor),
        "gitVersion": f"v1.{minor}.0-lab",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2024-01-01T00:00:00Z",
        "goVersion": "go1.22.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def _openapi_key(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_root() -> JSON:
    paths = {}
    for group, version in {(k.group, k.version) for k in KINDS}:
        key = _openapi_key(group, version)
        digest = hashlib.sha256(json.dumps(openapi_group_version(key)).encode()).hexdigest()
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest.upper()}"}
    return {"paths": dict(sorted(paths.items()))}


def _operation(kind_name: str, group: str, version: str) -> JSON:
    return {
        "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind_name},
        "parameters": [
            {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
            for name in ("dryRun", "fieldManager", "fieldValidation")
        ],
        "responses": {"200": {"description": "OK"}},
    }


def openapi_group_version(key: str) -> JSON:
    """The OpenAPI v3 document of one group/version: paths with their PATCH operations."""
    paths: JSON = {}
    for kind in KINDS:
        if _openapi_key(kind.group, kind.version) != key:
            continue
        prefix = f"/{key}" + ("/namespaces/{namespace}" if kind.namespaced else "")
        for suffix in ("", "/status") if kind.has_status else ("",):
            paths[f"{prefix}/{kind.plural}/{{name}}{suffix}"] = {
                "patch": _operation(kind.kind, kind.group, kind.version)
            }
    if not paths:
        return {}
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "unversioned"},
        "paths": paths,
        "components": {"schemas": {}},
    }
