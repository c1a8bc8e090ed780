"""Kubernetes `Status` errors, shaped exactly like a real API server's.

Clients branch on `reason` and `code` (the official client raises `ApiException(status=409)`,
kubectl prints `message`), so every failure of the lab API server leaves through `ApiError`
with the same reason, code, message wording and `details.causes` a real server would send.
This module builds error values only; it must not know about HTTP or storage.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

JSON = dict[str, Any]


@dataclass(frozen=True)
class FieldError:
    """One validation failure, as `field.Error` in apimachinery."""

    field: str
    reason: str  # FieldValueInvalid, FieldValueRequired, ...
    detail: str

    @property
    def message(self) -> str:
        return f"{self.field}: {self.detail}"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True)


def invalid(field: str, value: Any, detail: str) -> FieldError:
    return FieldError(field, "FieldValueInvalid", f"Invalid value: {_show(value)}: {detail}")


def required(field: str, detail: str = "") -> FieldError:
    text = "Required value" + (f": {detail}" if detail else "")
    return FieldError(field, "FieldValueRequired", text)


def duplicate(field: str, value: Any) -> FieldError:
    return FieldError(field, "FieldValueDuplicate", f"Duplicate value: {_show(value)}")


def not_supported(field: str, value: Any, supported: list[str]) -> FieldError:
    choices = ", ".join(json.dumps(s) for s in supported)
    text = f"Unsupported value: {_show(value)}: supported values: {choices}"
    return FieldError(field, "FieldValueNotSupported", text)


def forbidden(field: str, detail: str) -> FieldError:
    return FieldError(field, "FieldValueForbidden", f"Forbidden: {detail}")


class ApiError(Exception):
    """A failure the server answers with a `Status` body and the same HTTP code."""

    def __init__(self, code: int, reason: str, message: str, details: JSON | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> JSON:
        body: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(group: str, plural: str, name: str) -> JSON:
    details: JSON = {"name": name, "kind": plural}
    if group:
        details["group"] = group
    return details


def _qualified(group: str, plural: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(group: str, plural: str, name: str) -> ApiError:
    message = f'{_qualified(group, plural)} "{name}" not found'
    return ApiError(404, "NotFound", message, _details(group, plural, name))


def no_such_path() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def already_exists(group: str, plural: str, name: str) -> ApiError:
    message = f'{_qualified(group, plural)} "{name}" already exists'
    return ApiError(409, "AlreadyExists", message, _details(group, plural, name))


def conflict(group: str, plural: str, name: str, why: str) -> ApiError:
    message = f'Operation cannot be fulfilled on {_qualified(group, plural)} "{name}": {why}'
    return ApiError(409, "Conflict", message, _details(group, plural, name))


def stale_write(group: str, plural: str, name: str) -> ApiError:
    why = (
        "the object has been modified; please apply your changes to the latest version and "
        "try again"
    )
    return conflict(group, plural, name, why)


def invalid_object(group: str, kind: str, name: str, causes: list[FieldError]) -> ApiError:
    if len(causes) == 1:
        summary = causes[0].message
    else:
        summary = "[" + ", ".join(c.message for c in causes) + "]"
    details: JSON = {
        "name": name,
        "kind": kind,
        "causes": [{"reason": c.reason, "message": c.detail, "field": c.field} for c in causes],
    }
    if group:
        details["group"] = group
    label = f"{kind}.{group}" if group else kind
    return ApiError(422, "Invalid", f'{label} "{name}" is invalid: {summary}', details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def forbidden_request(message: str, group: str = "", plural: str = "", name: str = "") -> ApiError:
    details = _details(group, plural, name) if plural else None
    return ApiError(403, "Forbidden", message, details)


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def method_not_allowed(method: str) -> ApiError:
    return ApiError(
        405,
        "MethodNotAllowed",
        f"the server does not allow this method on the requested resource ({method})",
        {},
    )


def unsupported_media_type(content_type: str) -> ApiError:
    message = (
        f"the body of the request was in an unknown format - accepted media types include: "
        f"application/json-patch+json, application/merge-patch+json, "
        f'application/strategic-merge-patch+json (got "{content_type}")'
    )
    return ApiError(415, "UnsupportedMediaType", message)


def unprocessable_patch(message: str) -> ApiError:
    return ApiError(422, "Invalid", message)


def too_large_resource_version(requested: int, current: int) -> ApiError:
    message = f"Too large resource version: {requested}, current: {current}"
    details: JSON = {
        "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
        "retryAfterSeconds": 1,
    }
    return ApiError(504, "Timeout", message, details)
