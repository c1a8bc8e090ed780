"""The fleet agent: pull the desired state, make HAProxy serve it, report what is served.

Why: each HAProxy host runs one agent. It long-polls the API for its FleetState, validates it
(``translate``), puts VIPs on the host, applies through ``lbprovider.haproxy`` (runtime API,
reload only when the skeleton changes), checks that each new VIP:port carries a connection,
and reports health and counters. When the API is away it keeps serving the last good state —
also across its own restart (the state is kept in its state directory) — and says how long the
API was away once it is back. Every ``heartbeat_seconds`` (and on start, after a failure, while
servers wait to go) it re-applies against HAProxy's *live* state, so a hand edit through the
socket is undone; in between, a change is fetched as a delta and applied as one (only the
changed map lines). Heartbeats go from a reporter thread, so a report never delays a change;
once the API has taken a whole report (and says it takes deltas) they are deltas against the
last one it took (``HostStatus.base_report``), whole again when the API asks (``resend_full``).
Serving checks run in rounds of ``CHECK_BATCH`` from the reporter thread, beside fetches and
applies (a check waiting on its connections never holds up the next change).

With an announcer (``LBP_ANNOUNCE_MODE`` bgp or vrrp, see ``agent.announcing``) the VIPs are held
on the host before HAProxy binds them, withdrawn before an apply removes them, announced after
an apply serves them, and all withdrawn while HAProxy is down or when the agent stops.

Reloads are rate-limited (``reload_debounce_seconds``): a change that needs one within that
window waits, and whatever else arrives meanwhile is applied with it.

Every apply is counted for the report: the runtime-API commands it sent, and, when it reloaded,
its wall time (``HostStatus.runtime_commands_total``, ``reloads_timed``, ``reload_seconds_*``;
cumulative since the agent started).

What it must not do: read the database or Kubernetes, or build HAProxy text itself.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import TypeVar

from lbprovider.agent.announcing import AnnounceDriver
from lbprovider.agent.checkbook import CHECK_PENDING, CheckBook
from lbprovider.agent.checks import check_targets
from lbprovider.agent.client import ApiUnavailable, FleetApi
from lbprovider.agent.report import observe
from lbprovider.agent.translate import Translated, Translator
from lbprovider.agent.vips import InterfaceVips, RoutedVips, Vips
from lbprovider.announce import Announcer, NullAnnouncer, announcer_from_settings
from lbprovider.config import Settings
from lbprovider.fleet.models import FleetState, HostStatus, RouteCounters
from lbprovider.haproxy import model as hx
from lbprovider.haproxy.apply import Applier, ApplyResult, paths, start_or_attach
from lbprovider.haproxy.layout import build_skeleton
from lbprovider.haproxy.process import HAProxyProcess
from lbprovider.haproxy.render import config_digest
from lbprovider.haproxy.runtime import HAProxyError, RuntimeClient

logger = logging.getLogger(__name__)
V = TypeVar("V")

STATE_FILE = "desired-state.json"
MAX_BACKOFF = 60.0
CHECK_BATCH = 256  # serving checks per round: a bulk change must not hold up the next one
__all__ = ["CHECK_PENDING", "Agent", "AgentConfig", "Progress"]


@dataclass(frozen=True)
class AgentConfig:
    """What one agent needs, from ``LBP_AGENT_*`` settings (see ``lbprovider.config``)."""

    api_url: str
    token: str
    host: str
    state_dir: Path
    haproxy_bin: str = "haproxy"
    vip_mode: str = "none"
    vip_interface: str = "lo"
    bind_mode: str = "wildcard"
    bind_address: str | None = None
    reload_debounce_seconds: float = 2.0
    long_poll_seconds: float = 30.0
    heartbeat_seconds: float = 10.0
    retry_seconds: float = 2.0
    maxconn: int = 8000
    hard_stop_after_seconds: float = 600.0
    nbthread: int = 2
    check_timeout_seconds: float = 0.3
    announce_check_seconds: float = 0.25  # how often HAProxy's health is probed for announcing
    # the settings the announcer is built from (``LBP_ANNOUNCE_*``); None: no announcement
    settings: Settings | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_settings(cls, s: Settings) -> AgentConfig:
        return cls(
            api_url=s.agent_api_url,
            token=s.agent_token,
            host=s.agent_host or socket.gethostname().split(".")[0],
            state_dir=Path(s.agent_state_dir),
            haproxy_bin=s.agent_haproxy_bin,
            vip_mode=s.agent_vip_mode,
            vip_interface=s.agent_vip_interface,
            bind_mode=s.agent_bind_mode,
            bind_address=s.agent_bind_address,
            reload_debounce_seconds=s.agent_reload_debounce_seconds,
            long_poll_seconds=s.agent_long_poll_seconds,
            heartbeat_seconds=s.agent_heartbeat_seconds,
            retry_seconds=s.agent_retry_seconds,
            maxconn=s.agent_maxconn,
            hard_stop_after_seconds=s.agent_hard_stop_after_seconds,
            nbthread=s.agent_nbthread,
            check_timeout_seconds=s.agent_check_timeout_seconds,
            settings=s,
        )

    def haproxy_settings(self) -> hx.Settings:
        """The HAProxy host settings (raises ``InvalidModel`` on a bad value)."""
        bind = hx.parse_address(self.bind_address) if self.bind_address else None
        per_vip = self.bind_mode == "per-vip"
        return hx.Settings(
            run_dir=str(self.state_dir / "run"),
            bind_mode=hx.BindMode.PER_VIP if per_vip else hx.BindMode.WILDCARD,
            bind_address=bind,
            transparent=per_vip and self.vip_mode == "none",
            maxconn=self.maxconn,
            hard_stop_after_ms=int(self.hard_stop_after_seconds * 1000),
            nbthread=self.nbthread,
        )


@dataclass
class Progress:
    """What the agent has applied and learnt; reported in every heartbeat."""

    desired: FleetState | None = None
    applied: FleetState | None = None
    applied_routes: dict[str, str] = field(default_factory=dict)
    checks: CheckBook = field(default_factory=CheckBook)  # serving checks, route errors
    errors: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    # what the API holds of the last report it took (None: unknown, the next report is whole)
    routes_sent: dict[str, str] | None = None
    backends_sent: dict[str, str] | None = None
    counters_sent: dict[str, RouteCounters] | None = None
    acked_report: str = ""  # that report's id ("": none, the next report is whole)
    deltas: bool = False  # the API takes delta reports (its last StatusAck said so)
    reports: int = 0  # reports built, for their ids
    outage_started: float | None = None
    outage_seconds: float = 0.0
    # cumulative since the agent started (reported; Prometheus handles the reset at a restart)
    runtime_commands: int = 0  # runtime-API commands sent to HAProxy
    reload_count: int = 0  # applies that reloaded HAProxy, each timed
    reload_seconds: float = 0.0  # their summed wall time
    reload_last: float | None = None  # the last one's, None before the first


class Agent:
    """One host's agent. ``start`` brings HAProxy up; ``run`` loops until ``stop``."""

    def __init__(
        self,
        config: AgentConfig,
        api: FleetApi | None = None,
        announcer: Announcer | None = None,
    ) -> None:
        self.config = config
        self.hsettings = config.haproxy_settings()
        self.api = api or FleetApi(config.api_url, config.token, config.host)
        self.vips: Vips = (
            InterfaceVips(config.vip_interface, config.state_dir)
            if config.vip_mode == "local"
            else RoutedVips()
        )
        self.progress = Progress()
        if announcer is None:  # mode none (the default): the NullAnnouncer
            s = config.settings
            announcer = announcer_from_settings(s) if s is not None else NullAnnouncer()
        self.announce = AnnounceDriver(
            announcer, self._haproxy_up, interval=config.announce_check_seconds
        )
        self.process: HAProxyProcess | None = None
        self.applier: Applier | None = None
        self._stop = threading.Event()
        self._last_reload = float("-inf")
        self._next_apply = 0.0
        self._next_heartbeat = 0.0
        self._report_now = threading.Event()  # wakes the reporter: report at once
        self._reporter: threading.Thread | None = None
        self._next_resync = 0.0  # the next full diff against HAProxy's live state
        self._next_counters = 0.0  # the next report that reads the routes table's counters
        self._run_id = os.urandom(6).hex()  # names this run's reports (``report_id``)
        self._failures = 0
        self.translate = Translator()
        self.check_batch = CHECK_BATCH
        self._checks_left = False  # applied routes still waiting for their serving check
        # guards progress.checks: the main loop marks what an apply brought in, the reporter
        # thread runs the checks and takes their verdicts
        self._checks_lock = threading.Lock()
        self._unsaved: FleetState | None = None  # applied, not yet kept on disk (reporter's)
        self._vips: tuple[FleetState, frozenset[str]] | None = None  # the last _wanted_vips
        self._save_lock = threading.Lock()

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start or attach to HAProxy, serving the last good state kept on disk (if any)."""
        Path(self.hsettings.run_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        saved = self._load_saved()
        translated = self.translate(saved or FleetState(host=self.config.host))
        self.vips.sync(set(saved.vips) if saved else set())
        self.announce.start()  # its daemon up, nothing announced yet
        self.announce.hold(_vips_of(saved) if saved else set())
        self.process = start_or_attach(translated.desired, self.hsettings, self.config.haproxy_bin)
        self.applier = Applier(self.hsettings, self.process, self.config.haproxy_bin)
        if saved is not None:
            self.progress.desired = saved
            self._apply(saved)
        logger.info(
            "agent started",
            extra={"event": "agent_started", "host": self.config.host, "version": _v(saved)},
        )

    def stop(self) -> None:
        """Ask ``run`` to return (HAProxy keeps running for the next agent to attach)."""
        self._stop.set()

    def close(self) -> None:
        """Withdraw every announcement, release the runtime connection and the HTTP client."""
        self.announce.close()
        if self.applier is not None:
            self.applier.close()
        self.api.close()

    def run(self) -> None:
        """Loop: fetch and apply when needed, until :meth:`stop`; heartbeats go from a
        reporter thread meanwhile (a report never delays the next change)."""
        self._reporter = threading.Thread(target=self._report_loop, name="agent-report")
        self._reporter.start()
        try:
            while not self._stop.is_set():
                self.step()
        finally:
            self._stop.set()
            self._report_now.set()
            self._reporter.join(timeout=30)
            self._save_applied()  # the last one applied is on disk when the agent ends

    def _report_loop(self) -> None:
        """Heartbeat every ``heartbeat_seconds``, and at once after an apply or an outage.
        Serving checks run here, a round before each report while routes wait for theirs
        (reports in between only when one is due or asked for, and once all are checked), so
        the main loop fetches and applies the next change while a check waits on its
        connections. The last applied state is kept on disk from here too, after the report
        (``_save_applied``)."""
        while not self._stop.is_set():
            wait = 0.0 if self._checks_left else max(0.0, self._next_heartbeat - time.monotonic())
            asked = self._report_now.wait(wait)
            if self._stop.is_set():
                return
            self._report_now.clear()
            try:
                if self._checks_left:  # an apply's report comes after its first round
                    self._check_round()
                    due = asked or time.monotonic() >= self._next_heartbeat
                    if self._checks_left and not due:
                        continue  # the next round before reporting
                self._heartbeat()
            except Exception:  # a report must never end the reporter
                logger.exception("heartbeat failed", extra={"event": "heartbeat_failed"})
                self._stop.wait(self.config.retry_seconds)
            finally:
                self._save_applied()

    # -- one iteration -----------------------------------------------------------------------

    def step(self) -> None:
        """Fetch (long-poll up to the next due task), then apply, or re-check HAProxy's live
        state when that is due."""
        wait = max(0.0, min(self._next_resync, self._next_apply_due()) - time.monotonic())
        if not self._fetch(min(wait, self.config.long_poll_seconds)):
            self._stop.wait(min(self.config.retry_seconds, max(wait, 0.05)))
        now = time.monotonic()
        if self._needs_apply() and now >= self._next_apply:
            self._maybe_apply(now)
        if time.monotonic() >= self._next_resync:
            self._resync()

    def _next_apply_due(self) -> float:
        return self._next_apply if self._needs_apply() else float("inf")

    def _needs_apply(self) -> bool:
        p = self.progress
        if p.desired is None:
            return False
        return p.applied is None or p.applied.version != p.desired.version or bool(p.pending)

    def _fetch(self, wait: float) -> bool:
        known = self.progress.desired.version if self.progress.desired else ""
        try:
            state = self.api.fetch_state(known, wait, self.progress.desired)
        except ApiUnavailable as e:
            self._api_down(e)
            return False
        self._api_up()
        if state is not None:
            logger.info(
                "new desired state",
                extra={
                    "event": "state_fetched",
                    "host": self.config.host,
                    "version": state.version,
                },
            )
            self.progress.desired = state
            self._next_apply = time.monotonic()
        return True

    def _api_down(self, error: Exception) -> None:
        if self.progress.outage_started is None:
            self.progress.outage_started = time.monotonic()
            logger.warning(
                "API unreachable, serving the last good state",
                extra={"event": "api_unreachable", "host": self.config.host, "error": str(error)},
            )

    def _api_up(self) -> None:
        started = self.progress.outage_started
        if started is not None:
            self.progress.outage_seconds = time.monotonic() - started
            self.progress.outage_started = None
            self._report_soon()  # tell the API at once
            logger.info(
                "API reachable again",
                extra={
                    "event": "api_back",
                    "host": self.config.host,
                    "outage_seconds": round(self.progress.outage_seconds, 1),
                },
            )

    # -- applying ----------------------------------------------------------------------------

    def _maybe_apply(self, now: float) -> None:
        desired = self.progress.desired
        assert desired is not None
        if self._needs_reload(desired):
            ready_at = self._last_reload + self.config.reload_debounce_seconds
            if now < ready_at:
                self._next_apply = ready_at  # debounced: newer states may still arrive
                return
        # A failed apply or servers waiting to go: read everything again; else the change.
        self._apply(desired, live=bool(self._failures or self.progress.pending))

    def _needs_reload(self, state: FleetState) -> bool:
        desired = self.translate(state).desired
        if self.applier is not None and self.applier.derive(desired) is not None:
            return False  # same skeleton as what runs
        try:
            skeleton = build_skeleton(desired, self.hsettings)
        except hx.InvalidModel:
            return False
        config, _, _ = paths(self.hsettings)
        return config_digest(config) != skeleton.digest

    def _apply(self, state: FleetState, *, live: bool = True) -> None:
        assert self.applier is not None
        translated = self.translate(state)
        vip_errors = self.vips.sync(set(state.vips))
        wanted = self._wanted_vips(state)
        with self.announce.applying():
            self.announce.withdraw_leaving(wanted)  # withdrawn before HAProxy drops them
            if self.announce.enabled:  # on the host before binding (none to hold otherwise)
                self.announce.hold(wanted | self.announce.serving)
            result = self._run_apply(translated, live=live)
            if result.reloaded:
                self._last_reload = time.monotonic()
            self._record(state, translated, result, vip_errors)

    def _run_apply(self, translated: Translated, *, live: bool) -> ApplyResult:
        """One apply through the runtime API or a reload, counted and timed for the report.
        ``live``: diff against HAProxy's live state, else send what changed since the last
        apply (the applier falls back to reading everything when it cannot)."""
        assert self.applier is not None
        started = time.monotonic()
        if live:
            self._next_resync = started + self.config.heartbeat_seconds
        try:
            result = self.applier.apply(translated.desired, live=live)
        except (hx.InvalidModel, HAProxyError) as e:
            result = ApplyResult(errors=[f"refused: {e}"])
        p = self.progress
        p.runtime_commands += result.commands
        if result.reloaded:
            p.reload_last = time.monotonic() - started
            p.reload_seconds += p.reload_last
            p.reload_count += 1
        return result

    def _record(
        self, state: FleetState, translated: Translated, result: ApplyResult, vip_errors: list[str]
    ) -> None:
        p = self.progress
        p.errors = [*result.errors, *translated.problems, *vip_errors]
        p.pending = list(result.pending)
        if result.applied:
            self._failures = 0
            # marked before the reporter can see them applied: never reported served unchecked
            digests = self._mark_unchecked(state, translated)
            p.applied = state
            refused = translated.refused
            p.applied_routes = (
                {k: d for k, d in digests.items() if k not in refused} if refused else digests
            )
            with self._save_lock:
                self._unsaved = state  # kept on disk by the reporter, after its report
            self._next_apply = time.monotonic() + (self.config.retry_seconds if p.pending else 0)
            self._announce_served(state, translated.refused)
        else:
            self._failures += 1
            backoff = self.config.retry_seconds * 2 ** min(self._failures - 1, 5)
            self._next_apply = time.monotonic() + min(backoff, MAX_BACKOFF)
            why = "; ".join(result.errors) or "not applied"
            errors = {
                r.route_id: f"not applied: {why}"[:500]
                for r in state.routes
                if p.applied_routes.get(r.route_id) != r.digest()
            } | dict(translated.refused)
            with self._checks_lock:
                p.checks.failed(errors)
        p.errors += self.announce.errors
        self._report_soon()
        level = logging.WARNING if p.errors else logging.INFO
        logger.log(
            level,
            "state applied" if result.applied else "state not applied",
            extra={
                "event": "applied" if result.applied else "apply_failed",
                "host": self.config.host,
                "version": state.version,
                "reloaded": result.reloaded,
                "commands": result.commands,
                "error": "; ".join(p.errors),
            },
        )

    def _announce_served(self, state: FleetState, refused: dict[str, str]) -> None:
        """Announce the VIPs HAProxy now serves (a route applied, not refused); hold exactly
        the wanted ones on the host from now on."""
        if refused:
            self.announce.served({r.address for r in state.routes if r.route_id not in refused})
        else:
            self.announce.served(_route_addresses(state))
        self.announce.hold(self._wanted_vips(state))

    def _wanted_vips(self, state: FleetState) -> frozenset[str]:
        """:func:`_vips_of` ``state``, kept for the last state asked about (an apply asks
        twice, and at 10,000 routes each is a set of 10,000)."""
        if self._vips is None or self._vips[0] is not state:
            self._vips = (state, _vips_of(state))
        return self._vips[1]

    def _haproxy_up(self) -> bool:
        """HAProxy serves: its master answers and has a worker."""
        try:
            return self.process is not None and bool(self.process.show_proc().workers)
        except HAProxyError:
            return False

    def _mark_unchecked(self, state: FleetState, translated: Translated) -> dict[str, str]:
        """After an apply: every new, changed or failing route of ``state`` waits for its
        serving check (the reporter runs them, see :meth:`_check_round`): until checked it
        reports :data:`CHECK_PENDING` (or its last failure) as its error, never served
        unchecked. Returns the digest of every route of ``state`` (route_id -> digest).
        Costs what changed since the last state marked (see ``agent.checkbook``)."""
        with self._checks_lock:
            digests = self.progress.checks.mark(state, translated.refused, translated.specs)
            self._checks_left = True
        return digests

    def _check_round(self) -> None:
        """One round of serving checks (reporter thread): connect to up to ``check_batch``
        applied routes not checked at their digest (new, changed or failing), then keep the
        verdicts of those the applied state still holds at that digest (an apply meanwhile may
        have changed or dropped them; those wait for the next round)."""
        book = self.progress.checks
        with self._checks_lock:
            todo, more = book.todo(self.check_batch)
            self._checks_left = more
        if not todo:
            return
        verdicts = check_targets([t[:3] for t in todo], self.config.check_timeout_seconds)
        with self._checks_lock:
            if book.take(todo, verdicts):
                self._checks_left = True

    def _resync(self) -> None:
        """Every ``heartbeat_seconds`` since the last full diff, re-apply the applied state
        against HAProxy's live state (undoes hand edits) and re-check the routes that failed."""
        self._next_resync = time.monotonic() + self.config.heartbeat_seconds
        p = self.progress
        if p.applied is None or self._needs_apply():
            return
        assert self.applier is not None
        translated = self.translate(p.applied)
        with self.announce.applying():
            result = self._run_apply(translated, live=True)
            if result.commands or result.reloaded or result.errors:
                vip_errors = self.vips.sync(set(p.applied.vips))
                self._record(p.applied, translated, result, vip_errors)
                return
        if p.checks.errors:  # the failing ones are checked again (by the reporter)
            with self._checks_lock:
                self._checks_left = True
            self._report_now.set()

    # -- reporting ---------------------------------------------------------------------------

    def status(self) -> HostStatus:
        """The report HAProxy and the agent's progress make now."""
        return self._report()[0]

    def _report(self) -> tuple[HostStatus, _Sections]:
        """The report to send now, and the whole sections the API holds once it takes it.

        Whole when the API does not take deltas (an older API: then ``applied_routes`` and
        ``route_backends`` are left out when unchanged, as before) or holds no report of ours;
        else a delta against the last report it took. A delta reads the routes table's
        counters and the live routes map only every ``heartbeat_seconds`` (a report right
        after an apply skips them: at 10,000 routes reading them is most of a report's cost;
        until the next read, a new route's backend is not reported yet and a removed one's is
        dropped)."""
        assert self.applier is not None and self.process is not None
        p = self.progress
        sent = (p.routes_sent, p.backends_sent, p.counters_sent)
        delta = p.deltas and bool(p.acked_report) and None not in sent
        now = time.monotonic()
        read_live = not delta or now >= self._next_counters
        if read_live:
            self._next_counters = now + self.config.heartbeat_seconds
        # its own connection: the reporter runs beside applies, which use the applier's
        with RuntimeClient(str(paths(self.hsettings)[1])) as client:
            seen = observe(
                client,
                self.process,
                self.hsettings.run_dir,
                live=read_live,
                previous=p.counters_sent or {},
            )
        if read_live:
            backends, counters = self._route_backends(seen.route_backends), seen.counters
        else:
            applied = p.applied_routes
            backends = {k: v for k, v in (p.backends_sent or {}).items() if k in applied}
            counters = dict(p.counters_sent or {})
        whole = _Sections(dict(p.applied_routes), backends, counters)
        p.reports += 1
        report_id = f"{self._run_id}-{p.reports}"
        if delta:
            assert p.routes_sent is not None and p.backends_sent is not None
            assert p.counters_sent is not None
            gone = sorted(
                (p.routes_sent.keys() - whole.routes.keys())
                | (p.backends_sent.keys() - whole.backends.keys())
            )
            sections: dict[str, object] = {
                "applied_routes": _changed(p.routes_sent, whole.routes, gone),
                "route_backends": _changed(p.backends_sent, whole.backends, gone),
                "counters": _changed(p.counters_sent, counters, ()),
                "gone_routes": gone,
                "gone_counters": [k for k in p.counters_sent if k not in counters],
                "base_report": p.acked_report,
            }
        else:
            routes = whole.routes if p.routes_sent != whole.routes or p.deltas else None
            sections = {
                "applied_routes": routes,
                "route_backends": backends if backends != p.backends_sent or p.deltas else None,
                "counters": counters,
            }
        status = HostStatus(
            desired_version=p.desired.version if p.desired else "",
            applied_version=p.applied.version if p.applied else "",
            route_errors=self._route_errors(),
            errors=[*p.errors, *seen.errors],
            pending=list(p.pending),
            reloads=seen.reloads,
            failed_reloads=seen.failed_reloads,
            worker_pid=seen.worker_pid,
            worker_exits=seen.worker_exits,
            api_outage_seconds=round(p.outage_seconds, 3),
            runtime_commands_total=p.runtime_commands,
            reloads_timed=p.reload_count,
            reload_seconds_total=round(p.reload_seconds, 6),
            reload_seconds_last=None if p.reload_last is None else round(p.reload_last, 6),
            servers=seen.servers,
            vips=self.vips.owned() or sorted(self.announce.serving),
            announcements=self.announce.status(),
            report_id=report_id,
            **sections,
        )
        return status, whole

    def _route_errors(self) -> dict[str, str]:
        with self._checks_lock:
            return dict(self.progress.checks.errors)

    def _route_backends(self, by_key: dict[str, str]) -> dict[str, str]:
        """route_id -> HAProxy backend, for the applied routes HAProxy has in its map."""
        applied = self.progress.applied
        routes = applied.routes if applied else ()
        return {r.route_id: by_key[r.key] for r in routes if r.key in by_key}

    def _report_soon(self) -> None:
        self._next_heartbeat = 0.0
        self._report_now.set()

    def _heartbeat(self) -> None:
        self._next_heartbeat = time.monotonic() + self.config.heartbeat_seconds
        status, whole = self._report()
        try:
            ack = self.api.post_status(status)
        except ApiUnavailable as e:
            self._api_down(e)
            self._next_heartbeat = time.monotonic() + self.config.retry_seconds
            return
        self._api_up()
        p = self.progress
        # what the API now holds (sections a whole report left out, None, it kept)
        p.routes_sent, p.backends_sent, p.counters_sent = (
            whole.routes,
            whole.backends,
            whole.counters,
        )
        p.acked_report = status.report_id if ack.deltas else ""
        p.deltas = ack.deltas
        if ack.resend_routes or ack.resend_full:
            p.routes_sent = p.backends_sent = p.counters_sent = None
            p.acked_report = ""
        if ack.resend_full:  # the API kept none of this delta: a whole report at once
            self._report_soon()

    # -- last good state ---------------------------------------------------------------------

    def _save_applied(self) -> None:
        """Keep the last applied state on disk, if not yet (off the change path: the file
        serves a restart while the API is away; of applies in a row only the last is
        written)."""
        with self._save_lock:
            state, self._unsaved = self._unsaved, None
        if state is not None:
            self._save(state)

    def _save(self, state: FleetState) -> None:
        path = self.config.state_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(state.model_dump_json())
            tmp.replace(path)
        except OSError as e:
            logger.warning("could not keep the state on disk", extra={"error": str(e)})

    def _load_saved(self) -> FleetState | None:
        path = self.config.state_dir / STATE_FILE
        try:
            state = FleetState.model_validate(json.loads(path.read_text()))
        except (OSError, ValueError):
            return None
        if state.host != self.config.host or state.version != state.content_digest():
            return None
        return state


@dataclass(frozen=True)
class _Sections:
    """A report's route-keyed sections, whole."""

    routes: dict[str, str]  # applied route_id -> digest
    backends: dict[str, str]  # route_id -> HAProxy backend
    counters: dict[str, RouteCounters]  # VIP:port -> counters


def _changed(sent: dict[str, V], now: dict[str, V], gone: Sequence[str]) -> dict[str, V]:
    """The entries of ``now`` that ``sent`` lacks or holds otherwise, and those of ``gone``
    that ``now`` still has (a delta drops ``gone`` before it upserts)."""
    out = {k: v for k, v in now.items() if (w := sent.get(k)) is not v and w != v}
    out.update((k, now[k]) for k in gone if k in now)
    return out


def _vips_of(state: FleetState) -> frozenset[str]:
    """Every VIP this state serves on the host: its VIPs and its routes' addresses."""
    return frozenset(state.vips).union(_route_addresses(state))


def _route_addresses(state: FleetState) -> set[str]:
    return set(map(_ADDRESS, state.routes))


_ADDRESS = attrgetter("address")


def _v(state: FleetState | None) -> str:
    return state.version if state else ""
