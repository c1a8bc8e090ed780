"""Turning dashboard form fields into the services' input types (and back for re-display).

Lists are written one per line or comma-separated; selectors as ``key=value`` pairs. A value
that cannot be parsed becomes an ``InvalidInput`` naming the field, shown inline like any other
domain error. Nothing here decides whether a pool is valid — ``services.pools`` does.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.datastructures import FormData

from lbprovider.services.errors import InvalidInput
from lbprovider.services.pools import PoolFields

SPLIT = re.compile(r"[\s,]+")


def text(form: FormData, name: str, *, limit: int = 4096) -> str:
    value = form.get(name)
    if not isinstance(value, str):
        return ""
    if len(value) > limit:
        raise InvalidInput(f"{name} is longer than {limit} characters", field=name)
    return value.strip()


def items(form: FormData, name: str) -> list[str]:
    return [part for part in SPLIT.split(text(form, name)) if part]


def selector(form: FormData, name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in items(form, name):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise InvalidInput(f"{name}: {part!r} is not key=value", field=name)
        out[key] = value
    return out


def checked(form: FormData, name: str) -> bool:
    return text(form, name) in ("on", "true", "1", "yes")


def integer(form: FormData, name: str, default: int) -> int:
    raw = text(form, name)
    if not raw:
        return default
    if not re.fullmatch(r"-?\d{1,9}", raw):
        raise InvalidInput(f"{name} must be a whole number", field=name)
    return int(raw)


def pool_fields(form: FormData, *, name: str | None = None, disabled: bool = False) -> PoolFields:
    """The pool the form describes. ``name`` fixes it on edits (pools are never renamed)."""
    return PoolFields(
        name=name if name is not None else text(form, "name", limit=63),
        ranges=items(form, "ranges"),
        exclusions=items(form, "exclusions"),
        description=text(form, "description"),
        priority=integer(form, "priority", 100),
        auto_assign=checked(form, "auto_assign"),
        avoid_buggy_ips=checked(form, "avoid_buggy_ips"),
        disabled=disabled,
        namespaces=items(form, "namespaces"),
        namespace_selector=selector(form, "namespace_selector"),
        service_selector=selector(form, "service_selector"),
    )


def pool_form_values(data: PoolFields) -> dict[str, Any]:
    """What the form's inputs show for ``data``."""
    return {
        "name": data.name,
        "ranges": "\n".join(data.ranges),
        "exclusions": "\n".join(data.exclusions),
        "description": data.description,
        "priority": data.priority,
        "auto_assign": data.auto_assign,
        "avoid_buggy_ips": data.avoid_buggy_ips,
        "namespaces": ", ".join(data.namespaces),
        "namespace_selector": ", ".join(f"{k}={v}" for k, v in data.namespace_selector.items()),
        "service_selector": ", ".join(f"{k}={v}" for k, v in data.service_selector.items()),
    }
