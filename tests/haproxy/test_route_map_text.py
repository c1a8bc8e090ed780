"""``RouteMapText`` renders the route map as ``render_route_map`` does, checking (``token``)
only the lines whose key or value changed since its last render."""

from __future__ import annotations

import tempfile
from dataclasses import replace

import pytest

from lbprovider.haproxy import model as hx
from lbprovider.haproxy import render
from lbprovider.haproxy.layout import Layout, build_layout


def layout(n: int) -> Layout:
    routes = tuple(
        hx.Route(f"r{i}", hx.parse_address(f"10.0.{i // 250}.{i % 250 + 1}"), 80, 30000 + i)
        for i in range(n)
    )
    nodes = (hx.Node("n1", hx.parse_address("192.168.0.1")),)
    settings = hx.Settings(run_dir=tempfile.mkdtemp())
    return build_layout(hx.DesiredState(routes, nodes), settings)


def test_same_text_and_only_changed_lines_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    base = layout(200)
    text = render.RouteMapText()
    assert text.render(base) == render.render_route_map(base)
    route_map = dict(base.route_map)
    first, second = sorted(route_map)[:2]
    del route_map[first]
    route_map[second] = route_map[second].replace("|0|", "|7|", 1)
    route_map["10.9.9.9:443"] = route_map[second]
    changed = replace(base, route_map=route_map)
    tokens: list[object] = []
    original = render.token

    def counted(value: object) -> str:
        tokens.append(value)
        return original(value)

    monkeypatch.setattr(render, "token", counted)
    assert text.render(changed) == render.render_route_map(changed)
    assert len(tokens) == 4 + 2 * len(route_map)  # 2 changed lines, then the whole render
    tokens.clear()
    assert text.render(changed) == render.render_route_map(changed)
    assert len(tokens) == 2 * len(route_map)  # nothing new: only the whole render's


def test_an_unsafe_value_is_still_refused() -> None:
    base = layout(3)
    text = render.RouteMapText()
    text.render(base)
    key = next(iter(base.route_map))
    bad = replace(base, route_map={**base.route_map, key: "be x"})
    with pytest.raises(render.RenderError):
        text.render(bad)
    with pytest.raises(render.RenderError):  # not cached by the failed render either
        text.render(bad)
