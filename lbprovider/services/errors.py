"""Domain errors, in one place, each with a problem-type slug and an HTTP status.

The API turns them into RFC 9457 problem+json; the dashboard shows the same text inline. A
``field`` names the offending input where there is one.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    slug = "error"
    status = 400
    title = "Bad request"

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.extra = extra


class InvalidInput(DomainError):
    slug = "invalid-input"
    status = 422
    title = "Invalid input"


class NotFound(DomainError):
    slug = "not-found"
    status = 404
    title = "Not found"


class Conflict(DomainError):
    slug = "conflict"
    status = 409
    title = "Conflict"


class EditWouldMoveAllocations(Conflict):
    slug = "edit-would-move-allocations"
    title = "The edit would move live allocations"


class PoolInUse(Conflict):
    slug = "pool-in-use"
    title = "The pool still has allocations"


class PreconditionFailed(DomainError):
    slug = "precondition-failed"
    status = 412
    title = "The object changed since you read it"


class PreconditionRequired(DomainError):
    slug = "precondition-required"
    status = 428
    title = "If-Match is required"


class Unauthorized(DomainError):
    slug = "unauthorized"
    status = 401
    title = "Authentication required"


class Forbidden(DomainError):
    slug = "forbidden"
    status = 403
    title = "Not allowed"


class TooManyRequests(DomainError):
    slug = "too-many-requests"
    status = 429
    title = "Too many failed attempts"


class IdempotencyMismatch(DomainError):
    slug = "idempotency-key-reused"
    status = 422
    title = "Idempotency-Key reused with another request"


class ConcurrentUpdate(Conflict):
    slug = "concurrent-update"
    title = "Another writer got there first; retry"
