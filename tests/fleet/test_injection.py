"""Injection fuzz from the API side: hostile Service names, annotation values and spec fields
written to the records never add a config directive, a map line or a runtime command — they
are refused by the compiler (a named problem) or arrive as validated values."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.agent.translate import translate
from lbprovider.config import Settings
from lbprovider.db.models import Base
from lbprovider.db.session import make_engine, session_factory, transaction
from lbprovider.fleet.compile import compile_fleet
from lbprovider.haproxy.apply import LiveState, plan_runtime
from lbprovider.haproxy.layout import build_layout
from lbprovider.haproxy.model import Settings as HSettings
from lbprovider.haproxy.render import render_config, render_route_map
from lbprovider.services.records import upsert_service_record

from .helpers import make_pool, put_service, service_data, set_node

HOSTILE = st.sampled_from(
    ["\n", "\r\n", "#", '"', "'", " ", ";", "\\", "%[", "}", "{", "bind :1", "server x 1.2.3.4"]
)
text = st.lists(st.one_of(HOSTILE, st.text(min_size=0, max_size=6)), max_size=5).map("".join)
value = st.one_of(text, st.integers(-5, 10**7), st.none(), st.booleans())
MAP_LINE = re.compile(r"[0-9a-f.:]+:\d+ b[sl]_p[0-9a-f]{10}(_\d+)?\|\d+\|\d+\|\d+")
SAFE_WORD = re.compile(r"[A-Za-z0-9._:/@\[\]|-]+")


def fresh_db() -> sessionmaker[Session]:
    path = Path(tempfile.mkdtemp(prefix="lbp-fz-")) / "fz.db"
    engine = make_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    sessions = session_factory(engine)
    make_pool(sessions, "127.50.0.1-127.50.0.9")
    set_node(sessions, "node-1", "127.0.0.2")
    return sessions


SESSIONS = fresh_db()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=text,
    namespace=text,
    options=st.dictionaries(
        st.sampled_from(
            ["proxy_protocol", "balance", "maxconn", "timeout_client_ms", "timeout_connect_ms"]
        ),
        value,
    ),
    ranges=st.lists(text, max_size=3),
    policy=st.sampled_from(["Cluster", "Local", "Local\nbind :1"]),
    hc=value,
    node_port=value,
)
def test_hostile_values_never_reach_haproxy_text(
    name: str,
    namespace: str,
    options: dict[str, object],
    ranges: list[str],
    policy: str,
    hc: object,
    node_port: object,
) -> None:
    with transaction(SESSIONS) as s:
        put_service(s, service_data("good", [(80, 30080)]))
        data = service_data("victim", [(81, 30081)])
        put_service(s, data)  # allocated while valid, then rewritten with hostile values
        data.name, data.namespace = name or "x", namespace or "y"
        data.options, data.source_ranges = options, ranges
        data.external_traffic_policy, data.health_check_node_port = policy, hc  # type: ignore[assignment]
        data.ports = [{"name": "p", "protocol": "TCP", "port": 81, "nodePort": node_port}]
        upsert_service_record(session=s, data=data)
        compiled = compile_fleet(s, Settings(database_url="sqlite://"))
        s.rollback()  # every example starts from the same database
    state = compiled.state_for("edge-1", enabled=True)
    translated = translate(state)
    hs = HSettings(run_dir="/tmp/lbp-fuzz")
    layout = build_layout(translated.desired, hs)
    route_map = render_route_map(layout).splitlines()
    assert len(route_map) == len(translated.desired.routes)
    assert all(MAP_LINE.fullmatch(line) for line in route_map), route_map
    config = render_config(layout)
    for bad in ("bind :1", "server x", "\r", '"n', "%[}"):
        assert bad not in config
    plan = plan_runtime(layout, LiveState(routes=[], allow={}, servers=[]))
    for cmd in [*plan.up, *plan.maps, *plan.down, *plan.deletes]:
        assert "\n" not in cmd.text and ";" not in cmd.text
        assert all(SAFE_WORD.fullmatch(w) for w in cmd.text.split(" ")), cmd.text
