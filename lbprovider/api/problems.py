"""RFC 9457 problem details: the one shape of every error the API answers.

Domain errors (``lbprovider.services.errors``), FastAPI's validation errors and Starlette's own
404/405 all leave through the handlers here as ``application/problem+json`` naming the offending
field. This module decides the wire format of errors; it must not decide *whether* something is
an error — that is the services' job.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from lbprovider.services.errors import DomainError, PreconditionFailed, TooManyRequests

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://lbprovider.io/problems/"

HTTP_SLUGS = {
    400: ("bad-request", "Bad request", None),
    401: ("unauthorized", "Authentication required", "Authorization"),
    403: ("forbidden", "Not allowed", "Authorization"),
    404: ("not-found", "Not found", "path"),
    405: ("method-not-allowed", "Method not allowed", "method"),
    406: ("not-acceptable", "Not acceptable", "Accept"),
    413: ("payload-too-large", "Payload too large", "body"),
    415: ("unsupported-media-type", "Unsupported media type", "Content-Type"),
}


class FieldError(BaseModel):
    """One invalid input: where it is (dotted location) and what is wrong with it."""

    field: str = Field(description="Dotted location, e.g. `body.ranges.0` or `query.limit`.")
    message: str
    type: str = Field(description="Machine-readable error kind (pydantic's error type).")


class Problem(BaseModel):
    """An RFC 9457 problem. Extra members carry context (e.g. ``displaced`` for a refused
    pool edit, ``current_version`` for a failed If-Match)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="URI naming the kind of problem.")
    title: str
    status: int
    detail: str
    instance: str = Field(description="The request path.")
    field: str | None = Field(default=None, description="The offending input, when there is one.")
    request_id: str | None = None
    errors: list[FieldError] | None = Field(
        default=None, description="Every invalid input (validation errors only)."
    )


def problem_response(
    request: Request,
    *,
    status: int,
    slug: str,
    title: str,
    detail: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "field": field,
        "request_id": getattr(request.state, "request_id", None),
    }
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _domain_headers(exc: DomainError) -> dict[str, str]:
    if isinstance(exc, PreconditionFailed) and "current_version" in exc.extra:
        return {"ETag": f'"{exc.extra["current_version"]}"'}
    if isinstance(exc, TooManyRequests):
        return {"Retry-After": str(exc.extra.get("retry_after", 60))}
    if exc.status == 401:
        return {"WWW-Authenticate": "Bearer"}
    return {}


async def _on_domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return problem_response(
        request,
        status=exc.status,
        slug=exc.slug,
        title=exc.title,
        detail=exc.detail,
        field=exc.field,
        headers=_domain_headers(exc),
        **exc.extra,
    )


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    slug, title, field = HTTP_SLUGS.get(exc.status_code, ("http-error", "HTTP error", None))
    detail = exc.detail if isinstance(exc.detail, str) else title
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.url.path}"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
        headers["Allow"] = ", ".join(allowed_methods(request))
    return problem_response(
        request,
        status=exc.status_code,
        slug=slug,
        title=title,
        detail=detail,
        field=field,
        headers=headers,
    )


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on this path (Starlette names only the first route's)."""
    allowed = []
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def dotted(loc: tuple[int | str, ...] | list[int | str]) -> str:
    return ".".join(str(part) for part in loc)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": dotted(e.get("loc", ())), "message": str(e.get("msg", "")), "type": e["type"]}
        for e in exc.errors()
    ]
    field = errors[0]["field"] if errors else None
    message = errors[0]["message"] if errors else "invalid request"
    detail = f"{field}: {message}" if field else message
    return problem_response(
        request,
        status=422,
        slug="validation-error",
        title="Invalid request",
        detail=detail,
        field=field,
        errors=errors,
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _on_domain_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses (rewritten to problem+json by
    ``lbprovider.api.openapi``)."""
    return {code: {"model": Problem, "description": _DESCRIPTIONS[code]} for code in codes}


_DESCRIPTIONS = {
    401: "No, unknown, expired or revoked bearer token.",
    403: "The token lacks the scope, or may not be used from this address.",
    404: "No such object.",
    409: "Conflicts with the current state (the detail says which).",
    412: "If-Match does not name the current version; the current ETag is in the answer.",
    422: "Invalid input; `field` and `errors` name it.",
    428: "If-Match is required.",
    429: "Too many failed authentications from this address; see Retry-After.",
    503: "Not ready.",
}
