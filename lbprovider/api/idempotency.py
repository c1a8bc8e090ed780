"""``Idempotency-Key`` on POST: a retried request gets the stored answer, not a second effect.

The key's record is inserted at the start of the request's own transaction and completed with
the answer just before it commits, so the effect and the stored answer commit (or vanish)
together. Two identical requests racing on PostgreSQL queue on the unique (token, key) index:
the second sees the first's answer. Errors are not stored: a request that failed may be retried
with the same key. Same key with another body (or path) → 422. Keys belong to one token.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lbprovider.api.auth import TokenDep
from lbprovider.api.deps import SessionDep
from lbprovider.db.models import ApiToken, IdempotencyRecord
from lbprovider.services.errors import Conflict, IdempotencyMismatch

M = TypeVar("M", bound=BaseModel)
REPLAYED_HEADER = "Idempotent-Replayed"


class IdempotentReplay(Exception):
    """Short-circuits a request whose key was already answered."""

    def __init__(self, record: IdempotencyRecord) -> None:
        super().__init__(record.key)
        self.status = record.status_code
        self.body = record.response


async def body_hash(request: Request) -> str:
    """SHA-256 of the body, with JSON canonicalised (key order and spacing do not matter)."""
    raw = await request.body()
    try:
        canonical = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = raw
    return hashlib.sha256(canonical).hexdigest()


class Idempotency:
    """The key of one request (or none). Routes end with ``return idem.store(model, status)``."""

    def __init__(self, session: Session, record: IdempotencyRecord | None) -> None:
        self.session = session
        self.record = record

    def store(self, model: M, status: int) -> M:
        if self.record is not None:
            self.record.status_code = status
            self.record.response = model.model_dump(mode="json")
            self.session.flush()
        return model


def _find(session: Session, token: ApiToken, key: str) -> IdempotencyRecord | None:
    return session.scalar(
        select(IdempotencyRecord).where(
            IdempotencyRecord.token_id == token.id, IdempotencyRecord.key == key
        )
    )


def _replay_or_refuse(existing: IdempotencyRecord, method: str, path: str, digest: str) -> None:
    if (existing.method, existing.path, existing.body_hash) != (method, path, digest):
        raise IdempotencyMismatch(
            "this Idempotency-Key was used with another request; use a new key",
            field="Idempotency-Key",
        )
    raise IdempotentReplay(existing)


def idempotency(
    request: Request,
    session: SessionDep,
    token: TokenDep,
    digest: Annotated[str, Depends(body_hash)],
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            pattern=r"^[!-~]+$",
            description="Retry-safe key (e.g. a UUID): the same key and body get the stored "
            "answer; the same key with another body is refused with 422.",
        ),
    ] = None,
) -> Idempotency:
    if key is None:
        return Idempotency(session, None)
    method, path = request.method, request.url.path
    existing = _find(session, token, key)
    if existing is not None:
        _replay_or_refuse(existing, method, path, digest)
    record = IdempotencyRecord(
        token_id=token.id, key=key, method=method, path=path, body_hash=digest, status_code=0
    )
    try:
        with session.begin_nested():
            session.add(record)
            session.flush()
    except IntegrityError:
        existing = _find(session, token, key)
        if existing is None:
            raise Conflict(
                "a request with this Idempotency-Key is in flight; retry", field="Idempotency-Key"
            ) from None
        _replay_or_refuse(existing, method, path, digest)
    return Idempotency(session, record)


IdempotencyDep = Annotated[Idempotency, Depends(idempotency)]


async def _on_replay(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IdempotentReplay)
    body: Any = exc.body
    return JSONResponse(body, status_code=exc.status, headers={REPLAYED_HEADER: "true"})


def install_replay_handler(app: FastAPI) -> None:
    app.add_exception_handler(IdempotentReplay, _on_replay)
