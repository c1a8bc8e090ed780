"""Fleet hosts and what they report, and the ``serving`` flag of Service records.

Why: agents report through the API; these are the unit-of-work writes behind a report (host
registered on first contact, heartbeat, applied version, errors, health and counters kept in
``FleetHost.status``), and the one write that turns the fleet's view into each Service's
``serving``/``serving_message`` for the controller to publish. Deciding *whether* a Service is
served needs the compiled fleet and lives in ``lbprovider.fleet``; this module only stores.

What it must not do: compile desired state, or commit (the caller owns the transaction).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic_core import PydanticSerializationError, to_json
from sqlalchemy import Text, cast, literal, select, tuple_, type_coerce, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from lbprovider.db.models import FleetHost, ServiceRecord
from lbprovider.db.types import utcnow

MAX_ERROR_CHARS = 4000
OUT_OF_SYNC_SINCE = "out_of_sync_since"  # the one status key the API writes, not the agent


@dataclass(frozen=True)
class HostReport:
    """What one report changes on a host's row."""

    applied_version: str
    error: str
    status: dict[str, Any]  # JSON-ready; ``applied_routes`` None keeps the stored one
    serving_version: str | None = None  # the version the API serves the host now (None: unknown)
    # set: ``status``' sections are a delta against the stored report of this id (see
    # ``lbprovider.fleet.models.HostStatus``), with these route_ids / counter keys dropped
    base_report: str = ""
    gone_routes: tuple[str, ...] = ()
    gone_counters: tuple[str, ...] = ()


DELTA_SECTIONS = ("applied_routes", "route_backends")  # route_id keyed; None: unchanged
REPORT_ID = "report_id"


def get_or_register_host(*, session: Session, name: str) -> FleetHost:
    """The host's row, created (enabled) on its first contact."""
    host = session.scalar(select(FleetHost).where(FleetHost.name == name))
    if host is None:
        host = FleetHost(name=name)
        session.add(host)
        session.flush()
    return host


@dataclass(frozen=True)
class HostStamp:
    """A host's row without its status, and the stored report's id (``""``: none, or a report
    without one): equal ids on a host, equal stored status."""

    name: str
    enabled: bool
    last_heartbeat: datetime | None
    report_id: str


def host_stamps(*, session: Session) -> list[HostStamp]:
    """Every fleet host, by name, without parsing its stored status (one statement)."""
    rows = session.execute(
        select(
            FleetHost.name,
            FleetHost.enabled,
            FleetHost.last_heartbeat,
            FleetHost.status[REPORT_ID].as_string(),
        ).order_by(FleetHost.name)
    )
    return [HostStamp(n, bool(e), hb, rid or "") for n, e, hb, rid in rows]


def host_statuses(*, session: Session, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The stored status of each named host."""
    wanted = list(names)
    if not wanted:
        return {}
    rows = session.execute(
        select(FleetHost.name, FleetHost.status).where(FleetHost.name.in_(wanted))
    )
    return {n: st if isinstance(st, dict) else {} for n, st in rows}


def merge_report(previous: Mapping[str, Any], report: HostReport) -> tuple[dict[str, Any], bool]:
    """The status to store for ``report`` given the stored one: a whole report as it came
    (sections left out, None, keep the stored ones), a delta merged into the stored sections
    when they are its base; else (an unknown base) the stored sections, no ``report_id``, and
    False."""
    status = dict(report.status)
    if report.base_report and previous.get(REPORT_ID) != report.base_report:
        for kept in DELTA_SECTIONS:
            status[kept] = previous.get(kept)
        status["counters"] = previous.get("counters") or {}
        status[REPORT_ID] = ""
        return status, False
    if not report.base_report:
        for kept in DELTA_SECTIONS:  # None: unchanged since the last report
            if status.get(kept) is None:
                status[kept] = previous.get(kept)
        return status, True
    gone = set(report.gone_routes)
    for section in DELTA_SECTIONS:
        status[section] = _merged(previous.get(section), status.get(section), gone)
    status["counters"] = _merged(
        previous.get("counters"), status.get("counters"), set(report.gone_counters)
    )
    return status, True


def merged_route_ids(report: HostReport, taken: bool) -> set[str] | None:
    """The route ids whose applied digest :func:`merge_report` may have changed when it
    merged ``report`` as a delta onto its base (``taken``): those it upserted and dropped.
    None when it did not (a whole report, an unknown base): compare the sections instead."""
    if not (taken and report.base_report):
        return None
    upserted = report.status.get("applied_routes")
    return {*(upserted if isinstance(upserted, dict) else ()), *report.gone_routes}


def finish_status(
    status: dict[str, Any], report: HostReport, previous: Mapping[str, Any], now: datetime
) -> dict[str, Any]:
    """``status`` (merged by :func:`merge_report`) with what the API adds: since when the
    host's applied version lags the served one, when the report says what is served."""
    if report.serving_version is not None:
        status[OUT_OF_SYNC_SINCE] = _out_of_sync_since(report, previous, now)
    return status


def _merged(stored: object, changed: object, gone: set[str]) -> dict[str, Any]:
    """``stored`` (a dict, else empty) with ``changed`` upserted and ``gone`` dropped."""
    out = {k: v for k, v in stored.items() if k not in gone} if isinstance(stored, dict) else {}
    if isinstance(changed, dict):
        out.update(changed)
    return out


def _out_of_sync_since(
    report: HostReport, previous: Mapping[str, Any], now: datetime
) -> str | None:
    """When the host's applied version first differed from the served one, as ISO-8601: kept
    from the previous report while they still differ, this report's time when they start to."""
    if report.applied_version == report.serving_version:
        return None
    kept = previous.get(OUT_OF_SYNC_SINCE)
    return kept if isinstance(kept, str) and kept else now.isoformat()


def fleet_hosts(*, session: Session) -> list[FleetHost]:
    """Every fleet host, by name."""
    return list(session.scalars(select(FleetHost).order_by(FleetHost.name)))


def set_serving(
    *, session: Session, states: Mapping[str, tuple[bool, str]], only_listed: bool = False
) -> int:
    """Write ``namespace/name -> (serving, message)`` where it differs; returns rows changed.
    ``only_listed``: read only the records ``states`` names (few), not every record."""
    return write_serving(
        session=session,
        updates=serving_updates(session=session, states=states, only_listed=only_listed),
    )


def serving_updates(
    *, session: Session, states: Mapping[str, tuple[bool, str]], only_listed: bool = False
) -> list[dict[str, Any]]:
    """The rows :func:`set_serving` would change (``id``, ``serving``, ``serving_message``),
    as ``session`` sees the records; :func:`write_serving` writes them."""
    query = select(
        ServiceRecord.id,
        ServiceRecord.namespace,
        ServiceRecord.name,
        ServiceRecord.serving,
        ServiceRecord.serving_message,
    )
    if only_listed:
        if not states:
            return []
        keys = [tuple(k.split("/", 1)) for k in states]
        query = query.where(tuple_(ServiceRecord.namespace, ServiceRecord.name).in_(keys))
    rows = session.execute(query)
    updates = []
    for row_id, ns, name, serving, message in rows:
        wanted = states.get(f"{ns}/{name}")
        if wanted is not None and (bool(serving), message or "") != wanted:
            updates.append({"id": row_id, "serving": wanted[0], "serving_message": wanted[1]})
    return updates


def write_serving(*, session: Session, updates: Sequence[Mapping[str, Any]]) -> int:
    """Write rows of :func:`serving_updates` (stamped ``updated_at`` now); returns how many."""
    if not updates:
        return 0
    now = utcnow()
    # ORM bulk UPDATE by primary key: one executemany, however many Services changed.
    session.execute(update(ServiceRecord), [{**item, "updated_at": now} for item in updates])
    return len(updates)


def status_text(status: Mapping[str, Any]) -> str:
    """``status`` as JSON text for ``FleetHost.status``, serialised before the report's write
    transaction, by ``pydantic_core.to_json`` (about 2-4x faster than ``json.dumps`` on a
    10,000-route report). Its text is compact and keeps non-ASCII as UTF-8 (NaN stays NaN, as
    with ``json.dumps``); every reader of the column parses it (the ORM's ``json.loads``,
    SQLite's ``json_extract``, PostgreSQL's jsonb), none matches its text. What it refuses (a
    lone surrogate) ``json.dumps`` writes, as the ORM would."""
    try:
        return to_json(status).decode()
    except PydanticSerializationError:
        return json.dumps(status)


def store_prepared_report(
    *, session: Session, name: str, text: str, report: HostReport, now: datetime
) -> bool:
    """Write a report :func:`merge_report` merged and :func:`status_text` serialised before
    this transaction: ``text`` as the host's status, and the row's other report columns (one
    UPDATE; no ORM object). False when the host has no row (nothing written)."""
    stored: Any = (
        cast(literal(text, Text), JSONB)
        if session.get_bind().dialect.name == "postgresql"
        else type_coerce(literal(text, Text), Text)
    )
    result = session.execute(
        update(FleetHost.__table__)  # type: ignore[arg-type]
        .where(FleetHost.__table__.c.name == name)
        .values(
            status=stored,
            applied_version=report.applied_version[:64],
            error=report.error[:MAX_ERROR_CHARS],
            last_heartbeat=now,
        )
    )
    return bool(getattr(result, "rowcount", 0))
