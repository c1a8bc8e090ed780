"""Object-metadata validation shared by every kind: names, labels, annotations, finalizers.

The messages are the real server's (`a DNS-1035 label must consist of ...`), because operators
read them in kubectl and tests compare them. Kind-specific rules live with the kind's strategy;
this module must stay free of storage and HTTP.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from typing import Any

from lbprovider.lab.errors import FieldError, invalid, required

logger = logging.getLogger(__name__)

JSON = dict[str, Any]

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1035 = r"[a-z]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = rf"{_LABEL}(\.{_LABEL})*"
_QUALIFIED = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"

_RULES: dict[str, tuple[str, int, str]] = {
    "label": (
        _LABEL,
        63,
        "a lowercase RFC 1123 label must consist of lower case alphanumeric "
        "characters or '-', and must start and end with an alphanumeric character (e.g. "
        f"'my-name',  or '123-abc', regex used for validation is '{_LABEL}')",
    ),
    "dns1035": (
        _DNS1035,
        63,
        "a DNS-1035 label must consist of lower case alphanumeric "
        "characters or '-', start with an alphabetic character, and end with an "
        "alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
        f"validation is '{_DNS1035}')",
    ),
    "subdomain": (
        _SUBDOMAIN,
        253,
        "a lowercase RFC 1123 subdomain must consist of lower case "
        "alphanumeric characters, '-' or '.', and must start and end with an "
        "alphanumeric character (e.g. 'example.com', regex used for validation is "
        f"'{_SUBDOMAIN}')",
    ),
}


def name_errors(name: str, rule: str, field: str = "metadata.name") -> list[FieldError]:
    pattern, limit, text = _RULES[rule]
    errors = []
    if len(name) > limit:
        errors.append(invalid(field, name, f"must be no more than {limit} characters"))
    if not re.fullmatch(pattern, name):
        errors.append(invalid(field, name, text))
    return errors


def is_subdomain(value: str) -> bool:
    return len(value) <= 253 and re.fullmatch(_SUBDOMAIN, value) is not None


def is_label(value: str) -> bool:
    return len(value) <= 63 and re.fullmatch(_LABEL, value) is not None


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _qualified_name_errors(key: str, field: str) -> list[FieldError]:
    prefix, _, name = key.rpartition("/")
    if (
        (prefix and not is_subdomain(prefix))
        or len(name) > 63
        or not re.fullmatch(_QUALIFIED, name)
    ):
        return [
            invalid(
                field,
                key,
                "name part must consist of alphanumeric characters, '-', "
                "'_' or '.', and must start and end with an alphanumeric character",
            )
        ]
    return []


def _labels_errors(labels: Any) -> list[FieldError]:
    if not isinstance(labels, dict):
        return [invalid("metadata.labels", labels, "must be a map of strings")]
    errors = []
    for key, value in labels.items():
        errors += _qualified_name_errors(key, "metadata.labels")
        if not isinstance(value, str) or len(value) > 63 or not re.fullmatch(_LABEL_VALUE, value):
            errors.append(
                invalid(
                    "metadata.labels",
                    value,
                    "a valid label must be an empty "
                    "string or consist of alphanumeric characters, '-', '_' or "
                    "'.', and must start and end with an alphanumeric character",
                )
            )
    return errors


def _annotations_errors(annotations: Any) -> list[FieldError]:
    if not isinstance(annotations, dict):
        return [invalid("metadata.annotations", annotations, "must be a map of strings")]
    errors = []
    for key, value in annotations.items():
        errors += _qualified_name_errors(key, "metadata.annotations")
        if not isinstance(value, str):
            errors.append(invalid(f"metadata.annotations[{key}]", value, "must be a string"))
    return errors


def _finalizer_errors(finalizers: Any) -> list[FieldError]:
    if not isinstance(finalizers, list):
        return [invalid("metadata.finalizers", finalizers, "must be a list of strings")]
    errors = []
    for index, item in enumerate(finalizers):
        field = f"metadata.finalizers[{index}]"
        if not isinstance(item, str) or not item:
            errors.append(required(field))
        elif "/" not in item and item not in ("kubernetes", "orphan", "foregroundDeletion"):
            errors.append(
                invalid(
                    field,
                    item,
                    "name is neither a standard finalizer name nor is it fully qualified",
                )
            )
        else:
            errors += _qualified_name_errors(item, field)
    return errors


def metadata_errors(meta: JSON, rule: str) -> list[FieldError]:
    """Validate the user-settable parts of `metadata` for a kind whose names follow `rule`."""
    errors = name_errors(str(meta.get("name", "")), rule)
    if "labels" in meta:
        errors += _labels_errors(meta["labels"])
    if "annotations" in meta:
        errors += _annotations_errors(meta["annotations"])
    if "finalizers" in meta:
        errors += _finalizer_errors(meta["finalizers"])
    return errors
