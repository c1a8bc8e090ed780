"""The agent protocol's server side: hand out a host's state (long-poll), take its reports.

Why: the API routers stay thin; the long-poll loop and the report handling live here. A
long-poll must not hold a database transaction while it waits (SQLite takes its write lock at
BEGIN), so each check opens a short one; a check costs one change-stamp query thanks to
:class:`StateCache`.

What it must not do: authenticate (the router does), or talk to agents other than by return
values.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Any

import anyio.to_thread
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.config import Settings
from lbprovider.db.session import read_transaction
from lbprovider.db.types import utcnow
from lbprovider.fleet.compile import Compiled, ServingBasis, StateCache
from lbprovider.fleet.models import FleetDelta, FleetState, HostStatus, StatusAck
from lbprovider.fleet.serving import (
    HostView,
    is_live,
    serving_states,
    touched_services,
    view_of,
)
from lbprovider.services.fleet import (
    REPORT_ID,
    HostReport,
    HostStamp,
    host_stamps,
    host_statuses,
    record_host_report,
    set_serving,
)

logger = logging.getLogger(__name__)


def current_state(sessions: sessionmaker[Session], cache: StateCache, host: str) -> FleetState:
    """The state ``host`` should serve now (one short read-only transaction: a long-poll
    checks every ``fleet_state_poll_seconds`` and must not take SQLite's write lock)."""
    with read_transaction(cache.readers(sessions)) as session:
        return cache.state(session, host)


async def wait_for_state(
    *,
    sessions: sessionmaker[Session],
    cache: StateCache,
    host: str,
    known_version: str,
    wait: float,
    poll: float,
) -> FleetState | None:
    """The host's state as soon as its version differs from ``known_version``; ``None`` if
    it did not within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        state = await anyio.to_thread.run_sync(current_state, sessions, cache, host)
        if state.version != known_version:
            return state
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        await asyncio.sleep(min(poll, left))


DELTA_HEADER = "X-Fleet-Delta"  # set on an answer that is a FleetDelta: its base version


def state_answer(
    *, cache: StateCache, state: FleetState, known_version: str, delta: bool
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a state answer: a :class:`FleetDelta` against the version the
    agent holds when it asked for one and that version is still kept, else the whole state."""
    headers = {"ETag": f'"{state.version}"'}
    base = cache.known(state.host, known_version) if delta and known_version else None
    if base is None or base.version == state.version:
        return cache.body(state), headers
    headers[DELTA_HEADER] = base.version
    return FleetDelta.between(base, state).model_dump_json().encode(), headers


def accept_status(
    *, session: Session, cache: StateCache, settings: Settings, host: str, report: HostStatus
) -> StatusAck:
    """Store a host's report and refresh every Service's ``serving`` from all hosts' reports.

    The report is stored with the version the API serves the host now, so the row keeps since
    when the host's applied version lags it (``/metrics``' version lag reads that)."""
    cache.refresh(session)  # before this transaction writes: see StateCache.refresh
    stale = timedelta(seconds=settings.fleet_host_stale_seconds)
    now = utcnow()
    stamps = host_stamps(session=session)
    statuses, known = _statuses(session, cache, stamps)
    before = [
        view_of(h.name, statuses[h.name])
        for h in stamps
        if is_live(h.enabled, h.last_heartbeat, now=now, stale=stale)
    ]
    status = report.model_dump(mode="json", exclude=_NOT_STORED)
    row_status = {k: v for k, v in status.items() if k != "applied_routes"}
    row_status["applied_routes"] = report.applied_routes
    error = "; ".join(report.errors)
    desired = cache.state(session, host).version
    row, taken = record_host_report(
        session=session,
        name=host,
        report=HostReport(
            report.applied_version,
            error,
            row_status,
            serving_version=desired,
            base_report=report.base_report,
            gone_routes=tuple(report.gone_routes),
            gone_counters=tuple(report.gone_counters),
        ),
        now=now,
        previous=statuses.get(host),
    )
    stored_status = row.status
    compiled = cache.compiled(session)
    views = [v for v in before if v.name != host]
    if row.enabled:
        views = sorted([*views, view_of(host, stored_status)], key=lambda v: v.name)
    changed = _refresh_serving(session, cache, compiled, host, before, views, known=known)
    event.listen(
        session, "after_commit", lambda _s: cache.note_report(host, stored_status), once=True
    )
    if report.errors or changed:
        logger.info(
            "fleet host reported",
            extra={
                "event": "host_status",
                "host": host,
                "version": report.applied_version,
                "error": error,
                "serving_changed": changed,
            },
        )
    resend = report.applied_routes is None and not stored_status.get("applied_routes")
    return StatusAck(
        host=host,
        desired_version=desired,
        resend_routes=resend and bool(desired),
        deltas=True,
        resend_full=not taken,
    )


_NOT_STORED = {"base_report", "gone_routes", "gone_counters"}  # a delta's own fields
SERVING_FULL_SECONDS = 10.0  # every Service's serving recomputed at least this often
SERVING_FULL_ABOVE = 500  # more Services touched than this: recompute them all


def _statuses(
    session: Session, cache: StateCache, stamps: list[HostStamp]
) -> tuple[dict[str, dict[str, Any]], bool]:
    """Each host's stored status: as this API last stored it when the row still holds that
    report (same ``report_id``), else read (and parsed) from the row; and whether every one
    was as this API stored it."""
    out: dict[str, dict[str, Any]] = {}
    for h in stamps:
        kept = cache.stored_report(h.name)
        if h.report_id and kept is not None and kept.get(REPORT_ID) == h.report_id:
            out[h.name] = kept
    missing = [h.name for h in stamps if h.name not in out]
    out.update(host_statuses(session=session, names=missing))
    return out, not missing


def _refresh_serving(
    session: Session,
    cache: StateCache,
    compiled: Compiled,
    host: str,
    before: list[HostView],
    after: list[HostView],
    *,
    known: bool,
) -> int:
    """Write every Service's ``serving`` as ``compiled`` and the hosts' views ``after`` this
    report make it; returns the rows changed.

    ``known``: every host's stored status was as this API stored it (else some other writer
    changed a host's report, and every Service is recomputed).

    Only the Services this report can have changed are recomputed (and only their records
    read) when this API last wrote serving (committed) for the same live hosts less than
    :data:`SERVING_FULL_SECONDS` ago: those compiled otherwise since then, and those with a
    route whose applied digest or error on ``host`` changed in this report (every other host's
    view is what its own last report left, and that report refreshed what it touched). Else,
    or when that is many Services, every Service is recomputed."""
    live = frozenset(v.name for v in after)
    basis = cache.serving_basis
    now = time.monotonic()
    touched: set[str] | None = None
    if (
        known
        and basis is not None
        and basis.live == live
        and frozenset(v.name for v in before) == live
        and now - basis.full_at < SERVING_FULL_SECONDS
    ):
        old = next((v for v in before if v.name == host), None)
        new = next((v for v in after if v.name == host), None)
        touched = touched_services(basis.compiled, compiled, old, new)
        if len(touched) > SERVING_FULL_ABOVE:
            touched = None
    if touched is None:
        changed = set_serving(session=session, states=serving_states(compiled, after))
        done = ServingBasis(compiled, live, now)
    else:
        states = serving_states(compiled, after, only=touched)
        changed = set_serving(session=session, states=states, only_listed=True)
        assert basis is not None
        done = ServingBasis(compiled, live, basis.full_at)
    event.listen(session, "after_commit", lambda _s: cache.note_serving(done), once=True)
    return changed
