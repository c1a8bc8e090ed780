"""Tokens: secret shown once, stored hashed, scoped, expiring, CIDR-bound, revocable."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.models import ApiToken
from lbprovider.db.session import transaction
from lbprovider.db.types import utcnow
from lbprovider.services.errors import Forbidden, InvalidInput, Unauthorized
from lbprovider.services.tokens import authenticate, create_token, revoke_token
from tests.services.helpers import ACTOR


def test_secret_is_only_stored_as_a_hash(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as s:
        _, secret = create_token(session=s, name="ci", scopes=["write"], actor=ACTOR)
    with sessions() as s:
        row = s.scalars(select(ApiToken)).one()
        assert secret not in (row.secret_hash, row.prefix) and row.prefix in secret
        assert authenticate(session=s, secret=secret, client_ip="127.0.0.1").name == "ci"
        with pytest.raises(Unauthorized):
            authenticate(session=s, secret=secret[:-1] + "x", client_ip="127.0.0.1")


def test_revoked_and_expired_tokens_are_refused(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as s:
        t1, s1 = create_token(session=s, name="a", scopes=["read"], actor=ACTOR)
        _, s2 = create_token(
            session=s,
            name="b",
            scopes=["read"],
            actor=ACTOR,
            expires_at=utcnow() + timedelta(seconds=1),
        )
        revoke_token(session=s, token_id=t1.id, actor=ACTOR)
    with sessions() as s:
        with pytest.raises(Unauthorized, match="revoked"):
            authenticate(session=s, secret=s1, client_ip=None)
        with pytest.raises(Unauthorized, match="expired"):
            authenticate(session=s, secret=s2, client_ip=None, now=utcnow() + timedelta(minutes=1))


def test_cidr_bound_token(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as s:
        _, secret = create_token(
            session=s, name="a", scopes=["read"], actor=ACTOR, allowed_cidrs=["127.0.0.0/8"]
        )
    with sessions() as s:
        assert authenticate(session=s, secret=secret, client_ip="127.1.2.3")
        with pytest.raises(Forbidden):
            authenticate(session=s, secret=secret, client_ip="::1")


@pytest.mark.parametrize("scopes", [[], ["root"], ["agent"]])
def test_bad_scopes_are_refused(sessions: sessionmaker[Session], scopes: list[str]) -> None:
    with pytest.raises(InvalidInput), transaction(sessions) as s:
        create_token(session=s, name="x", scopes=scopes, actor=ACTOR)
