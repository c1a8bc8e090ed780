"""Our own exceptions for everything that goes wrong talking to Kubernetes.

Callers above ``lbprovider.kube`` must never see a ``kubernetes`` or ``urllib3`` exception: they
branch on these classes (conflict → re-read and retry, not found → gone, unavailable → back off).
This module only classifies errors; it must not retry, log or decide policy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException

logger = logging.getLogger(__name__)


class KubeError(Exception):
    """A Kubernetes API call failed. ``status`` is the HTTP code when there was a response."""

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason


class KubeNotConfigured(KubeError):
    """No cluster is configured: no LBP_KUBECONFIG, not in a Pod, no ~/.kube/config."""


class KubeConflict(KubeError):
    """409: a stale resourceVersion or an object that already exists; re-read and retry."""


class KubeNotFound(KubeError):
    """404: the object (or its namespace) does not exist."""


class KubeGone(KubeError):
    """410: the resourceVersion is older than the server keeps; relist."""


class KubeInvalid(KubeError):
    """400 or 422: the server refused the request body; retrying the same body will not help."""


class KubeForbidden(KubeError):
    """401 or 403: our credentials or RBAC do not allow this call."""


class KubeUnavailable(KubeError):
    """Connection failure, timeout, 429 or 5xx: the server may answer later; back off."""


class NotLeader(KubeError):
    """A write was refused because this process does not hold the leader Lease."""


_BY_STATUS: dict[int, type[KubeError]] = {
    400: KubeInvalid,
    401: KubeForbidden,
    403: KubeForbidden,
    404: KubeNotFound,
    409: KubeConflict,
    410: KubeGone,
    422: KubeInvalid,
    429: KubeUnavailable,
}


def error_class_for(status: int | None) -> type[KubeError]:
    """The exception class for an HTTP status code (5xx → unavailable)."""
    if status is None:
        return KubeUnavailable
    if status >= 500:
        return KubeUnavailable
    return _BY_STATUS.get(status, KubeError)


def error_from_status(status_obj: Mapping[str, Any], action: str = "") -> KubeError:
    """Build our error from a Kubernetes ``Status`` object (an HTTP body or a watch ERROR)."""
    code = status_obj.get("code")
    code = code if isinstance(code, int) else None
    reason = str(status_obj.get("reason") or "")
    message = str(status_obj.get("message") or reason or "unknown error")
    prefix = f"{action}: " if action else ""
    return error_class_for(code)(f"{prefix}{message} ({code} {reason})", status=code, reason=reason)


def translate_error(exc: BaseException, action: str = "") -> KubeError:
    """Classify a foreign exception; the caller raises the result ``from exc``."""
    if isinstance(exc, KubeError):
        return exc
    if isinstance(exc, ApiException):
        return _from_api_exception(exc, action)
    prefix = f"{action}: " if action else ""
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return KubeUnavailable(f"{prefix}cannot reach the Kubernetes API: {exc}")
    return KubeError(f"{prefix}{type(exc).__name__}: {exc}")


def _from_api_exception(exc: ApiException, action: str) -> KubeError:
    status = exc.status if isinstance(exc.status, int) else None
    body = _decode_body(exc.body)
    if body is not None and body.get("kind") == "Status":
        if not isinstance(body.get("code"), int):
            body = {**body, "code": status}
        return error_from_status(body, action)
    text = str(exc.reason or "") or "no response body"
    return error_from_status({"code": status, "reason": "", "message": text}, action)


def _decode_body(body: Any) -> dict[str, Any] | None:
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if not isinstance(body, str) or not body:
        return None
    try:
        decoded = json.loads(body)
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None


@contextmanager
def wrap_errors(action: str = "") -> Iterator[None]:
    """Run a block that calls the official client; re-raise its failures as ``KubeError``."""
    try:
        yield
    except KubeError:
        raise
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise translate_error(exc, action) from exc
