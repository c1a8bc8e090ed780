"""Read what HAProxy is doing, for the agent's heartbeat: server health, counters, process.

Why: operators and the controller see the fleet through these reports (dashboard, Serving
condition); they come from HAProxy's own runtime view, not from what the agent believes.

What it must not do: change HAProxy, or fail the heartbeat: a read that fails becomes an error
line in the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from lbprovider.fleet.models import RouteCounters, ServerHealth
from lbprovider.haproxy.layout import ROUTES_MAP, TABLE_BACKEND, parse_route_value
from lbprovider.haproxy.process import HAProxyProcess
from lbprovider.haproxy.runtime import HAProxyError, RuntimeClient


@dataclass
class Observed:
    """One look at HAProxy."""

    servers: list[ServerHealth] = field(default_factory=list)
    counters: dict[str, RouteCounters] = field(default_factory=dict)
    route_backends: dict[str, str] = field(default_factory=dict)  # VIP:port -> backend
    reloads: int = 0
    failed_reloads: int = 0
    worker_pid: int = 0
    worker_exits: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def observe(
    client: RuntimeClient,
    process: HAProxyProcess,
    run_dir: str,
    *,
    live: bool = True,
    previous: Mapping[str, RouteCounters] | None = None,
) -> Observed:
    """Servers (``show stat``), per-route counters (the routes table), which backend each
    VIP:port goes to (the live routes map) and ``show proc``. ``live=False`` skips the
    routes table and map (the two reads whose cost grows with the routes); ``previous``
    counters are reused as objects where unchanged."""
    seen = Observed()
    try:
        seen.servers = servers(client)
        if live:
            seen.counters = route_counters(client, previous or {})
            seen.route_backends = route_backends(client, run_dir)
    except HAProxyError as e:
        seen.errors.append(f"reading haproxy stats: {e}")
    try:
        proc = process.show_proc()
        seen.reloads, seen.failed_reloads = proc.reloads, proc.failed_reloads
        seen.worker_pid = proc.workers[-1] if proc.workers else 0
    except HAProxyError as e:
        seen.errors.append(f"reading haproxy master: {e}")
    for ex in process.worker_exits():
        if ex.code != 0:
            kind = "old worker" if ex.former else "worker"
            seen.worker_exits.append(f"{kind} {ex.pid} exited with code {ex.code} ({ex.reason})")
    return seen


def servers(client: RuntimeClient) -> list[ServerHealth]:
    """Every server row of ``show stat``."""
    out = []
    for row in client.show_stat():
        name = row.get("svname", "")
        if name in ("FRONTEND", "BACKEND", ""):
            continue
        out.append(
            ServerHealth(
                backend=row.get("pxname", ""),
                server=name,
                state=row.get("status", ""),
                check=row.get("check_status", ""),
                address=row.get("addr", ""),
            )
        )
    return out


def route_counters(
    client: RuntimeClient, previous: Mapping[str, RouteCounters] | None = None
) -> dict[str, RouteCounters]:
    """VIP:port -> connection and byte counters from the routes stick table (the object of
    ``previous`` where the values are the same: cheap to build and to compare)."""
    out = {}
    previous = previous or {}
    for key, values in client.show_table(TABLE_BACKEND).items():
        now = (
            values.get("conn_cur", 0),
            values.get("conn_cnt", 0),
            values.get("bytes_in_cnt", 0),
            values.get("bytes_out_cnt", 0),
        )
        old = previous.get(key)
        if old is not None and (old.conn_cur, old.conn_cnt, old.bytes_in, old.bytes_out) == now:
            out[key] = old
        else:
            out[key] = RouteCounters(
                conn_cur=now[0], conn_cnt=now[1], bytes_in=now[2], bytes_out=now[3]
            )
    return out


def route_backends(client: RuntimeClient, run_dir: str) -> dict[str, str]:
    """VIP:port -> the backend HAProxy sends it to, read from the live routes map."""
    out = {}
    for key, value in client.show_map(f"{run_dir}/{ROUTES_MAP}"):
        parsed = parse_route_value(value)
        if parsed is not None:
            out[key] = parsed[0]
    return out
