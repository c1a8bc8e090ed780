"""Request ids and the last line of defence: every request gets an id, every answer echoes it.

A client's ``X-Request-ID`` is kept when it is safe to log and store (at most 64 characters of
``[A-Za-z0-9._-]``); otherwise a fresh one is generated. The id reaches ledger and audit rows
through the ``Actor`` the routes build. An exception no handler caught becomes a 500
problem+json here, so even that answer carries the id. This middleware never reads or logs
headers other than ``X-Request-ID`` (tokens must never reach a log).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lbprovider.api.problems import PROBLEM_MEDIA_TYPE, TYPE_BASE

logger = logging.getLogger(__name__)

HEADER = "X-Request-ID"
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if REQUEST_ID_RE.match(text) else None
    return None


class RequestIdMiddleware:
    """Pure ASGI middleware (no body buffering, so long-polls and streams pass through)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = incoming_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.update(code=message["status"], started=True)
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception(
                "unhandled error", extra={"event": "api_error", "request_id": request_id}
            )
            if status["started"]:
                raise
            await _internal_error(scope, request_id, send_with_id)
        finally:
            _log_request(scope, request_id, int(status["code"]), started)


async def _internal_error(scope: Scope, request_id: str, send: Send) -> None:
    body = json.dumps(
        {
            "type": TYPE_BASE + "internal-error",
            "title": "Internal error",
            "status": 500,
            "detail": "the server failed; the request id names it in the server log",
            "instance": scope.get("path", ""),
            "field": None,
            "request_id": request_id,
        }
    ).encode()
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _log_request(scope: Scope, request_id: str, status: int, started: float) -> None:
    logger.info(
        "request",
        extra={
            "event": "api_request",
            "method": scope.get("method", ""),
            "path": scope.get("path", ""),
            "status": status,
            "request_id": request_id,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )
