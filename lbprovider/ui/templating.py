"""Rendering: one autoescaping Jinja2 environment over ``web/templates``, full page or fragment.

A fragment (one named block of the page's template) is returned only to an htmx request that is
neither boosted nor a history restore; everything else gets the full page, so any URL the
browser shows can be reloaded or bookmarked. Every answer says ``Vary: HX-Request`` so caches
keep the two apart. This module decides *how* a page is sent, never what is in it.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from jinja2.filters import do_urlencode
from jinja2_fragments import render_block

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
TEMPLATES_DIR = WEB_DIR / "templates"
STATIC_DIR = WEB_DIR / "static"
HTMX_FILE = "htmx-2.0.11.min.js"

NAV = (
    ("overview", "/", "Overview", "read"),
    ("pools", "/pools", "Pools", "read"),
    ("services", "/services", "Services", "read"),
    ("externalnames", "/externalnames", "ExternalNames", "read"),
    ("ingress", "/ingress", "Ingress", "read"),
    ("fleet", "/fleet", "Fleet", "read"),
    ("history", "/history", "History", "read"),
    ("audit", "/audit", "Audit", "admin"),
    ("tokens", "/tokens", "Tokens", "admin"),
)


def wants_fragment(request: Request) -> bool:
    """htmx asked for a piece of the page (not a boosted navigation or a history restore)."""
    h = request.headers
    return (
        h.get("HX-Request") == "true"
        and h.get("HX-Boosted") != "true"
        and h.get("HX-History-Restore-Request") != "true"
    )


def ago(value: datetime | timedelta | None, now: datetime | None = None) -> str:
    """ "12 s ago", "3 min ago", "2 h ago", "5 d ago"; "never" for None."""
    if value is None:
        return "never"
    delta = value if isinstance(value, timedelta) else (now or datetime.now(UTC)) - value
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


_LEFT_AS_IS = re.compile(r"[A-Za-z0-9_.~/-]*")
"""What Jinja's ``urlencode`` leaves unquoted in a string (``quote(text, safe="/")``)."""


def url_quoted(value: Any) -> str:
    """Jinja's ``urlencode``, same output, with a shortcut for text it would leave as is (the
    names and addresses in every row's links): its general path (type checks, encode, quote)
    cost ~2 us a call, 150 calls per Services page."""
    if isinstance(value, str) and _LEFT_AS_IS.fullmatch(value):
        return value
    return do_urlencode(value)


def when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "—"


def url_with(request: Request, **changes: Any) -> str:
    """The current URL with some query parameters changed (None or "" drops one)."""
    params = {k: v for k, v in request.query_params.items()}
    for key, value in changes.items():
        if value is None or value == "":
            params.pop(key, None)
        else:
            params[key] = str(value)
    query = urlencode(params)
    return request.url.path + (f"?{query}" if query else "")


def current_url(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


@lru_cache(maxsize=1)
def make_environment() -> Environment:
    """The dashboard's template environment, shared by every app in the process (templates
    compile once; rendering is thread-safe and nothing per-app is stored in it)."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(["html"], default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["urlencode"] = url_quoted
    env.filters["ago"] = ago
    env.filters["when"] = when
    env.globals.update(nav=NAV, htmx_file=HTMX_FILE)
    return env


class Renderer:
    """Renders a template as a page or as one of its blocks."""

    def __init__(self, env: Environment, *, poll_seconds: float) -> None:
        self.env = env
        self.poll_seconds = poll_seconds

    def render(
        self,
        request: Request,
        template: str,
        context: dict[str, Any],
        *,
        block: str | None = None,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> HTMLResponse:
        ctx = self._context(request, context)
        if block is not None and wants_fragment(request):
            html = render_block(self.env, template, block, ctx)
        else:
            html = self.env.get_template(template).render(ctx)
        response = HTMLResponse(html, status_code=status, headers=headers)
        response.headers["Vary"] = "HX-Request"
        response.headers["Cache-Control"] = "no-store"
        return response

    def _context(self, request: Request, context: dict[str, Any]) -> dict[str, Any]:
        user = getattr(request.state, "ui_user", None)
        return {
            "request": request,
            "user": user,
            "csrf": user.csrf if user is not None else "",
            "poll_ms": int(self.poll_seconds * 1000),
            "url_with": lambda **kw: url_with(request, **kw),
            "here": current_url(request),
            "title": "lbprovider",
            "active": "",
            "error": None,
            "notice": None,
            **context,
        }
