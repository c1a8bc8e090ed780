"""Sign-in, session cookies, scopes and the CSRF / cross-origin guard, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from http.cookies import SimpleCookie

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.db.models import ApiToken, Pool
from lbprovider.db.session import transaction
from lbprovider.services.context import Actor
from lbprovider.services.tokens import create_token, revoke_token

from .conftest import CSRF_RE, Ui, make_pool, make_token, start_ui, ui_settings

# Sessions and CSRF do not depend on the database dialect: SQLite only keeps this file quick.
pytestmark = pytest.mark.parametrize("engine", ["sqlite"], indirect=True)


def cookie_attrs(set_cookie: str) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    jar.load(set_cookie)
    return jar


def login_form(ui: Ui) -> tuple[object, str]:
    c = ui.client()
    page = c.get("/login")
    m = CSRF_RE.search(page.text)
    assert m
    return c, m.group(1)


def test_pages_need_a_session_and_remember_where_you_were_going(ui: Ui) -> None:
    c = ui.client()
    r = c.get("/services?namespace=shop")
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Fservices%3Fnamespace%3Dshop"
    hx = c.get("/services", headers={"HX-Request": "true"})
    assert hx.status_code == 204 and hx.headers["HX-Redirect"].startswith("/login")
    assert c.get("/events").status_code == 401


def test_sign_in_sets_an_httponly_lax_cookie_and_lands_on_next(ui: Ui) -> None:
    c, csrf = login_form(ui)
    r = c.post(  # type: ignore[attr-defined]
        "/login", data={"token": ui.secrets["read"], "csrf_token": csrf, "next": "/pools"}
    )
    assert r.status_code == 303 and r.headers["location"] == "/pools"
    raw = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and "lbp_session" in v)
    morsel = cookie_attrs(raw)["lbp_session"]
    assert morsel["httponly"] is True
    assert morsel["samesite"].lower() == "lax"
    assert not morsel["secure"]  # plain HTTP here
    assert ui.secrets["read"] not in raw
    page = c.get("/pools")  # type: ignore[attr-defined]
    assert page.status_code == 200 and "reader" in page.text


def test_cookie_is_secure_when_served_over_https(ui: Ui) -> None:
    # uvicorn trusts X-Forwarded-Proto from loopback, as behind a TLS-terminating proxy.
    c = ui.client(**{"X-Forwarded-Proto": "https"})
    page = c.get("/login")
    csrf = CSRF_RE.search(page.text)
    assert csrf
    login_cookie = cookie_attrs(page.headers["set-cookie"])["lbp_login_csrf"]
    assert login_cookie["secure"] is True
    # httpx keeps Secure cookies for https URLs only; hand it back as the browser would.
    c.cookies.clear()
    c.cookies.set("lbp_login_csrf", login_cookie.value)
    r = c.post(
        "/login",
        data={"token": ui.secrets["admin"], "csrf_token": csrf.group(1)},
        headers={"Origin": f"https://127.0.0.1:{ui.server.port}"},
    )
    assert r.status_code == 303, r.text
    raw = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and "lbp_session" in v)
    assert cookie_attrs(raw)["lbp_session"]["secure"] is True


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("lbp_aaaaaaaaaaaa_" + "x" * 43, "unknown token"),
        ("not-a-token", "malformed"),
    ],
    ids=["unknown token", "malformed token"],
)
def test_a_bad_token_is_refused_inline(ui: Ui, secret: str, message: str) -> None:
    c, csrf = login_form(ui)
    r = c.post("/login", data={"token": secret, "csrf_token": csrf})  # type: ignore[attr-defined]
    assert r.status_code == 401
    assert message in r.text and "lbp_session" not in r.headers.get("set-cookie", "")


def test_agent_tokens_cannot_sign_in(ui: Ui) -> None:
    with transaction(ui.sessions) as s:
        from lbprovider.services.tokens import create_token

        _, secret = create_token(
            session=s, name="agent-x", scopes=["agent"], host="edge-1", actor=Actor("t")
        )
    c, csrf = login_form(ui)
    r = c.post("/login", data={"token": secret, "csrf_token": csrf})  # type: ignore[attr-defined]
    assert r.status_code == 401 and "agent tokens cannot sign in" in r.text


def test_a_forged_or_tampered_cookie_is_no_session(ui: Ui) -> None:
    b = ui.signed_in("admin")
    value = b.http.cookies["lbp_session"]
    payload, mac = value.split(".")
    forged = ui.client()
    forged.cookies.set("lbp_session", payload + "." + mac[:-2] + "AA")
    assert forged.get("/").status_code == 303


def test_revoking_the_token_ends_its_sessions(ui: Ui) -> None:
    b = ui.signed_in("write")
    assert b.get("/pools").status_code == 200
    with transaction(ui.sessions) as s:
        tid = s.scalar(select(ApiToken.id).where(ApiToken.name == "writer"))
        assert tid is not None
        revoke_token(session=s, token_id=tid, actor=Actor("admin"))
    assert b.get("/pools").status_code == 303


def test_sign_out_clears_the_session(ui: Ui) -> None:
    b = ui.signed_in("read")
    r = b.post("/logout")
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert b.get("/").status_code == 303


def test_buttons_are_hidden_by_scope(ui: Ui) -> None:
    make_pool(ui.sessions, "web", "127.1.0.0/29")
    reader, writer, admin = (ui.signed_in(s) for s in ("read", "write", "admin"))
    pools_r, pools_w = reader.get("/pools").text, writer.get("/pools").text
    assert "New pool" not in pools_r and "New pool" in pools_w
    detail_r, detail_w = reader.get("/pools/web").text, writer.get("/pools/web").text
    for label in ("/pools/web/edit", "Drain", "Delete"):
        assert label not in detail_r and label in detail_w
    assert 'href="/tokens"' not in pools_w and 'href="/audit"' not in pools_w
    assert 'href="/tokens"' in admin.get("/pools").text


def test_scopes_are_enforced_not_only_hidden(ui: Ui) -> None:
    reader, writer = ui.signed_in("read"), ui.signed_in("write")
    r = reader.post("/pools", {"name": "x", "ranges": "127.1.0.0/29"})
    assert r.status_code == 403 and "lacks the &#39;write&#39; scope" in r.text
    assert reader.get("/pools/new").status_code == 403
    assert writer.get("/tokens").status_code == 403
    assert writer.get("/audit").status_code == 403
    assert writer.post("/tokens", {"name": "evil", "scope": "admin"}).status_code == 403
    with ui.sessions() as s:
        assert s.scalar(select(Pool).where(Pool.name == "x")) is None


def test_unsafe_requests_need_the_session_csrf_token(ui: Ui) -> None:
    b = ui.signed_in("write")
    no_token = b.http.post("/pools", data={"name": "a", "ranges": "127.1.0.0/29"})
    wrong = b.http.post(
        "/pools", data={"name": "a", "ranges": "127.1.0.0/29", "csrf_token": "guess"}
    )
    header = b.http.post(
        "/pools", data={"name": "a", "ranges": "127.1.0.0/29"}, headers={"X-CSRF-Token": b.csrf}
    )
    assert no_token.status_code == 403 and "CSRF" in no_token.text
    assert wrong.status_code == 403
    assert header.status_code == 303


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
    ],
    ids=["cross-site fetch", "sibling port (same-site)", "foreign Origin", "opaque Origin"],
)
def test_cross_origin_writes_are_refused_even_with_the_token(
    ui: Ui, headers: dict[str, str]
) -> None:
    b = ui.signed_in("write")
    r = b.post("/pools", {"name": "evil", "ranges": "127.1.0.0/29"}, **headers)
    assert r.status_code == 403 and "refused" in r.text
    with ui.sessions() as s:
        assert s.scalar(select(Pool).where(Pool.name == "evil")) is None


def test_same_origin_writes_pass_the_origin_check(ui: Ui) -> None:
    b = ui.signed_in("write")
    origin = {"Origin": ui.url, "Sec-Fetch-Site": "same-origin"}
    r = b.post("/pools", {"name": "ok", "ranges": "127.1.0.0/29"}, **origin)
    assert r.status_code == 303


def test_sign_in_itself_is_protected_from_login_csrf(ui: Ui) -> None:
    c = ui.client()
    r = c.post("/login", data={"token": ui.secrets["admin"], "csrf_token": "x"})
    assert r.status_code == 403
    c2, csrf = login_form(ui)
    r2 = c2.post(  # type: ignore[attr-defined]
        "/login",
        data={"token": ui.secrets["admin"], "csrf_token": csrf},
        headers={"Origin": "http://evil.example"},
    )
    assert r2.status_code == 403


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example", "/\\evil"])
def test_next_never_leaves_the_site(ui: Ui, target: str) -> None:
    c, csrf = login_form(ui)
    r = c.post(  # type: ignore[attr-defined]
        "/login", data={"token": ui.secrets["read"], "csrf_token": csrf, "next": target}
    )
    assert r.headers["location"] == "/"


def test_a_session_token_from_another_app_secret_is_refused(ui: Ui) -> None:
    from lbprovider.ui.sessions import SessionSigner

    with ui.sessions() as s:
        tid = s.scalar(select(ApiToken.id).where(ApiToken.name == "admin"))
    value, _ = SessionSigner("some-other-secret").issue(int(tid or 0))
    c = ui.client()
    c.cookies.set("lbp_session", value)
    assert c.get("/").status_code == 303
    assert make_token  # the fixture module's token maker is the one the app trusts


# Failed sign-ins are rate-limited per client address, like the API's bearer tokens.


@pytest.fixture
def strict_ui(engine: Engine, sessions: sessionmaker[Session]) -> Iterator[Ui]:
    """The app with ``auth_fail_limit=3`` (the suite's default is generous)."""
    url = engine.url.render_as_string(hide_password=False)
    settings = ui_settings(url).model_copy(update={"auth_fail_limit": 3})
    yield from start_ui(engine, sessions, settings=settings)


def try_sign_in(ui: Ui, secret: str, **headers: str) -> httpx.Response:
    c = ui.client(**headers)
    page = c.get("/login")
    csrf = CSRF_RE.search(page.text)
    assert csrf
    return c.post("/login", data={"token": secret, "csrf_token": csrf.group(1)})


def test_repeated_failed_sign_ins_are_429_with_retry_after(strict_ui: Ui) -> None:
    wrong = "lbp_aaaaaaaaaaaa_" + "x" * 43
    for _ in range(3):
        assert try_sign_in(strict_ui, wrong).status_code == 401
    r = try_sign_in(strict_ui, wrong)
    assert r.status_code == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 61
    assert "Too many failed sign-ins" in r.text and 'name="token"' in r.text
    # Blocked before the token is looked at: the right token does not get through either.
    good = try_sign_in(strict_ui, strict_ui.secrets["admin"])
    assert good.status_code == 429 and "lbp_session" not in good.headers.get("set-cookie", "")


def test_the_sign_in_limit_counts_per_client_address(strict_ui: Ui) -> None:
    wrong = "not-a-token"
    for _ in range(4):
        try_sign_in(strict_ui, wrong)
    assert try_sign_in(strict_ui, strict_ui.secrets["read"]).status_code == 429
    # uvicorn takes the client address from X-Forwarded-For when the peer is loopback.
    elsewhere = {"X-Forwarded-For": "192.0.2.9"}
    assert try_sign_in(strict_ui, strict_ui.secrets["read"], **elsewhere).status_code == 303


def test_successful_sign_ins_do_not_count(strict_ui: Ui) -> None:
    for _ in range(5):
        assert try_sign_in(strict_ui, strict_ui.secrets["read"]).status_code == 303


def test_one_failed_auth_budget_covers_the_dashboard_and_the_api(strict_ui: Ui) -> None:
    """A guesser gets one budget per client, not one per door."""
    for _ in range(4):
        try_sign_in(strict_ui, "not-a-token")
    api = strict_ui.client(Authorization=f"Bearer {strict_ui.secrets['read']}")
    r = api.get("/api/v1/pools")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0


# A token's allowed_cidrs hold for the whole session, not only at sign-in.


def cidr_token(ui: Ui, cidrs: list[str]) -> str:
    with transaction(ui.sessions) as s:
        _, secret = create_token(
            session=s, name="fenced", scopes=["read"], allowed_cidrs=cidrs, actor=Actor("t")
        )
    return secret


def test_sign_in_from_outside_the_tokens_networks_is_refused(ui: Ui) -> None:
    secret = cidr_token(ui, ["10.0.0.0/8"])
    r = try_sign_in(ui, secret)
    assert r.status_code == 403 and "may not be used from this address" in r.text


def test_a_session_is_refused_once_used_from_outside_the_tokens_networks(ui: Ui) -> None:
    secret = cidr_token(ui, ["127.0.0.0/8"])
    r = try_sign_in(ui, secret)
    assert r.status_code == 303
    cookie = r.cookies["lbp_session"]
    inside = ui.client()
    inside.cookies.set("lbp_session", cookie)
    assert inside.get("/services").status_code == 200
    # The same cookie replayed from another network (a stolen cookie, a moved laptop).
    outside = ui.client(**{"X-Forwarded-For": "192.0.2.9"})
    outside.cookies.set("lbp_session", cookie)
    page = outside.get("/services")
    assert page.status_code == 403
    assert "may not be used from this address" in page.text and "<h1>Services" not in page.text
    assert outside.get("/events").status_code == 403
    fragment = outside.get("/services", headers={"HX-Request": "true"})
    assert fragment.status_code == 403
    # Back inside its networks, the session works again.
    assert inside.get("/services").status_code == 200
