"""Read-only pages: overview, Services, search, ExternalName mappings, Ingress routes, fleet,
history and audit. Each route reads its filters from the URL, calls the services' queries, and
renders the page (or, for htmx, the table fragment)."""

from __future__ import annotations

from typing import Any, get_args

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lbprovider.services import catalog, overview, queries, search
from lbprovider.services.audit import LEDGER_ACTIONS, ledger_query
from lbprovider.services.errors import NotFound
from lbprovider.services.queries import fleet_host_query
from lbprovider.ui import fleetview
from lbprovider.ui.guard import ReadPage, UiContext
from lbprovider.ui.paging import Page, page_of, window

router = APIRouter()

STATES = ("pending", "allocated")
REASONS = (
    "Satisfied",
    "NoPool",
    "PoolSelectorMismatch",
    "AlreadyAllocated",
    "SharingConflict",
    "OutOfIPs",
    "InvalidRequest",
)


def param(request: Request, name: str, *, limit: int = 253) -> str | None:
    value = request.query_params.get(name, "").strip()
    return value[:limit] or None


def choice(request: Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = param(request, name)
    return value if value in allowed else None


def canonical_ip(request: Request, name: str) -> tuple[str | None, str | None]:
    """The canonical address in ``name``, or an error text for the filter bar."""
    raw = param(request, name, limit=64)
    if raw is None:
        return None, None
    kind, text = search.classify(raw)
    return (text, None) if kind == "ip" else (None, f"{raw!r} is not an IP address")


@router.get("/")
def overview_page(request: Request, read: ReadPage) -> Response:
    ctx = read.ctx
    with read() as session:
        data = overview.overview(session=session)
        context = {"title": "Overview", "active": "overview", "o": data}
        return ctx.renderer.render(request, "overview.html", context, block="live")


@router.get("/services")
def services_page(request: Request, read: ReadPage) -> Response:
    ctx = read.ctx
    with read() as session:
        filters: dict[str, Any] = {
            "namespace": param(request, "namespace"),
            "q": param(request, "q"),
            "pool": param(request, "pool", limit=63),
            "state": choice(request, "state", STATES),
            "reason": choice(request, "reason", REASONS),
        }
        limit, offset = window(request)
        lines, total = catalog.service_lines(session, limit=limit, offset=offset, **filters)
        page = Page(lines, total, limit, offset)
        context = {
            "title": "Services",
            "active": "services",
            "filters": filters,
            "page": page,
            "rows": page.rows,
            "states": STATES,
            "reasons": REASONS,
        }
        return ctx.renderer.render(request, "services.html", context, block="table")


@router.get("/services/{namespace}/{name}")
def service_page(namespace: str, name: str, request: Request, read: ReadPage) -> Response:
    ctx = read.ctx
    with read() as session:
        try:
            row = catalog.get_service(session=session, namespace=namespace, name=name)
        except NotFound as e:
            return not_found(request, ctx, e.detail)
        events = catalog.service_events(session=session, namespace=namespace, name=name)
        context = {"title": f"{namespace}/{name}", "active": "services", "s": row, "events": events}
        context["health"] = fleetview.service_backend_health(
            session=session, namespace=namespace, name=name
        )
        return ctx.renderer.render(request, "service.html", context, block="live")


@router.get("/search")
def search_page(request: Request, read: ReadPage) -> Response:
    ctx = read.ctx
    with read() as session:
        q = param(request, "q") or ""
        result = search.search(session=session, query=q)
        context = {"title": f"Search {q}" if q else "Search", "active": "", "r": result, "q": q}
        return ctx.renderer.render(request, "search.html", context, block="results")


@router.get("/externalnames")
def external_names_page(request: Request, read: ReadPage) -> Response:
    ctx = read.ctx
    with read() as session:
        filters = {
            "namespace": param(request, "namespace"),
            "q": param(request, "q"),
            "status": choice(request, "status", get_args(catalog.ExternalNameState)),
        }
        page = page_of(session, catalog.external_name_query(**filters), request)
        context: dict[str, Any] = {"title": "ExternalName mappings", "active": "externalnames"}
        context |= {"filters": filters, "page": page}
        return ctx.renderer.render(request, "externalnames.html", context, block="table")


@router.get("/ingress")
def ingress_page(request: Request, read: ReadPage) -> Response:
    ctx = read.ctx
    with read() as session:
        broken = choice(request, "broken", ("yes", "no"))
        filters: dict[str, Any] = {
            "namespace": param(request, "namespace"),
            "q": param(request, "q"),
        }
        stmt = catalog.ingress_route_query(
            **filters, broken=None if broken is None else broken == "yes"
        )
        page = page_of(session, stmt, request)
        context = {"title": "Ingress routes", "active": "ingress", "page": page}
        context["filters"] = {**filters, "broken": broken}
        return ctx.renderer.render(request, "ingress.html", context, block="table")


@router.get("/fleet")
def fleet_page(request: Request, read: ReadPage) -> Response:
    ctx = read.ctx
    with read() as session:
        page = page_of(session, fleet_host_query(), request)
        hosts = overview.host_views(session, page.rows)
        context = {"title": "Fleet", "active": "fleet", "page": page, "hosts": hosts}
        context["announced"] = fleetview.announcements(page.rows)
        return ctx.renderer.render(request, "fleet.html", context, block="table")


@router.get("/history")
def history_page(request: Request, read: ReadPage) -> Response:
    ctx = read.ctx
    with read() as session:
        ip, ip_error = canonical_ip(request, "ip")
        filters: dict[str, Any] = {
            "ip": ip,
            "namespace": param(request, "namespace"),
            "name": param(request, "service"),
            "pool": param(request, "pool", limit=63),
            "actor": param(request, "actor"),
            "action": choice(request, "action", LEDGER_ACTIONS),
        }
        page = page_of(session, ledger_query(**filters), request)
        shown = {**filters, "ip": param(request, "ip", limit=64), "service": filters["name"]}
        context = {"title": "History", "active": "history", "page": page, "filters": shown}
        context |= {"actions": LEDGER_ACTIONS, "error": ip_error}
        return ctx.renderer.render(request, "history.html", context, block="table")


@router.get("/audit")
def audit_page(request: Request, read: ReadPage) -> Response:
    ctx = read.ctx
    with read("admin") as session:
        ip, ip_error = canonical_ip(request, "ip")
        filters: dict[str, Any] = {
            "actor": param(request, "actor", limit=100),
            "object_type": param(request, "object_type", limit=32),
            "object_id": param(request, "object_id"),
            "ip": ip,
            "service": param(request, "service"),
        }
        page = page_of(session, queries.audit_search(**filters), request)
        shown = {**filters, "ip": param(request, "ip", limit=64)}
        context = {"title": "Audit", "active": "audit", "page": page, "filters": shown}
        context["error"] = ip_error
        return ctx.renderer.render(request, "audit.html", context, block="table")


def not_found(request: Request, ctx: UiContext, detail: str) -> Response:
    return ctx.renderer.render(request, "error.html", {"status": 404, "detail": detail}, status=404)
