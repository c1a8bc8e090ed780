"""Settings for every lbprovider process, read from the environment (prefix ``LBP_``).

One ``Settings`` object is the only place a default lives. Each field says its unit and why the
default is what it is. Insecure combinations are refused outside ``environment=dev``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SESSION_SECRET = "dev-insecure-session-secret"  # noqa: S105 (refused outside dev)
DEFAULT_SQLITE_URL = "sqlite:///" + str(Path("lbprovider.db").absolute())


class BgpPeerSettings(BaseModel):
    """One BGP neighbour of a fleet host (an element of ``LBP_ANNOUNCE_BGP_PEERS``)."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(description="Neighbour IPv4 or IPv6 address; VIPs of its family go to it.")
    asn: int = Field(ge=1, le=4294967295, description="Neighbour AS number.")
    password: str | None = Field(
        default=None,
        description="TCP-MD5 password of this session; unset: LBP_ANNOUNCE_BGP_PASSWORD.",
    )
    bfd: bool | None = Field(
        default=None, description="BFD on this session; unset: LBP_ANNOUNCE_BGP_BFD."
    )
    port: int = Field(default=179, ge=1, le=65535, description="Neighbour TCP port.")
    multihop: int | None = Field(
        default=None,
        ge=1,
        le=255,
        description="TTL for a neighbour that is not on a connected subnet; unset: direct.",
    )
    source: str | None = Field(
        default=None,
        description="Local address of the session; required for a multihop peer with BFD.",
    )


class Settings(BaseSettings):
    """Process settings. Every field can be set as ``LBP_<FIELD NAME>``."""

    model_config = SettingsConfigDict(env_prefix="LBP_", extra="ignore")

    environment: Literal["dev", "prod"] = Field(
        default="dev",
        description="`dev` allows SQLite and insecure cookies for a trial; `prod` refuses both.",
    )
    database_url: str = Field(
        default=DEFAULT_SQLITE_URL,
        description=(
            "SQLAlchemy URL of the database. SQLite file in the working directory by default so a "
            "first run needs nothing; use postgresql+psycopg://... in production."
        ),
    )
    db_pool_size: int = Field(
        default=10, ge=1, description="Connections kept per process (PostgreSQL only)."
    )
    kubeconfig: str | None = Field(
        default=None,
        description=(
            "Path of a kubeconfig file. Unset: in-cluster config when running in a Pod, else "
            "~/.kube/config, else no cluster (the API and dashboard still run)."
        ),
    )
    loadbalancer_class: str = Field(
        default="lbprovider.io/haproxy",
        description="spec.loadBalancerClass of the Services this controller owns.",
    )
    handle_default_class: bool = Field(
        default=True,
        description=(
            "Also own LoadBalancer Services with no loadBalancerClass. Turn off when another "
            "provider is the cluster default."
        ),
    )
    ingress_class: str = Field(
        default="lbprovider.io/haproxy",
        description="IngressClass controller name whose Ingresses are recorded as routes.",
    )
    listen: str = Field(
        default="127.0.0.1:8080",
        description="host:port of the API and dashboard. Loopback by default: expose on purpose.",
    )
    migrations_dir: str | None = Field(
        default=None,
        description="Alembic scripts directory. Unset: `migrations/` next to the source tree.",
    )
    web_dir: str | None = Field(
        default=None,
        description="Templates and static files. Unset: `web/` next to the source tree.",
    )
    log_level: str = Field(default="INFO", description="Python log level of the JSON logs.")
    log_json: bool = Field(default=True, description="JSON logs (stable keys) instead of text.")

    # IPAM policy
    sticky_hold_seconds: int = Field(
        default=3600,
        ge=0,
        description=(
            "Seconds a released IP is held for the Service that had it: a Service recreated "
            "with the same namespace/name within this time gets the same IP back."
        ),
    )
    quarantine_seconds: int = Field(
        default=60,
        ge=0,
        description=(
            "Seconds a released IP is not given to another Service, so clients and DNS caches "
            "still pointing at it do not reach a stranger."
        ),
    )
    reservation_sweep_seconds: float = Field(
        default=30.0, gt=0, description="Seconds between sweeps that release expired reservations."
    )

    # Controller
    controller_workers: int = Field(
        default=4, ge=1, description="Reconcile workers; keys are deduplicated, so 4 is plenty."
    )
    reconcile_backoff_max_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Longest wait before retrying a failed reconcile (e.g. the database is away); "
            "retries start at 50 ms and double, so recovery is quick once it returns."
        ),
    )
    resync_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Seconds between full resyncs of every cached object (catches missed events).",
    )
    node_address_type: Literal["InternalIP", "ExternalIP"] = Field(
        default="InternalIP", description="Node address the fleet sends traffic to."
    )
    leader_election: bool = Field(
        default=True, description="Elect one writer with a coordination.k8s.io Lease."
    )
    lease_name: str = Field(default="lbprovider-controller", description="Lease object name.")
    lease_namespace: str = Field(
        default="lbprovider-system", description="Namespace of the leader-election Lease."
    )
    lease_duration_seconds: float = Field(
        default=15.0, gt=0, description="Seconds a Lease is valid without renewal (as kube-*)."
    )
    renew_deadline_seconds: float = Field(
        default=10.0, gt=0, description="Seconds a leader keeps trying to renew before it resigns."
    )
    retry_period_seconds: float = Field(
        default=2.0, gt=0, description="Seconds between acquire/renew attempts."
    )
    dns_check_seconds: float = Field(
        default=60.0, gt=0, description="Seconds between DNS checks of ExternalName targets."
    )
    dns_servers: list[str] = Field(
        default_factory=list,
        description=(
            "Nameservers (host or host:port) the ExternalName checker asks. Empty: the ones in "
            "/etc/resolv.conf, i.e. what cluster workloads resolve with."
        ),
    )
    dns_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Seconds a DNS check waits for an answer before reporting `timeout`.",
    )
    serving_poll_seconds: float = Field(
        default=5.0,
        gt=0,
        description=(
            "Seconds between reads of the fleet's serving state from the database, to refresh "
            "the lbprovider.io/Serving condition (one query, however many Services)."
        ),
    )
    controller_metrics_listen: str = Field(
        default="127.0.0.1:9101",
        description=(
            "host:port where `lbprovider controller` serves Prometheus metrics (any path) and "
            "/healthz. Loopback by default: expose it on purpose (e.g. 0.0.0.0:9101 in a Pod). "
            "`lbprovider serve` shows the controller's metrics on its own /metrics instead."
        ),
    )

    # API and dashboard
    session_secret: str = Field(
        default=DEV_SESSION_SECRET,
        description="Key signing dashboard session cookies. Must be set outside dev.",
    )
    auth_fail_limit: int = Field(
        default=10, ge=1, description="Failed authentications per client per minute before 429."
    )
    fleet_long_poll_max_seconds: float = Field(
        default=60.0, gt=0, description="Longest wait an agent may ask for on a state long-poll."
    )

    # Fleet desired state (compiled by the API for each agent)
    fleet_health_check_kind: Literal["http", "tcp"] = Field(
        default="http",
        description=(
            "How HAProxy checks each node for externalTrafficPolicy: Cluster Services: `http` "
            "GETs fleet_health_check_path (kube-proxy's healthz), `tcp` connects to the port."
        ),
    )
    fleet_health_check_port: int = Field(
        default=10256,
        ge=1,
        le=65535,
        description="Port of the per-node check: kube-proxy's healthz port 10256 by default.",
    )
    fleet_health_check_path: str = Field(
        default="/healthz", description="Path of the per-node HTTP check (kube-proxy's)."
    )
    fleet_health_check_interval_ms: int = Field(
        default=2000,
        ge=100,
        le=3_600_000,
        description="Milliseconds between node checks; 2 s notices a dead node in ~6 s (3 fails).",
    )
    fleet_host_stale_seconds: float = Field(
        default=60.0,
        gt=0,
        description=(
            "A fleet host without a heartbeat for this long no longer counts among the hosts "
            "that must serve a VIP before its Service is marked Serving."
        ),
    )
    fleet_state_poll_seconds: float = Field(
        default=0.2,
        gt=0,
        description=(
            "Seconds between database checks while an agent's long-poll waits for a newer "
            "state (one cheap change-stamp query per check)."
        ),
    )

    # Fleet agent (`lbprovider agent`, one per HAProxy host)
    agent_api_url: str = Field(
        default="http://127.0.0.1:8080",
        description="Base URL of the lbprovider API the agent pulls its desired state from.",
    )
    agent_token: str = Field(
        default="",
        description="Bearer token with the `agent` scope for this host (`token create`).",
    )
    agent_host: str = Field(
        default="",
        description="This fleet host's name, as in its agent token. Empty: the machine's hostname.",
    )
    agent_haproxy_bin: str = Field(
        default="haproxy", description="HAProxy binary (2.6 or newer) the agent supervises."
    )
    agent_state_dir: str = Field(
        default="/var/lib/lbprovider-agent",
        description=(
            "Private directory of the agent: HAProxy config, maps, sockets, server-state file "
            "and the last good desired state (served again when the API is away at start-up). "
            "Absolute, under 80 characters (Unix socket paths)."
        ),
    )
    agent_vip_mode: Literal["none", "local"] = Field(
        default="none",
        description=(
            "`none`: VIPs are routed to this host by something else; HAProxy binds them with "
            "`transparent` (needs net.ipv4.ip_nonlocal_bind or TPROXY). `local`: the agent adds "
            "its VIPs to agent_vip_interface with netlink and removes the ones no longer wanted."
        ),
    )
    agent_vip_interface: str = Field(
        default="lo", description="Interface that carries the VIPs in `local` mode."
    )
    agent_bind_mode: Literal["wildcard", "per-vip"] = Field(
        default="wildcard",
        description=(
            "`wildcard`: one bind per distinct port (a new VIP on a bound port needs no reload). "
            "`per-vip`: one bind per VIP:port (a new VIP is a reload)."
        ),
    )
    agent_bind_address: str | None = Field(
        default=None,
        description="Address of the wildcard binds. Unset: every IPv4 address of the host.",
    )
    agent_reload_debounce_seconds: float = Field(
        default=2.0,
        ge=0,
        description=(
            "Least seconds between two HAProxy reloads: a change that needs a reload within "
            "this window waits and is applied together with whatever else arrives."
        ),
    )
    agent_long_poll_seconds: float = Field(
        default=30.0, gt=0, description="Seconds one state long-poll may wait for a change."
    )
    agent_heartbeat_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Seconds between status reports (health, counters) when nothing changes.",
    )
    agent_retry_seconds: float = Field(
        default=2.0,
        gt=0,
        description=(
            "Seconds before retrying when the API is unreachable or an apply left work pending "
            "(e.g. a removed server still has connections)."
        ),
    )
    agent_maxconn: int = Field(
        default=8000,
        ge=1,
        description=(
            "HAProxy's global maxconn. HAProxy needs about 2 file descriptors per connection, "
            "so keep it under (hard file limit - 100) / 2; 8000 fits a 20000 limit."
        ),
    )
    agent_hard_stop_after_seconds: float = Field(
        default=600.0,
        ge=1,
        description="Seconds an old worker may keep long connections after a reload.",
    )
    agent_nbthread: int = Field(default=2, ge=1, le=64, description="HAProxy worker threads.")
    agent_check_timeout_seconds: float = Field(
        default=0.3,
        gt=0,
        description=(
            "Seconds the serving check waits on each VIP:port: a route HAProxy rejects closes "
            "at once; one that is forwarded stays open."
        ),
    )

    # VIP announcement (lbprovider.announce, run by the agent)
    announce_mode: Literal["none", "bgp", "vrrp"] = Field(
        default="none",
        description=(
            "How the network learns which fleet host holds a VIP: `none` (the agent only puts "
            "VIPs on the NIC), `bgp` (BIRD 2 announces /32 and /128 routes to peers) or `vrrp` "
            "(keepalived moves VIP groups between hosts on one L2 segment)."
        ),
    )
    announce_run_dir: str = Field(
        default="/run/lbprovider/announce",
        description="Directory of the rendered BIRD/keepalived configs, sockets and pid files.",
    )
    announce_bird_bin: str = Field(default="/usr/sbin/bird", description="BIRD 2 daemon.")
    announce_birdc_bin: str = Field(default="/usr/sbin/birdc", description="BIRD 2 client.")
    announce_keepalived_bin: str = Field(
        default="/usr/sbin/keepalived", description="keepalived daemon."
    )
    announce_bgp_local_asn: int | None = Field(
        default=None,
        ge=1,
        le=4294967295,
        description="This host's AS number (bgp mode). Fleet hosts usually share one private ASN.",
    )
    announce_bgp_router_id: str | None = Field(
        default=None,
        description="BGP router id (an IPv4 address, unique per host). Required in bgp mode.",
    )
    announce_bgp_peers: list[BgpPeerSettings] = Field(
        default_factory=list,
        description=(
            'Neighbours as JSON: [{"address": "192.0.2.1", "asn": 65000, "password": null, '
            '"bfd": true, "port": 179, "multihop": null}]. At least one in bgp mode.'
        ),
    )
    announce_bgp_password: str | None = Field(
        default=None,
        description="TCP-MD5 password for peers that do not set their own; unset: none.",
    )
    announce_bgp_bfd: bool = Field(
        default=False,
        description=(
            "BFD on every session (peers may override): a host that vanishes is detected in "
            "interval x multiplier instead of the BGP hold time. The router must run BFD too."
        ),
    )
    announce_bgp_bfd_interval_ms: int = Field(
        default=100, ge=10, le=10000, description="BFD transmit/receive interval in ms."
    )
    announce_bgp_bfd_multiplier: int = Field(
        default=3, ge=1, le=255, description="Missed BFD packets before a session is down."
    )
    announce_bgp_hold_seconds: int = Field(
        default=9,
        ge=3,
        le=65535,
        description=(
            "BGP hold time; keepalives go every third of it. 9 s bounds detection without BFD; "
            "BIRD's 240 s default is far too slow for failover."
        ),
    )
    announce_bgp_policy: Literal["ecmp", "owners"] = Field(
        default="ecmp",
        description=(
            "`ecmp`: every healthy host announces every VIP it serves, the router spreads "
            "flows. `owners`: only the VIP's owning host announces it (the agent says which)."
        ),
    )
    announce_bgp_backup_prepend: int = Field(
        default=0,
        ge=0,
        le=8,
        description=(
            "`owners` policy only: non-owners also announce their serving VIPs with this many "
            "AS-path prepends, so the router already holds a backup path. 0: they do not."
        ),
    )
    announce_vrrp_interface: str | None = Field(
        default=None, description="Interface that carries VRRP and the VIPs (vrrp mode)."
    )
    announce_vrrp_address: str | None = Field(
        default=None,
        description="This host's own address on that interface: unicast VRRP source.",
    )
    announce_vrrp_peers: list[str] = Field(
        default_factory=list,
        description=(
            "Addresses of the other fleet hosts on the segment (JSON list). Unicast VRRP, so "
            "no multicast is needed; every host lists all the others."
        ),
    )
    announce_vrrp_priority: int = Field(
        default=200,
        ge=2,
        le=254,
        description=(
            "Priority of a group's preferred host. The next host in the rotation gets 10 less, "
            "and so on: every host prefers a share of the groups."
        ),
    )
    announce_vrrp_router_id_base: int = Field(
        default=50,
        ge=1,
        le=255,
        description="Virtual router id of group 0; group g uses base + g (all <= 255).",
    )
    announce_vrrp_groups: int = Field(
        default=0,
        ge=0,
        le=255,
        description=(
            "VRRP instances the VIPs are hashed into (a VIP keeps its group as others come and "
            "go). 0: one per host. Any number of VIPs fits: adverts carry none of them."
        ),
    )
    announce_vrrp_advert_seconds: float = Field(
        default=0.5,
        ge=0.01,
        le=40.95,
        description=(
            "VRRPv3 advert interval. A silent master is replaced after about 3.5 intervals, "
            "so 0.5 s keeps a vanished host's VIPs away for under 2 s."
        ),
    )
    announce_haproxy_socket: str | None = Field(
        default=None,
        description=(
            "HAProxy master socket the VRRP check script connects to each second: a host whose "
            "HAProxy is gone drops its VIPs even if the agent is gone too. Unset: no script."
        ),
    )

    @model_validator(mode="after")
    def _refuse_insecure_prod(self) -> Settings:
        if self.environment == "prod":
            if self.session_secret == DEV_SESSION_SECRET:
                raise ValueError("LBP_SESSION_SECRET must be set when LBP_ENVIRONMENT=prod")
            if self.database_url.startswith("sqlite"):
                raise ValueError("SQLite is for trials; set a PostgreSQL LBP_DATABASE_URL in prod")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
