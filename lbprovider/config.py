"""Settings for every lbprovider process, read from the environment (prefix ``LBP_``).

One ``Settings`` object is the only place a default lives. Each field says its unit and why the
default is what it is. Insecure combinations are refused outside ``environment=dev``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SESSION_SECRET = "dev-insecure-session-secret"  # noqa: S105 (refused outside dev)
DEFAULT_SQLITE_URL = "sqlite:///" + str(Path("lbprovider.db").absolute())


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
