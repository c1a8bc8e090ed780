"""Pool pages through real HTTP: utilisation bars, the address grid, create/edit with preview
and explicit confirm, drain, delete with confirmation — each write audited like the API's."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select

from lbprovider.db.models import Allocation, AuditEntry, LedgerEntry, Pool
from lbprovider.db.session import transaction
from lbprovider.db.types import utcnow
from lbprovider.services.allocations import release_service
from lbprovider.services.context import Actor, IPPolicy
from lbprovider.services.reservations import create_reservation

from .conftest import Ui, add_service, make_pool


def audit_rows(ui: Ui, action: str) -> list[AuditEntry]:
    with ui.sessions() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action)))


def test_pool_list_bars_turn_amber_at_75_and_red_at_90_with_readable_text(ui: Ui) -> None:
    make_pool(ui.sessions, "calm", "127.1.0.0/29")  # 8 addresses
    make_pool(ui.sessions, "busy", "127.2.0.0/29")
    make_pool(ui.sessions, "full", "127.3.0.0/29")
    for i in range(6):
        add_service(ui.sessions, "a", f"busy{i}", pool="busy")  # 75 %
    for i in range(8):
        add_service(ui.sessions, "a", f"full{i}", pool="full")  # 100 %
    add_service(ui.sessions, "a", "calm0", pool="calm")
    html = ui.signed_in("read").get("/pools").text
    rows = {name: html.index(f'href="/pools/{name}"') for name in ("busy", "calm", "full")}
    assert rows["busy"] < rows["calm"] < rows["full"]  # by name

    def bar_after(name: str) -> str:
        tail = html[rows[name] :]
        return re.search(r'class="bar (bar-\w+)"[^>]*aria-label="([^"]+)"', tail).groups()  # type: ignore[return-value, union-attr]

    assert bar_after("calm")[0] == "bar-ok"
    assert bar_after("busy") == (
        "bar-warn",
        "IPv4 utilisation: 75 percent, 6 assigned, 0 reserved, 2 available of 8",
    )
    assert bar_after("full")[0] == "bar-critical"
    assert "(critical)" in html and "(warning)" in html


def test_overview_lists_hot_pools_and_pending_services_with_reason(ui: Ui) -> None:
    make_pool(ui.sessions, "tiny", "127.4.0.0/30")
    for i in range(4):
        add_service(ui.sessions, "a", f"s{i}", pool="tiny")
    add_service(ui.sessions, "shop", "late", allocate=False)
    html = ui.signed_in("read").get("/").text
    assert "Pools filling up" in html and 'href="/pools/tiny"' in html
    assert "shop/late" in html and "NoPool" in html and "no pool serves namespace shop" in html


def test_address_grid_shows_every_state(ui: Ui) -> None:
    make_pool(ui.sessions, "g", "127.5.0.0/28", exclusions=["127.5.0.1"])
    ip = add_service(ui.sessions, "a", "held", pool="g")
    gone = add_service(ui.sessions, "a", "gone", pool="g")
    with transaction(ui.sessions) as s:
        release_service(session=s, namespace="a", name="gone", actor=Actor("t"), reason="test")
        create_reservation(
            session=s,
            pool_name="g",
            owner="pipeline",
            actor=Actor("t"),
            policy=IPPolicy(),
            ip="127.5.0.9",
            expires_at=utcnow() + timedelta(hours=1),
        )
    html = ui.signed_in("read").get("/pools/g").text
    states = dict(re.findall(r'data-ip="([^"]+)" data-state="(\w+)"', html))
    assert len(states) == 16
    assert states[ip or ""] == "allocated"
    assert states["127.5.0.1"] == "excluded"
    assert states[gone or ""] == "quarantined"
    assert states["127.5.0.9"] == "reserved"
    assert states["127.5.0.15"] == "free"
    assert 'href="/search?q=127.5.0.9"' in html  # clickable


def test_no_grid_for_pools_bigger_than_a_slash_22(ui: Ui) -> None:
    make_pool(ui.sessions, "big", "127.8.0.0/21")
    html = ui.signed_in("read").get("/pools/big").text
    assert "data-state=" not in html and "up to 1024 addresses" in html


def test_create_pool_through_the_form_is_audited_under_the_token_name(ui: Ui) -> None:
    b = ui.signed_in("write")
    r = b.post(
        "/pools",
        {
            "name": "edge",
            "ranges": "127.6.0.0/29\n127.6.1.10-127.6.1.12",
            "exclusions": "127.6.0.1",
            "priority": "10",
            "auto_assign": "on",
            "namespace_selector": "team=web",
        },
    )
    assert r.status_code == 303 and r.headers["location"].startswith("/pools/edge?done=created")
    page = b.get(r.headers["location"]).text
    assert "Pool edge created." in page and "127.6.1.10-127.6.1.12" in page
    with ui.sessions() as s:
        pool = s.scalar(select(Pool).where(Pool.name == "edge"))
        assert (
            pool is not None and pool.priority == 10 and pool.namespace_selector == {"team": "web"}
        )
    (entry,) = audit_rows(ui, "pool.create")
    assert entry.actor == "writer" and entry.object_id == "edge"


def test_invalid_pool_shows_the_services_error_text_inline_and_keeps_the_input(ui: Ui) -> None:
    make_pool(ui.sessions, "taken", "127.7.0.0/29")
    b = ui.signed_in("write")
    r = b.post("/pools", {"name": "Bad Name", "ranges": "127.9.0.0/29"})
    assert r.status_code == 422
    assert "must be a DNS label" in r.text and 'role="alert"' in r.text
    assert "127.9.0.0/29" in r.text  # what was typed is still there
    overlap = b.post("/pools", {"name": "other", "ranges": "127.7.0.0/30"})
    assert overlap.status_code == 422 and "overlap" in overlap.text.lower()
    assert [e.object_id for e in audit_rows(ui, "pool.create")] == ["taken"]


def test_edit_that_moves_allocations_previews_then_needs_confirm(ui: Ui) -> None:
    make_pool(ui.sessions, "p", "127.10.0.0/29")
    ip = add_service(ui.sessions, "shop", "web", pool="p")
    assert ip == "127.10.0.0"
    b = ui.signed_in("write")
    edit = {"version": "1", "ranges": "127.10.0.4/30", "priority": "100", "auto_assign": "on"}
    preview = b.post("/pools/p/edit", edit)
    assert preview.status_code == 409
    assert "This edit would move 1 live allocation" in preview.text
    assert "127.10.0.0" in preview.text and "shop/web" in preview.text
    assert 'name="confirm" value="yes"' in preview.text
    with ui.sessions() as s:  # nothing changed yet
        pool = s.scalar(select(Pool).where(Pool.name == "p"))
        assert pool is not None and pool.ranges == ["127.10.0.0/29"] and pool.version == 1
    done = b.post("/pools/p/edit", {**edit, "confirm": "yes"})
    assert done.status_code == 303 and "moved=1" in done.headers["location"]
    assert "1 allocation(s) moved" in b.get(done.headers["location"]).text
    with ui.sessions() as s:
        live = s.scalar(
            select(Allocation).where(Allocation.active, Allocation.service_name == "web")
        )
        assert live is not None and live.ip == "127.10.0.4"
        actions = [e.action for e in s.scalars(select(LedgerEntry).order_by(LedgerEntry.id))]
    assert actions[-2:] == ["reassigned", "reassigned"]
    (entry,) = audit_rows(ui, "pool.update")
    assert entry.actor == "writer" and entry.after and entry.after["ranges"] == ["127.10.0.4/30"]


def test_edit_that_moves_nothing_applies_at_once(ui: Ui) -> None:
    make_pool(ui.sessions, "p", "127.10.0.0/29")
    b = ui.signed_in("write")
    r = b.post("/pools/p/edit", {"version": "1", "ranges": "127.10.0.0/28", "description": "x"})
    assert r.status_code == 303
    with ui.sessions() as s:
        pool = s.scalar(select(Pool).where(Pool.name == "p"))
        assert pool is not None and pool.version == 2 and pool.description == "x"


def test_edit_of_a_stale_version_is_refused_inline(ui: Ui) -> None:
    make_pool(ui.sessions, "p", "127.10.0.0/29")
    b = ui.signed_in("write")
    assert b.post("/pools/p/edit", {"version": "1", "ranges": "127.10.0.0/28"}).status_code == 303
    stale = b.post("/pools/p/edit", {"version": "1", "ranges": "127.10.0.0/27"})
    assert stale.status_code == 412 and "is at version 2, not 1" in stale.text


def test_drain_and_undrain(ui: Ui) -> None:
    make_pool(ui.sessions, "d", "127.11.0.0/29")
    add_service(ui.sessions, "a", "keep", pool="d")
    b = ui.signed_in("write")
    page = b.get("/pools/d").text
    assert "hx-confirm=" in page and "Drain pool d?" in page
    r = b.post("/pools/d/drain", {"drain": "yes"})
    assert r.status_code == 303
    assert "drained: it gives out no new addresses" in b.get(r.headers["location"]).text
    with ui.sessions() as s:
        assert s.scalar(select(Pool.disabled).where(Pool.name == "d")) is True
        assert s.scalar(select(Allocation.ip).where(Allocation.active)) == "127.11.0.0"
    assert b.post("/pools/d/drain", {"drain": "no"}).status_code == 303
    with ui.sessions() as s:
        assert s.scalar(select(Pool.disabled).where(Pool.name == "d")) is False


def test_delete_needs_the_typed_name_and_force_when_in_use(ui: Ui) -> None:
    make_pool(ui.sessions, "old", "127.12.0.0/29")
    add_service(ui.sessions, "a", "svc", pool="old")
    b = ui.signed_in("write")
    confirm = b.get("/pools/old/delete").text
    assert "1 live allocation" in confirm and 'name="force"' in confirm
    assert b.post("/pools/old/delete", {"confirm_name": "nope"}).status_code == 422
    in_use = b.post("/pools/old/delete", {"confirm_name": "old"})
    assert in_use.status_code == 409 and "delete with force" in in_use.text
    gone = b.post("/pools/old/delete", {"confirm_name": "old", "force": "on"})
    assert gone.status_code == 303 and gone.headers["location"] == "/pools?done=deleted&pool=old"
    with ui.sessions() as s:
        assert s.scalar(select(Pool).where(Pool.name == "old")) is None
        assert s.scalar(select(Allocation).where(Allocation.active)) is None
    (entry,) = audit_rows(ui, "pool.delete")
    assert entry.actor == "writer"


def test_unknown_pool_is_a_404_page(ui: Ui) -> None:
    r = ui.signed_in("read").get("/pools/nope")
    assert r.status_code == 404 and "pool &#39;nope&#39; does not exist" in r.text
