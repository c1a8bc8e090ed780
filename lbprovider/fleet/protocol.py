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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio.to_thread
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.config import Settings
from lbprovider.db.session import read_transaction, transaction
from lbprovider.db.types import utcnow
from lbprovider.fleet.compile import Compiled, ServingBasis, StateCache, change_stamp
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
    finish_status,
    get_or_register_host,
    host_stamps,
    host_statuses,
    merge_report,
    merged_route_ids,
    serving_updates,
    status_text,
    store_prepared_report,
    write_serving,
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
    it did not within ``wait`` seconds.

    It checks every ``poll`` seconds, and on a SQLite file also as soon as the database's
    commit counter moves (:meth:`~lbprovider.fleet.compile.CommitWatch.wait_moved`: one
    reader on the event loop for every waiting long-poll), though not sooner than
    :data:`MIN_CHECK_GAP` after the last check: a commit is seen within milliseconds, not half
    a poll interval later, and a quiet database costs no check at all in between."""
    watch = cache.commit_watch(sessions)
    deadline = time.monotonic() + wait
    while True:
        seen = watch.version()  # before the check's snapshot: a later commit moves it
        checked = time.monotonic()
        state = await anyio.to_thread.run_sync(current_state, sessions, cache, host)
        if state.version != known_version:
            return state
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        until = time.monotonic() + min(poll, left)
        if seen is None:
            await asyncio.sleep(until - time.monotonic())
            continue
        await asyncio.sleep(max(0.0, min(checked + MIN_CHECK_GAP, until) - time.monotonic()))
        await watch.wait_moved(seen, until)


MIN_CHECK_GAP = 0.005  # a commit-woken long-poll check starts no sooner after the last one


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


# prepared reports the write transaction may find outdated before the fallback. Creations
# during a burst commit every ~60 ms while a prepare takes ~40 ms at 10,000 Services: with 3
# tries most reports of a burst ended in the fallback, which prepares under SQLite's write lock
# and held the next creation's commit up to 90-140 ms; with 8, 30-40 ms (bench/RESULTS.md).
PREPARE_TRIES = 8


def accept_status(
    *,
    sessions: sessionmaker[Session],
    cache: StateCache,
    settings: Settings,
    host: str,
    report: HostStatus,
) -> StatusAck:
    """Store a host's report and refresh every Service's ``serving`` from all hosts' reports.

    The report is stored with the version the API serves the host now, so the row keeps since
    when the host's applied version lags it (``/metrics``' version lag reads that).

    The work (merge with the stored report, serialise it, decide the ``serving`` changes) is
    prepared in a read-only transaction; the write transaction (SQLite's write lock) then only
    checks that what it was prepared from still holds (the change stamp, every host's row
    stamp, the live hosts, what this API last stored and wrote serving from) and writes it. If
    something moved it is prepared again, up to :data:`PREPARE_TRIES` times, then done whole
    in one write transaction (:func:`accept_status_in`)."""
    for _ in range(PREPARE_TRIES):
        with read_transaction(cache.readers(sessions)) as session:
            prepared = _prepare(session, cache, settings, host, report)
        if prepared is None:
            break  # a host without a row yet: registered by the whole path
        with transaction(sessions) as session:
            if _still_holds(session, cache, settings, prepared):
                return _write_prepared(session, cache, host, report, prepared)
    else:
        logger.info(
            "fleet report outdated at every prepare: stored in one write transaction",
            extra={"event": "host_status_whole", "host": host, "tries": PREPARE_TRIES},
        )
    with transaction(sessions) as session:
        return accept_status_in(
            session=session, cache=cache, settings=settings, host=host, report=report
        )


@dataclass(frozen=True)
class _Prepared:
    """A report's work done before its write transaction, and what it was based on."""

    stamp: tuple[Any, ...] | None  # change stamp of ``compiled`` (None: replaced meanwhile)
    hosts: list[HostStamp]  # every host's row stamp as read
    kept: dict[str, dict[str, Any] | None]  # cache.stored_report of each host, as used
    basis: ServingBasis | None  # cache.serving_basis, as used
    live: frozenset[str]  # the live hosts at ``now``
    now: datetime
    desired: str
    row: HostReport  # what the row gets (error, applied version)
    status: dict[str, Any]  # the merged status
    text: str  # ``status`` serialised
    taken: bool
    updates: list[dict[str, Any]]  # serving rows to change
    done: ServingBasis  # what serving is then written from


def _prepare(
    session: Session, cache: StateCache, settings: Settings, host: str, report: HostStatus
) -> _Prepared | None:
    """The report's work, from what ``session`` and the cache see; None when the host has no
    row. A compilation replaced while it was read leaves no stamp, which no check accepts."""
    cache.refresh(session)
    stale = timedelta(seconds=settings.fleet_host_stale_seconds)
    now = utcnow()
    stamps = host_stamps(session=session)
    mine = next((h for h in stamps if h.name == host), None)
    if mine is None:
        return None
    kept = {h.name: cache.stored_report(h.name) for h in stamps}
    basis = cache.serving_basis
    statuses, known = _statuses(session, cache, stamps)
    live = [h for h in stamps if is_live(h.enabled, h.last_heartbeat, now=now, stale=stale)]
    before = [view_of(h.name, statuses[h.name]) for h in live]
    stamp, compiled, state = cache.current(session, host)
    row = _host_report(report, state.version)
    status, taken = merge_report(statuses[host], row)
    status = finish_status(status, row, statuses[host], now)
    views = [v for v in before if v.name != host]
    if mine.enabled:
        views = sorted([*views, view_of(host, status)], key=lambda v: v.name)
    states, only, done = _serving_plan(
        basis,
        compiled,
        host,
        before,
        views,
        known=known,
        applied_changed=merged_route_ids(row, taken),
    )
    updates = serving_updates(session=session, states=states, only_listed=only)
    return _Prepared(
        stamp=stamp,
        hosts=stamps,
        kept=kept,
        basis=basis,
        live=frozenset(h.name for h in live),
        now=now,
        desired=state.version,
        row=row,
        status=status,
        text=status_text(status),
        taken=taken,
        updates=updates,
        done=done,
    )


def _still_holds(
    session: Session, cache: StateCache, settings: Settings, prepared: _Prepared
) -> bool:
    """Whether what ``prepared`` was based on still holds in the write transaction
    ``session``: two statements (the change stamp, the hosts' row stamps)."""
    if change_stamp(session) != prepared.stamp:
        return False
    stamps = host_stamps(session=session)
    if stamps != prepared.hosts or cache.serving_basis is not prepared.basis:
        return False
    if any(cache.stored_report(name) is not was for name, was in prepared.kept.items()):
        return False
    stale = timedelta(seconds=settings.fleet_host_stale_seconds)
    now = utcnow()
    live = {h.name for h in stamps if is_live(h.enabled, h.last_heartbeat, now=now, stale=stale)}
    return live == prepared.live


def _write_prepared(
    session: Session, cache: StateCache, host: str, report: HostStatus, prepared: _Prepared
) -> StatusAck:
    """Write a prepared report (its row, then the serving rows) and answer it."""
    stored = store_prepared_report(
        session=session, name=host, text=prepared.text, report=prepared.row, now=prepared.now
    )
    assert stored, "the host's row was checked to exist in this transaction"
    changed = write_serving(session=session, updates=prepared.updates)
    status, done = prepared.status, prepared.done
    event.listen(session, "after_commit", lambda _s: cache.note_report(host, status), once=True)
    event.listen(session, "after_commit", lambda _s: cache.note_serving(done), once=True)
    return _answer(
        host, report, prepared.row.error, status, prepared.desired, prepared.taken, changed
    )


def _host_report(report: HostStatus, desired: str) -> HostReport:
    """What ``report`` changes on its host's row, served ``desired`` now."""
    status = report.model_dump(mode="json", exclude=_NOT_STORED)
    row_status = {k: v for k, v in status.items() if k != "applied_routes"}
    row_status["applied_routes"] = report.applied_routes
    return HostReport(
        report.applied_version,
        "; ".join(report.errors),
        row_status,
        serving_version=desired,
        base_report=report.base_report,
        gone_routes=tuple(report.gone_routes),
        gone_counters=tuple(report.gone_counters),
    )


def _answer(
    host: str,
    report: HostStatus,
    error: str,
    stored_status: dict[str, Any],
    desired: str,
    taken: bool,
    changed: int,
) -> StatusAck:
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


def accept_status_in(
    *, session: Session, cache: StateCache, settings: Settings, host: str, report: HostStatus
) -> StatusAck:
    """:func:`accept_status` whole in the write transaction ``session`` (the fallback, and a
    host's first report, which registers it): prepared and written in the one transaction,
    so there is nothing to check in between."""
    prepared = _prepare(session, cache, settings, host, report)
    if prepared is None:
        get_or_register_host(session=session, name=host)
        prepared = _prepare(session, cache, settings, host, report)
        assert prepared is not None, "the host was registered in this transaction"
    return _write_prepared(session, cache, host, report, prepared)


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


def _serving_plan(
    basis: ServingBasis | None,
    compiled: Compiled,
    host: str,
    before: list[HostView],
    after: list[HostView],
    *,
    known: bool,
    applied_changed: set[str] | None = None,
) -> tuple[dict[str, tuple[bool, str]], bool, ServingBasis]:
    """The ``serving`` of every Service ``compiled`` and the hosts' views ``after`` this
    report make it (to write where it differs), whether they are only those listed (read only
    their records), and the basis serving is then written from.

    ``known``: every host's stored status was as this API stored it (else some other writer
    changed a host's report, and every Service is recomputed). ``basis``: what this API last
    wrote serving from (committed). ``applied_changed``: the route ids whose applied digest on
    ``host`` this report may have changed (a delta's), see :func:`touched_services`.

    Only the Services this report can have changed are recomputed (and only their records
    read) when this API last wrote serving (committed) for the same live hosts less than
    :data:`SERVING_FULL_SECONDS` ago: those compiled otherwise since then, and those with a
    route whose applied digest or error on ``host`` changed in this report (every other host's
    view is what its own last report left, and that report refreshed what it touched). Else,
    or when that is many Services, every Service is recomputed."""
    live = frozenset(v.name for v in after)
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
        touched = touched_services(
            basis.compiled, compiled, old, new, applied_changed=applied_changed
        )
        if len(touched) > SERVING_FULL_ABOVE:
            touched = None
    if touched is None:
        return serving_states(compiled, after), False, ServingBasis(compiled, live, now)
    assert basis is not None
    states = serving_states(compiled, after, only=touched)
    return states, True, ServingBasis(compiled, live, basis.full_at)
