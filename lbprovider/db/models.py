"""SQLAlchemy 2 models: the source of truth for every address lbprovider hands out.

Uniqueness that protects users lives here as constraints, not in Python: one live lease per
address, one (address, protocol, port) per Service, one live allocation per Service and family.
Two allocators that race lose at COMMIT, never silently.

Addresses are stored in their canonical text form (``ip``) plus a fixed-width sortable
``ip_key`` (see ``lbprovider.ipam.ranges.ip_key``) so "highest address used in a pool" is an
index lookup on both databases.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from lbprovider.db.types import JSONType, UTCDateTime, utcnow

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

IP = String(45)
IPKEY = String(34)
NAME = String(253)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[Any]: JSONType}


POSTGRESQL_ONLY = {"dialects": ("postgresql",)}
"""``info`` of a schema item that exists on PostgreSQL only (with ``ddl_if``), so that
comparing the models with a SQLite database skips it (see ``include_for``)."""


def include_for(dialect: str) -> Callable[[Any, str | None, str, bool, Any], bool]:
    """An Alembic ``include_object`` hook for ``dialect``: compare only the items that exist
    there (autogenerate does not honour ``ddl_if``)."""

    def include(obj: Any, name: str | None, type_: str, reflected: bool, other: Any) -> bool:
        dialects = None if reflected else getattr(obj, "info", {}).get("dialects")
        return dialects is None or dialect in dialects

    return include


GIN_NO_PENDING_LIST = {"fastupdate": "off"}
"""New entries go straight into a GIN index instead of a pending list that only (auto)vacuum
merges: until then a search would scan that list, and the planner, seeing it, scans the table
instead (measured: 10,000 fresh names, 29 ms instead of 0.5 ms). Service names change at the
rate of Kubernetes events, so the slower insert does not matter."""


# The trigram indexes below need pg_trgm (a trusted extension of PostgreSQL's contrib: the
# database owner may create it). Migration 0002 creates it; this covers ``create_all``.
@event.listens_for(Base.metadata, "before_create")
def _create_pg_trgm(_metadata: MetaData, connection: Connection, **_kw: Any) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")


# PostgreSQL: the per-address lock of a claim that is decided and written in one statement
# (``services.state.SCAN_CLAIM_PG``). A statement's snapshot is taken when it starts, i.e.
# before it takes an address's lock, so it cannot see what the lock's previous holder (a
# release, a reservation, another claim) committed meanwhile; a VOLATILE function's queries
# take a fresh snapshot each (READ COMMITTED), so this one checks the address after the lock,
# as a later statement would. False when another writer holds the lock or, once locked,
# anything stands on the address. Migration 0003 creates it; this covers ``create_all``.
LOCK_IF_FREE_SQL = """
CREATE OR REPLACE FUNCTION lbp_lock_if_free(candidate text, as_of timestamptz) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended(candidate, 0)) THEN
        RETURN false;
    END IF;
    RETURN NOT EXISTS (SELECT 1 FROM allocations WHERE active AND ip = candidate)
        AND NOT EXISTS (SELECT 1 FROM ip_leases WHERE ip = candidate)
        AND NOT EXISTS (SELECT 1 FROM allocation_ports WHERE ip = candidate)
        AND NOT EXISTS (SELECT 1 FROM reservations WHERE ip = candidate
            AND (expires_at IS NULL OR expires_at > as_of))
        AND NOT EXISTS (SELECT 1 FROM released_ips WHERE ip = candidate);
END
$$
"""


@event.listens_for(Base.metadata, "after_create")
def _create_lock_if_free(_metadata: MetaData, connection: Connection, **_kw: Any) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(LOCK_IF_FREE_SQL)


class Pool(Base):
    __tablename__ = "pools"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    ranges: Mapped[list[Any]] = mapped_column(default=list)
    auto_assign: Mapped[bool] = mapped_column(default=True)
    avoid_buggy_ips: Mapped[bool] = mapped_column(default=False)
    disabled: Mapped[bool] = mapped_column(default=False)
    priority: Mapped[int] = mapped_column(default=100)
    namespaces: Mapped[list[Any]] = mapped_column(default=list)
    namespace_selector: Mapped[dict[str, Any]] = mapped_column(default=dict)
    service_selector: Mapped[dict[str, Any]] = mapped_column(default=dict)
    description: Mapped[str] = mapped_column(Text, default="")
    version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    exclusions: Mapped[list[Exclusion]] = relationship(
        back_populates="pool", cascade="all, delete-orphan", order_by="Exclusion.id"
    )


class Exclusion(Base):
    """Addresses a pool must never hand out (gateways, switches, ...)."""

    __tablename__ = "exclusions"

    id: Mapped[int] = mapped_column(primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"), index=True)
    range: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text, default="")

    pool: Mapped[Pool] = relationship(back_populates="exclusions")


class Reservation(Base):
    """An address held for a pipeline or a future Service; never auto-assigned to anyone else."""

    __tablename__ = "reservations"

    id: Mapped[int] = mapped_column(primary_key=True)
    ip: Mapped[str] = mapped_column(IP, unique=True)
    ip_key: Mapped[str] = mapped_column(IPKEY)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id", ondelete="RESTRICT"), index=True)
    family: Mapped[int] = mapped_column(Integer)
    owner: Mapped[str] = mapped_column(String(253))
    purpose: Mapped[str] = mapped_column(Text, default="")
    service_namespace: Mapped[str | None] = mapped_column(NAME, default=None)
    service_name: Mapped[str | None] = mapped_column(NAME, default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(253), default="")

    pool: Mapped[Pool] = relationship()


class IPLease(Base):
    """One row per address in use; its sharing key is the one every holder must carry."""

    __tablename__ = "ip_leases"

    ip: Mapped[str] = mapped_column(IP, primary_key=True)
    ip_key: Mapped[str] = mapped_column(IPKEY)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id", ondelete="RESTRICT"))
    family: Mapped[int] = mapped_column(Integer)
    sharing_key: Mapped[str | None] = mapped_column(String(253), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_ip_leases_pool_key", "pool_id", "family", "ip_key"),
        Index("ix_ip_leases_sharing", "sharing_key", "pool_id"),
    )


class ReleasedIP(Base):
    """The last release of each address: sticky re-use, quarantine and LRU order."""

    __tablename__ = "released_ips"

    ip: Mapped[str] = mapped_column(IP, primary_key=True)
    ip_key: Mapped[str] = mapped_column(IPKEY)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"))
    family: Mapped[int] = mapped_column(Integer)
    service_namespace: Mapped[str] = mapped_column(NAME)
    service_name: Mapped[str] = mapped_column(NAME)
    released_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        Index("ix_released_ips_pool_at", "pool_id", "family", "released_at"),
        Index("ix_released_ips_pool_key", "pool_id", "family", "ip_key"),
        Index("ix_released_ips_service", "service_namespace", "service_name", "family"),
    )


class Allocation(Base):
    """An address given to a Service. Released rows stay as history (``active`` False)."""

    __tablename__ = "allocations"

    id: Mapped[int] = mapped_column(primary_key=True)
    ip: Mapped[str] = mapped_column(IP, index=True)
    ip_key: Mapped[str] = mapped_column(IPKEY)
    pool_id: Mapped[int | None] = mapped_column(
        ForeignKey("pools.id", ondelete="SET NULL"), index=True
    )
    pool_name: Mapped[str] = mapped_column(String(63))
    family: Mapped[int] = mapped_column(Integer)
    service_namespace: Mapped[str] = mapped_column(NAME)
    service_name: Mapped[str] = mapped_column(NAME)
    service_uid: Mapped[str] = mapped_column(String(64), default="")
    sharing_key: Mapped[str | None] = mapped_column(String(253), default=None)
    ports: Mapped[list[Any]] = mapped_column(default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    allocated_at: Mapped[datetime] = mapped_column(default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        Index(
            "uq_allocations_live_service_family",
            "service_namespace",
            "service_name",
            "family",
            unique=True,
            postgresql_where=text("active"),
            sqlite_where=text("active"),
        ),
        Index("ix_allocations_service", "service_namespace", "service_name"),
        Index("ix_allocations_active_key", "active", "ip_key"),
        # The fleet's change stamp reads max(released_at) on every change (fleet.compile):
        # partial, so a new allocation (released_at NULL) adds nothing to it.
        Index(
            "ix_allocations_released_at",
            "released_at",
            postgresql_where=text("released_at IS NOT NULL"),
            sqlite_where=text("released_at IS NOT NULL"),
        ),
        # The search's "name contains" over live allocations (PostgreSQL; pg_trgm).
        Index(
            "ix_allocations_live_name_trgm",
            "service_name",
            postgresql_using="gin",
            postgresql_ops={"service_name": "gin_trgm_ops"},
            postgresql_where=text("active"),
            postgresql_with=GIN_NO_PENDING_LIST,
            info=POSTGRESQL_ONLY,
        ).ddl_if(dialect="postgresql"),
    )


class AllocationPort(Base):
    """(address, protocol, port) of a live allocation: the database refuses a second holder."""

    __tablename__ = "allocation_ports"

    id: Mapped[int] = mapped_column(primary_key=True)
    allocation_id: Mapped[int] = mapped_column(
        ForeignKey("allocations.id", ondelete="CASCADE"), index=True
    )
    ip: Mapped[str] = mapped_column(IP)
    protocol: Mapped[str] = mapped_column(String(8))
    port: Mapped[int] = mapped_column(Integer)

    __table_args__ = (UniqueConstraint("ip", "protocol", "port"),)


class LedgerEntry(Base):
    """Append-only history of every address: who got it, who lost it, and why."""

    __tablename__ = "ledger"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    ip: Mapped[str] = mapped_column(IP, index=True)
    pool: Mapped[str] = mapped_column(String(63), default="")
    service_namespace: Mapped[str] = mapped_column(NAME, default="")
    service_name: Mapped[str] = mapped_column(NAME, default="")
    action: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(253), default="")
    request_id: Mapped[str] = mapped_column(String(64), default="")

    __table_args__ = (Index("ix_ledger_service", "service_namespace", "service_name"),)


class ServiceRecord(Base):
    """What the fleet and the dashboard need to know of a LoadBalancer Service."""

    __tablename__ = "service_records"

    id: Mapped[int] = mapped_column(primary_key=True)
    namespace: Mapped[str] = mapped_column(NAME)
    name: Mapped[str] = mapped_column(NAME)
    uid: Mapped[str] = mapped_column(String(64), default="")
    load_balancer_class: Mapped[str | None] = mapped_column(String(253), default=None)
    ports: Mapped[list[Any]] = mapped_column(default=list)
    external_traffic_policy: Mapped[str] = mapped_column(String(16), default="Cluster")
    health_check_node_port: Mapped[int | None] = mapped_column(default=None)
    source_ranges: Mapped[list[Any]] = mapped_column(default=list)
    session_affinity: Mapped[str] = mapped_column(String(16), default="None")
    ip_families: Mapped[list[Any]] = mapped_column(default=list)
    ip_family_policy: Mapped[str] = mapped_column(String(24), default="SingleStack")
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    annotations: Mapped[dict[str, Any]] = mapped_column(default=dict)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    condition_reason: Mapped[str] = mapped_column(String(32), default="")
    condition_message: Mapped[str] = mapped_column(Text, default="")
    serving: Mapped[bool] = mapped_column(default=False)
    serving_message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        UniqueConstraint("namespace", "name"),
        Index("ix_service_records_reason", "condition_reason"),
        # The fleet's change stamp (max) and its incremental compile (updated_at > mark) read
        # this on every change: without it both scanned every record.
        Index("ix_service_records_updated_at", "updated_at"),
        # "Name contains" (``name ILIKE '%...%'``, ``catalog.name_contains``) for the Services
        # filter and the search, on PostgreSQL (pg_trgm); SQLite scans 10,000 names in ~1 ms.
        Index(
            "ix_service_records_name_trgm",
            "name",
            postgresql_using="gin",
            postgresql_ops={"name": "gin_trgm_ops"},
            postgresql_with=GIN_NO_PENDING_LIST,
            info=POSTGRESQL_ONLY,
        ).ddl_if(dialect="postgresql"),
    )


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    address: Mapped[str | None] = mapped_column(IP, default=None)
    addresses: Mapped[list[Any]] = mapped_column(default=list)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    eligible: Mapped[bool] = mapped_column(default=True)
    draining: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ExternalNameMapping(Base):
    __tablename__ = "external_names"

    id: Mapped[int] = mapped_column(primary_key=True)
    namespace: Mapped[str] = mapped_column(NAME)
    name: Mapped[str] = mapped_column(NAME)
    external_name: Mapped[str] = mapped_column(String(253))
    ports: Mapped[list[Any]] = mapped_column(default=list)
    dns_status: Mapped[str] = mapped_column(String(16), default="unknown")
    dns_addresses: Mapped[list[Any]] = mapped_column(default=list)
    dns_checked_at: Mapped[datetime | None] = mapped_column(default=None)
    removed_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("namespace", "name"),)


class IngressRoute(Base):
    __tablename__ = "ingress_routes"

    id: Mapped[int] = mapped_column(primary_key=True)
    namespace: Mapped[str] = mapped_column(NAME)
    ingress_name: Mapped[str] = mapped_column(NAME)
    host: Mapped[str] = mapped_column(String(253), default="")
    path: Mapped[str] = mapped_column(Text, default="/")
    path_type: Mapped[str] = mapped_column(String(24), default="Prefix")
    backend_service: Mapped[str] = mapped_column(NAME, default="")
    backend_port: Mapped[str] = mapped_column(String(63), default="")
    node_port: Mapped[int | None] = mapped_column(default=None)
    tls_secret: Mapped[str | None] = mapped_column(NAME, default=None)
    error: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_ingress_routes_ingress", "namespace", "ingress_name"),)


class FleetHost(Base):
    __tablename__ = "fleet_hosts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    address: Mapped[str] = mapped_column(String(253), default="")
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    enabled: Mapped[bool] = mapped_column(default=True)
    last_heartbeat: Mapped[datetime | None] = mapped_column(default=None)
    applied_version: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A bearer token. Only a hash of the secret is stored; ``prefix`` finds the row."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    host: Mapped[str | None] = mapped_column(String(63), default=None)
    allowed_cidrs: Mapped[list[Any]] = mapped_column(default=list)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100), default="")
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditEntry(Base):
    """Every write, by whom, with the object before and after."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(300), default="")
    request_id: Mapped[str] = mapped_column(String(64), default="")
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)

    __table_args__ = (Index("ix_audit_log_actor", "actor"),)


class IdempotencyRecord(Base):
    """The stored answer to a POST carrying an ``Idempotency-Key``."""

    __tablename__ = "idempotency_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text)
    body_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("token_id", "key"),)
