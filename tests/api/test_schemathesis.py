"""schemathesis against the OpenAPI document, over real HTTP, on PostgreSQL: no server errors
and no answer that breaks the documented schema (status codes, content types, headers, bodies),
for valid and invalid generated requests alike.

PostgreSQL only: it is the stricter store (NUL bytes, column lengths, integer ranges fail there
first), and the coverage phase's boundary values make one database worth ~30 s of the budget."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from sqlalchemy import Engine

from lbprovider.api.app import create_app
from lbprovider.db.models import ApiToken
from lbprovider.db.session import session_factory, transaction
from lbprovider.services.tokens import hash_secret
from tests.api.conftest import api_settings, serve
from tests.conftest import _truncate

EXAMPLES = 6
# Known before collection: schemathesis asks for credentials while it generates cases, before
# any fixture runs. The row is written with its hash, like any token (see ``live``).
SECRET = "lbp_fuzzerfuzzer_" + "F" * 43


@pytest.fixture(scope="module")
def live(pg_engine: Engine) -> Iterator[tuple[str, str]]:
    """A running API with one pool and an admin token: (url, secret)."""
    engine = pg_engine
    _truncate(engine)
    sessions = session_factory(engine)
    with transaction(sessions) as session:
        session.add(
            ApiToken(
                name="fuzzer",
                prefix="fuzzerfuzzer",
                scopes=["admin"],
                secret_hash=hash_secret(SECRET),
            )
        )
    secret = SECRET
    url = engine.url.render_as_string(hide_password=False)
    for server in serve(create_app(api_settings(url), engine=engine)):
        headers = {"Authorization": f"Bearer {secret}"}
        httpx.post(
            server.url + "/api/v1/pools",
            json={"name": "web", "ranges": ["127.4.0.0/24", "fd00:4::/120"]},
            headers=headers,
        ).raise_for_status()
        yield server.url, secret
    _truncate(engine)


def _document() -> dict[str, object]:
    """The same document the server serves at /api/v1/openapi.json (built without a DB)."""
    return create_app(api_settings("sqlite://")).openapi()


# /readyz answers 503 by design on a database made with create_all (tested in test_health).
schema = schemathesis.openapi.from_dict(_document()).exclude(path="/readyz")


@schema.auth()
class BearerToken:
    """Auth through schemathesis itself, so that a case it generates without (or with a broken)
    Authorization header is sent that way and must be refused — adding the header after
    generation would turn such negative cases into valid requests."""

    def get(self, case: Case, context: object) -> str:
        return SECRET

    def set(self, case: Case, data: str, context: object) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


# Every check but "schema-valid data must be accepted": a well-formed request may still be
# refused on meaning (overlapping ranges, an address outside the pool, a duplicate name) with a
# documented 409/422, which is not a broken schema.
EXCLUDED = [schemathesis.checks.positive_data_acceptance]


@pytest.mark.postgres
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_api_conforms_to_its_openapi_document(case: Case, live: tuple[str, str]) -> None:
    case.call_and_validate(base_url=live[0], excluded_checks=EXCLUDED)
