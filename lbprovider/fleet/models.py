"""The agent protocol: the desired state an agent pulls and the status it reports back.

Why: the API (which compiles states from the database) and the agent (which must never import
the database) share these pydantic models, so both sides agree on one wire format and one
content digest. A state's ``version`` is a digest of its content: equal content, equal version,
on every API replica and across restarts.

What it must not do: import the database, services or HAProxy code (the agent imports this
module), or trust its input. Values here are only shape-checked; the agent still validates
every value through ``lbprovider.haproxy.model`` before it reaches HAProxy.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from bisect import insort
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import cached_property
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy without the values cached from this object's content (``cached_property``),
        which an ``update`` could make wrong."""
        copy = super().model_copy(update=update, deep=deep)
        for name, value in vars(type(self)).items():
            if isinstance(value, cached_property):
                copy.__dict__.pop(name, None)
        return copy


class RouteOptionsSpec(_Model):
    """Per-route behaviour from annotations and spec (None: the host's default)."""

    proxy_protocol: Literal["v1", "v2"] | None = None
    timeout_client_ms: int | None = None
    timeout_server_ms: int | None = None
    timeout_connect_ms: int | None = None
    balance: Literal["roundrobin", "leastconn", "first", "random", "source"] = "roundrobin"
    maxconn: int = 0
    source_ranges: tuple[str, ...] = ()
    source_affinity: bool = False


class RouteSpec(_Model):
    """One TCP VIP:port of a Service and the NodePort behind it."""

    route_id: str
    service: str  # namespace/name
    address: str
    port: int
    node_port: int
    health_check_node_port: int | None = None  # set: externalTrafficPolicy Local
    options: RouteOptionsSpec = Field(default_factory=RouteOptionsSpec)

    @property
    def key(self) -> str:
        """``<vip>:<port>`` as HAProxy sees the destination (IPv6 unbracketed)."""
        return f"{self.address}:{self.port}"

    @cached_property
    def full_digest(self) -> str:
        """SHA-256 of the route's canonical JSON, computed once per (immutable) route."""
        return _digest(self.model_dump(mode="json"))

    def digest(self) -> str:
        """A short digest of the route's content: "applied" means this digest was applied."""
        return self.full_digest[:12]

    @cached_property
    def order(self) -> tuple[int, int, int]:
        """The position of the route in a state: by address (family, value), then port."""
        addr = ipaddress.ip_address(self.address)
        return (addr.version, int(addr), self.port)


class NodeSpec(_Model):
    """A node as a server. ``draining``: cordoned, no new connections."""

    name: str
    address: str
    state: Literal["ready", "draining"] = "ready"


class HealthCheckSpec(_Model):
    """The per-node check of Cluster routes."""

    kind: Literal["http", "tcp"] = "http"
    port: int = 10256
    path: str = "/healthz"
    interval_ms: int = 2000


class FleetState(_Model):
    """Everything one fleet host should serve. ``version`` digests the rest."""

    protocol: int = PROTOCOL_VERSION
    host: str
    version: str = ""
    enabled: bool = True
    routes: tuple[RouteSpec, ...] = ()
    nodes: tuple[NodeSpec, ...] = ()
    health_check: HealthCheckSpec = Field(default_factory=HealthCheckSpec)
    vips: tuple[str, ...] = ()

    def content_digest(self) -> str:
        """The version this content deserves (the ``version`` field itself excluded): a digest
        of every field but the routes, and of each route's own digest in order. A route's
        digest is computed once per route object, so a state that shares most routes with the
        previous one (a delta, an incremental compile) costs a join, not a re-serialisation."""
        head = self.model_dump(mode="json", exclude={"version", "routes", "vips"})
        routes = ",".join(r.full_digest for r in self.routes)
        vips = ",".join(self.vips)  # addresses hold no comma
        parts = {"head": head, "routes": _sha(routes), "vips": _sha(vips)}
        return _digest(parts)[:20]

    def with_version(self) -> FleetState:
        """This state with ``version`` set from its content."""
        return self.model_copy(update={"version": self.content_digest()})

    @cached_property
    def routes_by_id(self) -> dict[str, RouteSpec]:
        """route_id -> route (read-only by convention; built once per state)."""
        return {r.route_id: r for r in self.routes}


class FleetDelta(_Model):
    """The change from a state the agent holds (``base_version``) to the host's current one.

    Sent instead of the whole state when the agent asks for it (``delta=true``) and the API
    still knows the base. Every field but the routes and VIPs is carried whole; routes are
    upserted (new or changed, whole) or removed by ``route_id``. The agent rebuilds the state
    with :meth:`apply_to` and must find ``version`` as its content digest, else it asks for the
    whole state.
    """

    kind: Literal["delta"] = "delta"
    protocol: int = PROTOCOL_VERSION
    host: str
    base_version: str
    version: str
    enabled: bool = True
    upsert: tuple[RouteSpec, ...] = ()
    remove: tuple[str, ...] = ()
    nodes: tuple[NodeSpec, ...] = ()
    health_check: HealthCheckSpec = Field(default_factory=HealthCheckSpec)
    vips_add: tuple[str, ...] = ()
    vips_remove: tuple[str, ...] = ()

    @classmethod
    def between(cls, base: FleetState, current: FleetState) -> FleetDelta:
        """The delta that turns ``base`` into ``current`` (same host)."""
        before, after = base.routes_by_id, current.routes_by_id
        upsert = tuple(
            r
            for rid, r in after.items()
            if (old := before.get(rid)) is not r
            and (old is None or old.full_digest != r.full_digest)
        )
        remove = tuple(rid for rid in before if rid not in after)
        old_vips, new_vips = set(base.vips), set(current.vips)
        return cls(
            protocol=current.protocol,
            host=current.host,
            base_version=base.version,
            version=current.version,
            enabled=current.enabled,
            upsert=upsert,
            remove=remove,
            nodes=current.nodes,
            health_check=current.health_check,
            vips_add=tuple(v for v in current.vips if v not in old_vips),
            vips_remove=tuple(v for v in base.vips if v not in new_vips),
        )

    def apply_to(self, base: FleetState) -> FleetState:
        """``base`` with this delta applied, routes and VIPs in the canonical order; raises
        ``ValueError`` when ``base`` is not this delta's base or the result is not ``version``."""
        if base.version != self.base_version or base.host != self.host:
            raise ValueError("the delta is not against this state")
        gone = set(self.remove) | {r.route_id for r in self.upsert}
        routes = _merged(
            [r for r in base.routes if r.route_id not in gone], self.upsert, _route_position
        )
        dropped = set(self.vips_remove)
        vips = _merged([v for v in base.vips if v not in dropped], self.vips_add, address_order)
        state = FleetState.model_construct(
            protocol=self.protocol,
            host=self.host,
            version=self.version,
            enabled=self.enabled,
            routes=tuple(routes),
            nodes=self.nodes,
            health_check=self.health_check,
            vips=tuple(vips),
        )
        if state.content_digest() != self.version:
            raise ValueError("the state rebuilt from the delta does not match its version")
        return state


def _merged(kept: list[Any], added: Sequence[Any], key: Callable[[Any], Any]) -> list[Any]:
    """``kept`` (sorted by ``key``) with ``added`` inserted in order."""
    if len(added) > 64:  # many: one sort beats bisecting each
        return sorted([*kept, *added], key=key)
    for item in added:
        insort(kept, item, key=key)
    return kept


def address_order(text: str) -> tuple[int, int]:
    """The canonical order of addresses in a state: family, then value."""
    addr = ipaddress.ip_address(text)
    return (addr.version, int(addr))


def _route_position(route: RouteSpec) -> tuple[tuple[int, int, int], str]:
    return (route.order, route.route_id)


class ServerHealth(_Model):
    """One HAProxy server as ``show stat`` / ``show servers state`` describe it."""

    backend: str
    server: str
    state: str  # UP, DOWN, DRAIN, MAINT, NOLB ...
    check: str = ""
    address: str = ""


class RouteCounters(_Model):
    """Per VIP:port counters from the routes stick table."""

    conn_cur: int = 0
    conn_cnt: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


class AnnouncementStatus(_Model):
    """Who announces which VIP since when: one line of the host's announcer (BGP/VRRP)."""

    vip: str
    state: str  # announced | standby | withdrawn (lbprovider.announce.AnnounceState)
    since: datetime  # UTC, when this host's state for the VIP began
    detail: str = ""  # e.g. "bgp: 1/1 peers established", "vrrp: lbp_g3 MASTER"


class HostStatus(_Model):
    """What an agent reports: heartbeat, what it applied, errors, health and counters.

    ``applied_routes`` (route_id -> digest) is sent when it changed since the last accepted
    report, ``None`` otherwise; ``route_errors`` names routes that are applied-but-failing
    (the serving check) or refused (an invalid value): route_id -> reason.

    This is also the one shape of ``FleetHost.status`` (the JSON column the dashboard reads):
    the API stores ``HostStatus.model_dump(mode="json")`` as it arrived (keeping the previous
    ``applied_routes`` when a report leaves it out), and readers parse it back with
    :meth:`read_stored`. In JSON::

        {"desired_version": str, "applied_version": str,
         "applied_routes": {route_id: digest} | null, "route_errors": {route_id: reason},
         "errors": [str], "pending": [str], "reloads": int, "failed_reloads": int,
         "worker_pid": int, "worker_exits": [str], "api_outage_seconds": float,
         "runtime_commands_total": int, "reloads_timed": int, "reload_seconds_total": float,
         "reload_seconds_last": float | null,
         "servers": [{"backend", "server", "state", "check", "address"}],
         "counters": {"<vip>:<port>": {"conn_cur", "conn_cnt", "bytes_in", "bytes_out"}},
         "vips": [str], "route_backends": {route_id: backend} | null,
         "announcements": [{"vip", "state", "since": ISO-8601 UTC, "detail"}],
         "report_id": str}

    A delta report is stored merged into the previous one (whole sections, its ``report_id``;
    ``base_report`` and the ``gone_*`` lists are not kept).

    ``servers`` are HAProxy's ``show stat`` rows; a Service's servers are those of the backends
    its routes use (the stored ``route_backends``: route_id -> backend, kept like
    ``applied_routes`` when a report leaves it out).

    The agent's own counters are cumulative since the agent started (so they reset when it
    restarts, unlike ``reloads`` which HAProxy's master counts): ``runtime_commands_total`` is
    every runtime-API command it sent, ``reloads_timed`` the applies that reloaded HAProxy,
    ``reload_seconds_total`` their summed wall time (the whole apply: config check, reload, wait
    for the new worker) and ``reload_seconds_last`` the latest one's. Older agents leave them out
    and read as zero / None.

    The API adds one key of its own to the stored status: ``out_of_sync_since`` (ISO-8601 UTC
    or null), when a report first showed ``applied_version`` differing from the version the API
    serves the host; null once a report shows them equal (see ``lbprovider.fleet.protocol``).
    """

    desired_version: str = ""
    applied_version: str = ""
    applied_routes: dict[str, str] | None = None
    route_errors: dict[str, str] = Field(default_factory=dict)
    errors: list[str] = Field(default_factory=list)
    pending: list[str] = Field(default_factory=list)
    reloads: int = 0
    failed_reloads: int = 0
    worker_pid: int = 0
    worker_exits: list[str] = Field(default_factory=list)
    api_outage_seconds: float = 0.0  # length of the last API outage the agent lived through
    runtime_commands_total: int = 0  # runtime-API commands sent, since the agent started
    reloads_timed: int = 0  # applies that reloaded HAProxy, since the agent started
    reload_seconds_total: float = 0.0  # their summed wall time in seconds
    reload_seconds_last: float | None = None  # the last one's, None before the first
    servers: list[ServerHealth] = Field(default_factory=list)
    counters: dict[str, RouteCounters] = Field(default_factory=dict)
    vips: list[str] = Field(default_factory=list)
    announcements: list[AnnouncementStatus] = Field(default_factory=list)
    # route_id -> HAProxy backend; like ``applied_routes``, None when unchanged since last sent
    route_backends: dict[str, str] | None = None
    # Report deltas (agents that the API told ``StatusAck.deltas``). ``report_id`` names this
    # report; with ``base_report`` set, this report is a delta against the report of that id
    # (the last one the API acknowledged): ``applied_routes``, ``route_backends`` and
    # ``counters`` then hold only the entries added or changed since it, ``gone_routes`` the
    # route_ids dropped from the first two and ``gone_counters`` the keys dropped from
    # ``counters``. Every other field is whole in every report.
    report_id: str = ""
    base_report: str = ""
    gone_routes: list[str] = Field(default_factory=list)
    gone_counters: list[str] = Field(default_factory=list)

    @classmethod
    def read_stored(cls, stored: object) -> HostStatus:
        """The stored ``FleetHost.status`` as a HostStatus; an unreadable one reads as empty
        (a host that has not reported yet, or a report from an older agent)."""
        if not isinstance(stored, dict):
            return cls()
        try:
            return cls.model_validate(stored)
        except ValueError:
            return cls()


class StatusAck(_Model):
    """The API's answer to a report; ``resend_routes`` asks for ``applied_routes`` again.

    ``deltas``: this API takes delta reports (``HostStatus.base_report``); an older API leaves
    it out (False), and the agent keeps sending whole reports. ``resend_full``: the API did not
    hold the base of a delta report (it kept none of the report's delta sections); the next
    report must be whole."""

    host: str
    desired_version: str
    resend_routes: bool = False
    deltas: bool = False
    resend_full: bool = False


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _digest(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
