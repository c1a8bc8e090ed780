"""The OpenAPI document at ``/api/v1/openapi.json``: every error documented as problem+json.

FastAPI documents error models as ``application/json`` and adds its own 422 schema; the API
answers every error as ``application/problem+json`` with ``Problem``, so the document is
rewritten to say exactly that (clients and schemathesis check answers against it).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from lbprovider.api.problems import PROBLEM_MEDIA_TYPE

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
DESCRIPTION = """\
Provisioning API of lbprovider: pools, reservations, allocations, their history and the audit
log. Authenticate with `Authorization: Bearer <token>`; scopes nest admin ⊃ write ⊃ read.
Errors are RFC 9457 `application/problem+json` naming the offending `field`. POSTs that create
accept `Idempotency-Key`. Every answer carries `X-Request-ID` (yours, or a new one).
"""


def _rewrite_errors(schema: dict[str, Any]) -> None:
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if "requestBody" in operation:
                operation["responses"].setdefault("400", {"description": "The body is not JSON."})
            for code, response in operation.get("responses", {}).items():
                if code.isdigit() and int(code) >= 400:
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}}
                    if code == "422":
                        response["description"] = "Invalid input; `field` and `errors` name it."
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)


def install_openapi(app: FastAPI) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=DESCRIPTION,
                routes=app.routes,
            )
            _rewrite_errors(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]
