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
import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


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

    def digest(self) -> str:
        """A short digest of the route's content: "applied" means this digest was applied."""
        return _digest(self.model_dump(mode="json"))[:12]


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
        """The version this content deserves (the ``version`` field itself excluded)."""
        return _digest(self.model_dump(mode="json", exclude={"version"}))[:20]

    def with_version(self) -> FleetState:
        """This state with ``version`` set from its content."""
        return self.model_copy(update={"version": self.content_digest()})


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
         "announcements": [{"vip", "state", "since": ISO-8601 UTC, "detail"}]}

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
    """The API's answer to a report; ``resend_routes`` asks for ``applied_routes`` again."""

    host: str
    desired_version: str
    resend_routes: bool = False


def _digest(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
