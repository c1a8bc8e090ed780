"""Strategies of the kinds other than Services, and the core <-> events.k8s.io Event conversion.

Each class holds the few rules of its kind that a client can observe: a Namespace starts
`Active` with its `kubernetes.io/metadata.name` label, a Secret's `stringData` becomes base64
`data`, an EndpointSlice needs an `addressType`, a Node keeps the status it was created with,
and Events written through either API group are one set of objects (the real server stores
`events.k8s.io/v1` Events as core Events). Nothing here touches storage.
"""

from __future__ import annotations

import base64
import binascii
import copy
import logging
import re
from typing import Any

from lbprovider.lab.errors import FieldError, forbidden, invalid, not_supported, required
from lbprovider.lab.strategy import Strategy

logger = logging.getLogger(__name__)

JSON = dict[str, Any]


class NamespaceStrategy(Strategy):
    def prepare_create(self, obj: JSON) -> None:
        obj["status"] = {"phase": "Active"}
        obj["spec"] = {"finalizers": ["kubernetes"]}
        self._label(obj)

    def prepare_update(self, new: JSON, old: JSON) -> None:
        self._label(new)

    @staticmethod
    def _label(obj: JSON) -> None:
        meta = obj["metadata"]
        meta["labels"] = {**(meta.get("labels") or {}), "kubernetes.io/metadata.name": meta["name"]}


class NodeStrategy(Strategy):
    status_on_create = True


class IngressStrategy(Strategy):
    def prepare_create(self, obj: JSON) -> None:
        obj["status"] = {"loadBalancer": {}}


_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


class SecretStrategy(Strategy):
    def prepare_create(self, obj: JSON) -> None:
        self._fold_string_data(obj)
        obj.setdefault("type", "Opaque")

    def prepare_update(self, new: JSON, old: JSON) -> None:
        self._fold_string_data(new)
        new.setdefault("type", "Opaque")

    @staticmethod
    def _fold_string_data(obj: JSON) -> None:
        string_data = obj.pop("stringData", None) or {}
        data = dict(obj.get("data") or {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        if data:
            obj["data"] = data

    def validate(self, obj: JSON, old: JSON | None) -> list[FieldError]:
        errors = []
        for key, value in (obj.get("data") or {}).items():
            if not _SECRET_KEY.match(key):
                errors.append(
                    invalid(
                        f"data[{key}]",
                        key,
                        "a valid config key must consist of "
                        "alphanumeric characters, '-', '_' or '.'",
                    )
                )
            try:
                base64.b64decode(str(value), validate=True)
            except (binascii.Error, ValueError):
                errors.append(
                    invalid(f"data[{key}]", "<secret contents redacted>", "illegal base64 data")
                )
        if obj.get("type") == "kubernetes.io/tls":
            for key in ("tls.crt", "tls.key"):
                if key not in (obj.get("data") or {}):
                    errors.append(required(f"data[{key}]"))
        if old is not None:
            errors += self._update_errors(obj, old)
        return errors

    @staticmethod
    def _update_errors(new: JSON, old: JSON) -> list[FieldError]:
        errors = []
        if new.get("type") != old.get("type"):
            errors.append(invalid("type", new.get("type"), "field is immutable"))
        if old.get("immutable") and (
            new.get("data") != old.get("data") or not new.get("immutable")
        ):
            errors.append(forbidden("data", "field is immutable when `immutable` is set"))
        return errors


class EndpointSliceStrategy(Strategy):
    ADDRESS_TYPES = ["FQDN", "IPv4", "IPv6"]

    def validate(self, obj: JSON, old: JSON | None) -> list[FieldError]:
        address_type = obj.get("addressType")
        if not address_type:
            return [required("addressType")]
        if address_type not in self.ADDRESS_TYPES:
            return [not_supported("addressType", address_type, self.ADDRESS_TYPES)]
        errors = []
        for i, endpoint in enumerate(obj.get("endpoints") or []):
            addresses = endpoint.get("addresses") or []
            if not addresses:
                errors.append(
                    required(f"endpoints[{i}].addresses", "must contain at least 1 address")
                )
            elif len(addresses) > 100:
                errors.append(
                    FieldError(
                        f"endpoints[{i}].addresses",
                        "FieldValueTooMany",
                        f"Too many: {len(addresses)}: must have at most 100 items",
                    )
                )
        if old is not None and address_type != old.get("addressType"):
            errors.append(invalid("addressType", address_type, "field is immutable"))
        return errors


class EventStrategy(Strategy):
    """Core Events; events.k8s.io writes arrive here already converted by `event_to_core`."""

    def validate(self, obj: JSON, old: JSON | None) -> list[FieldError]:
        involved = obj.get("involvedObject") or {}
        namespace = obj["metadata"].get("namespace")
        if involved.get("namespace") and involved["namespace"] != namespace:
            return [
                invalid(
                    "involvedObject.namespace",
                    involved["namespace"],
                    "does not match event.namespace",
                )
            ]
        return []


# --- events.k8s.io/v1 <-> core/v1 ------------------------------------------------------------

_RENAMES = (  # (events.k8s.io/v1 field, core/v1 field)
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
)
_SAME = ("reason", "type", "action", "related", "eventTime", "reportingInstance")


def new_event_errors(obj: JSON) -> list[FieldError]:
    """events.k8s.io/v1 is stricter than core/v1 about the fields a new Event carries."""
    errors = [
        required(name)
        for name in ("eventTime", "reportingController", "reportingInstance", "action", "reason")
        if not obj.get(name)
    ]
    if len(str(obj.get("note", ""))) > 1024:
        errors.append(
            FieldError("note", "FieldValueTooLong", "Too long: may not be more than 1024 bytes")
        )
    return errors


def event_to_core(obj: JSON) -> JSON:
    core: JSON = {"metadata": copy.deepcopy(obj.get("metadata") or {})}
    for new_name, core_name in _RENAMES:
        if new_name in obj:
            core[core_name] = copy.deepcopy(obj[new_name])
    for name in _SAME:
        if name in obj:
            core[name] = copy.deepcopy(obj[name])
    if "series" in obj:
        core["series"] = copy.deepcopy(obj["series"])
    core["kind"], core["apiVersion"] = "Event", "v1"
    return core


def event_from_core(obj: JSON) -> JSON:
    converted: JSON = {
        "kind": "Event",
        "apiVersion": "events.k8s.io/v1",
        "metadata": obj.get("metadata", {}),
    }
    for new_name, core_name in _RENAMES:
        if core_name in obj:
            converted[new_name] = obj[core_name]
    for name in _SAME:
        if name in obj:
            converted[name] = obj[name]
    if "series" in obj:
        converted["series"] = obj["series"]
    return converted
