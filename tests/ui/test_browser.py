"""The dashboard in a real browser (Debian's Chromium through Playwright): sign in, create a
pool, watch an allocation appear live when a Service is created through the lab Kubernetes API
server and the real controller, search an IP, edit a pool through its preview, revoke a token,
and see a cross-origin form refused. Screenshots land in ``artifacts/screenshots/``."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import select

from lbprovider.config import Settings
from lbprovider.controller.runner import Controller
from lbprovider.db.models import ExternalNameMapping, FleetHost, IngressRoute, Pool
from lbprovider.db.session import transaction
from lbprovider.db.types import utcnow
from lbprovider.kube.client import load_api_client
from lbprovider.lab.apiserver import LabAPIServer

from .conftest import Ui, add_service, make_pool

pytestmark = [
    pytest.mark.browser,
    pytest.mark.parametrize("engine", ["sqlite"], indirect=True),
]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
        )
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1366, "height": 820})
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    yield pg
    context.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, ui: Ui, scope: str = "admin", then: str = "/") -> None:
    page.goto(ui.url + then)
    expect(page).to_have_url(re.compile(r".*/login(\?.*)?$"))
    page.fill("#token", ui.secrets[scope])
    page.click("button[type=submit]")
    page.wait_for_url(ui.url + then)


def test_sign_in_and_every_page(ui: Ui, page: Page) -> None:
    make_pool(
        ui.sessions, "web", "127.1.0.0/24", description="public web", exclusions=["127.1.0.1"]
    )
    make_pool(ui.sessions, "small", "127.2.0.0/29")
    for i in range(7):
        add_service(ui.sessions, "shop", f"svc{i}", pool="small")
    for i in range(12):
        add_service(ui.sessions, "web", f"front{i}", pool="web")
    add_service(ui.sessions, "shop", "late", allocate=False)
    with transaction(ui.sessions) as s:
        s.add(
            ExternalNameMapping(
                namespace="shop",
                name="db",
                external_name="db.example.net",
                dns_status="ok",
                dns_addresses=["192.0.2.7"],
                dns_checked_at=utcnow(),
            )
        )
        s.add(
            IngressRoute(
                namespace="web",
                ingress_name="site",
                host="www.example.com",
                backend_service="front0",
                backend_port="80",
                node_port=30080,
            )
        )
        s.add(
            IngressRoute(
                namespace="web",
                ingress_name="old",
                host="old.example.com",
                backend_service="gone",
                backend_port="80",
                error="Service web/gone does not exist",
            )
        )
        s.add(
            FleetHost(
                name="edge-1",
                address="10.9.0.1",
                last_heartbeat=utcnow() - timedelta(seconds=3),
                applied_version="7",
                status={
                    "vips": ["127.1.0.0", "127.1.0.2"],
                    "servers": [
                        {
                            "backend": "web_front0_80",
                            "server": "node-a",
                            "state": "UP",
                            "check_status": "L4OK",
                        },
                        {
                            "backend": "web_front0_80",
                            "server": "node-b",
                            "state": "DOWN",
                            "check_status": "L4CON",
                        },
                    ],
                },
            )
        )
    page.goto(ui.url + "/login")
    shot(page, "login")
    page.fill("#token", "lbp_wrongwrongwr_" + "x" * 43)
    page.click("button[type=submit]")
    expect(page.locator(".alert")).to_contain_text("unknown token")
    page.fill("#token", ui.secrets["admin"])
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.locator(".who")).to_contain_text("admin")
    expect(page.locator("#overview")).to_contain_text("shop/late")
    shot(page, "overview")
    pages = {
        "pools": "/pools",
        "pool": "/pools/small",
        "pool-edit": "/pools/web/edit",
        "services": "/services",
        "service": "/services/shop/svc0",
        "search": "/search?q=127.2.0.3",
        "externalnames": "/externalnames",
        "ingress": "/ingress",
        "fleet": "/fleet",
        "history": "/history",
        "audit": "/audit",
        "tokens": "/tokens",
    }
    for name, url in pages.items():
        page.click(f'nav a[href="{url}"]') if url in ("/pools", "/services") else page.goto(
            ui.url + url
        )
        expect(page.locator("main h1")).to_be_visible()
        shot(page, name)
    expect(page.locator("#token-list")).to_contain_text("reader")


def test_create_a_pool(ui: Ui, page: Page) -> None:
    sign_in(page, ui, "write", "/pools")
    page.click("text=New pool")
    page.fill("#f-name", "edge")
    page.fill("#f-ranges", "127.6.0.0/28")
    page.fill("#f-exclusions", "127.6.0.1")
    page.fill("#f-description", "edge services")
    page.click("text=Create pool")
    expect(page.locator(".flash")).to_have_text("Pool edge created.")
    expect(page.locator('.addr-grid [data-state="excluded"]')).to_have_count(1)
    expect(page.locator('.addr-grid [data-state="free"]')).to_have_count(15)
    shot(page, "pool-created")
    with ui.sessions() as s:
        assert s.scalar(select(Pool.description).where(Pool.name == "edge")) == "edge services"


def lab_settings(kubeconfig: Path, url: str) -> Settings:
    return Settings(
        kubeconfig=str(kubeconfig),
        database_url=url,
        leader_election=False,
        controller_workers=2,
        sticky_hold_seconds=0,
        quarantine_seconds=0,
        reconcile_backoff_max_seconds=1.0,
        serving_poll_seconds=0.5,
        dns_check_seconds=60.0,
        dns_timeout_seconds=0.5,
    )


def test_an_allocation_appears_live_when_a_service_is_created(
    ui: Ui, page: Page, tmp_path: Path
) -> None:
    make_pool(ui.sessions, "lab", "127.0.10.1-127.0.10.20")
    with LabAPIServer(host="127.0.0.1", port=0, version="1.30") as lab:
        kubeconfig = lab.write_kubeconfig(tmp_path / "kubeconfig")
        api = load_api_client(Settings(kubeconfig=str(kubeconfig)))
        core = k8s.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": "shop"}}, _preload_content=False)
        url = ui.engine.url.render_as_string(hide_password=False)
        controller = Controller(lab_settings(kubeconfig, url), api=api, sessions=ui.sessions)
        controller.start()
        try:
            assert controller.wait_active(15)
            sign_in(page, ui, "read", "/services")
            expect(page.locator("#live-status")).to_have_text("live")
            expect(page.locator("#services-table")).to_contain_text("No LoadBalancer Services yet")
            core.create_namespaced_service("shop", _service("web"), _preload_content=False)
            row = page.locator("#services-table tr", has_text="shop/web")
            expect(row).to_contain_text("127.0.10.1", timeout=20_000)
            expect(row).to_contain_text("lab")
            shot(page, "services-live")
            assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
        finally:
            controller.stop()
            api.close()


def _service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        },
    }


def test_without_server_sent_events_the_page_polls(ui: Ui, page: Page) -> None:
    make_pool(ui.sessions, "web", "127.1.0.0/29")
    page.add_init_script("delete window.EventSource;")
    sign_in(page, ui, "read", "/pools/web")
    expect(page.locator("#live-status")).to_have_text("polling")
    add_service(ui.sessions, "shop", "polled", pool="web")
    expect(page.locator("#pool-allocations")).to_contain_text("shop/polled", timeout=10_000)
    expect(page.locator('[data-ip="127.1.0.0"]')).to_have_attribute("data-state", "allocated")


def test_search_an_ip(ui: Ui, page: Page) -> None:
    make_pool(ui.sessions, "web", "127.1.0.0/29")
    add_service(ui.sessions, "shop", "front", pool="web")
    ip = add_service(ui.sessions, "shop", "back", pool="web")
    sign_in(page, ui, "read")
    page.fill("#global-search", f"{ip}")
    page.press("#global-search", "Enter")
    expect(page).to_have_url(f"{ui.url}/search?q={ip}")
    expect(page.locator("#search-allocations")).to_contain_text("shop/back")
    expect(page.locator("#search-allocations")).not_to_contain_text("shop/front")
    expect(page.locator("#results")).to_contain_text("web")
    shot(page, "search-ip")


def test_edit_a_pool_and_confirm_the_preview(ui: Ui, page: Page) -> None:
    make_pool(ui.sessions, "p", "127.10.0.0/29")
    add_service(ui.sessions, "shop", "web", pool="p")
    sign_in(page, ui, "write", "/pools/p")
    page.click("text=Edit")
    page.fill("#f-ranges", "127.10.0.4/30")
    page.click("text=Save")
    preview = page.locator("#preview")
    expect(preview).to_contain_text("This edit would move 1 live allocation")
    expect(preview).to_contain_text("127.10.0.0")
    shot(page, "pool-edit-preview")
    with ui.sessions() as s:
        assert s.scalar(select(Pool.version).where(Pool.name == "p")) == 1
    page.click("text=Confirm and move 1 allocation")
    expect(page.locator(".flash")).to_contain_text("Pool p saved. 1 allocation(s) moved.")
    expect(page.locator("#pool-allocations")).to_contain_text("127.10.0.4")
    shot(page, "pool-edited")


def test_revoke_a_token(ui: Ui, page: Page) -> None:
    sign_in(page, ui, "admin", "/tokens")
    page.fill('input[name="name"]', "ci")
    page.click("text=Create token")
    expect(page.locator("#new-secret")).to_have_value(re.compile(r"^lbp_[a-z0-9]{12}_"))
    shot(page, "token-created")
    row = page.locator('tr[data-token="reader"]')
    page.once("dialog", lambda d: d.accept())
    row.locator("text=Revoke").click()
    expect(page.locator(".flash")).to_have_text("Token reader revoked.")
    expect(page.locator('tr[data-token="reader"]')).to_contain_text("revoked")
    expect(page.locator('tr[data-token="reader"] button')).to_have_count(0)
    shot(page, "token-revoked")


class _EvilPage(BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        body = (
            "<!doctype html><form id=f method=post action='" + self.target + "/pools'>"
            "<input name=name value=evil><input name=ranges value=127.66.0.0/29>"
            "<input name=csrf_token value=guessed></form>"
            "<script>document.getElementById('f').submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


def test_a_form_posted_from_another_origin_is_refused(ui: Ui, page: Page) -> None:
    sign_in(page, ui, "admin")
    handler = type("Evil", (_EvilPage,), {"target": ui.url})
    evil = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=evil.serve_forever, daemon=True)
    thread.start()
    try:
        with page.expect_response(lambda r: r.url == f"{ui.url}/pools") as answer:
            page.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        assert answer.value.status == 403
        expect(page.locator(".alert")).to_contain_text("refused")
        shot(page, "csrf-refused")
    finally:
        evil.shutdown()
        evil.server_close()
        thread.join(timeout=5)
    with ui.sessions() as s:
        assert s.scalar(select(Pool).where(Pool.name == "evil")) is None
