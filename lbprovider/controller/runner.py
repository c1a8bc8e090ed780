"""The controller process: caches, queues, leader election and the start-up order, wired.

Every replica keeps warm caches; only the leader reconciles. When a replica becomes leader it
first adopts every address our Services already show (and other providers' annotations), and
only then lets workers allocate, enqueueing Services oldest first: a restart or a failover
never changes an IP. Losing the Lease stops reconciling at once (the writers also refuse).

Start-up and the periodic resync do not reconcile ten thousand converged Services one by one:
one bulk read-only check (``ServiceReconciler.settled_keys``) tells which Services' database
state and status already agree, and only the others are queued, in the queue's background lane
so that changes seen meanwhile go first.

Watch handlers only enqueue keys, and only for changes a reconcile depends on (see
``changes``). This module must not decide allocations or write to Kubernetes itself.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from lbprovider.config import Settings
from lbprovider.controller.changes import fingerprint
from lbprovider.controller.dns import Resolver
from lbprovider.controller.externalnames import DNSChecker, ExternalNameReconciler
from lbprovider.controller.ingresses import IngressReconciler, backend_names
from lbprovider.controller.loadbalancers import ServiceReconciler
from lbprovider.controller.metrics import ControllerMetrics, serve_metrics
from lbprovider.controller.nodes import NodeReconciler, node_data
from lbprovider.controller.result import Action, Result
from lbprovider.controller.status import (
    COND_SERVING,
    condition_matches,
    is_ours,
    key_of,
    meta,
    serving_condition,
    spec,
    status_ips,
)
from lbprovider.db.session import (
    make_engine,
    read_only_factory,
    read_transaction,
    session_factory,
    transaction,
)
from lbprovider.kube.cache import DELETED, RESYNC, make_cache, object_key
from lbprovider.kube.client import load_api_client
from lbprovider.kube.election import LeaderElector, default_identity
from lbprovider.kube.errors import KubeNotConfigured, KubeNotFound, NotLeader
from lbprovider.kube.queue import WorkQueue
from lbprovider.kube.writers import KubeEventRecorder, KubeStatusWriter
from lbprovider.services.context import IPPolicy
from lbprovider.services.externalnames import live_external_names
from lbprovider.services.ingress import ingress_keys
from lbprovider.services.loadbalancers import known_service_keys, serving_states
from lbprovider.services.nodes import node_names

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
CACHE_KINDS = ("services", "namespaces", "nodes", "ingresses", "ingressclasses")
SYNC_TIMEOUT_SECONDS = 120.0


class Controller:
    """One controller replica. ``start()`` returns once caches are synced; ``stop()`` undoes."""

    def __init__(
        self,
        settings: Settings,
        *,
        api: Any = None,
        sessions: sessionmaker[Session] | None = None,
        identity: str | None = None,
        resolver: Resolver | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """``registry``: where the metrics go (the API app's in ``serve``; a new one if None)."""
        self.settings = settings
        self.api = api if api is not None else load_api_client(settings)
        # After the client: with no cluster, ``serve`` gets no empty controller families.
        self.metrics = ControllerMetrics(registry or CollectorRegistry(auto_describe=False))
        self._engine: Engine | None = None
        if sessions is None:
            self._engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
            sessions = session_factory(self._engine)
        self.sessions = sessions
        self._read_sessions = read_only_factory(sessions)
        self.identity = identity or default_identity()
        self.caches = {kind: make_cache(kind, self.api, settings) for kind in CACHE_KINDS}
        self.elector = self._make_elector()
        is_leader = self.elector.is_leader if self.elector else _always
        self.writer = KubeStatusWriter(self.api, is_leader=is_leader)
        self.events = KubeEventRecorder(self.api, is_leader=is_leader, instance=self.identity)
        self.queues: dict[str, WorkQueue[str]] = {
            name: WorkQueue(name=name, backoff_max_seconds=settings.reconcile_backoff_max_seconds)
            for name in ("services", "externalnames", "nodes", "ingresses")
        }
        self._stop = threading.Event()
        self._want_active = threading.Event()
        self._active = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sweeping = threading.Lock()  # held while a resync's bulk check runs
        self._starting = threading.Event()  # the gate is open, the backlog not queued yet
        self._leading_since = time.monotonic()
        self._fingerprints: dict[str, Any] = {}
        self._types: dict[str, str] = {}
        self._node_data: dict[str, Any] = {}
        self._build_reconcilers(resolver)
        self.metrics.watch(
            caches=self.caches,
            queues=self.queues,
            is_leader=self.is_leader,
            is_active=self.is_active,
        )

    def _make_elector(self) -> LeaderElector | None:
        if not self.settings.leader_election:
            return None
        return LeaderElector.from_settings(
            self.api,
            self.settings,
            identity=self.identity,
            on_started_leading=self._on_started_leading,
            on_stopped_leading=self._on_stopped_leading,
        )

    def _build_reconcilers(self, resolver: Resolver | None) -> None:
        s, c = self.settings, self.caches
        self.services = ServiceReconciler(
            settings=s,
            services=c["services"],
            namespaces=c["namespaces"],
            writer=self.writer,
            events=self.events,
            sessions=self.sessions,
            policy=IPPolicy.from_settings(s),
            record_allocation=self.metrics.record_allocation,
        )
        self.dns = DNSChecker(
            sessions=self.sessions,
            resolver=resolver or Resolver(s.dns_servers, timeout=s.dns_timeout_seconds),
            every_seconds=s.dns_check_seconds,
            active=self.is_active,
        )
        self.externalnames = ExternalNameReconciler(
            services=c["services"], sessions=self.sessions, on_new_target=self.dns.wake
        )
        self.nodes = NodeReconciler(settings=s, nodes=c["nodes"], sessions=self.sessions)
        self.ingresses = IngressReconciler(
            settings=s,
            ingresses=c["ingresses"],
            classes=c["ingressclasses"],
            services=c["services"],
            sessions=self.sessions,
        )

    # -- state -----------------------------------------------------------------------------

    def is_leader(self) -> bool:
        return self.elector.is_leader() if self.elector else True

    def is_active(self) -> bool:
        """Leading, and start-up adoption is done for this term: reconciles may run."""
        return self._active.is_set() and self.is_leader()

    def wait_active(self, timeout: float | None = None) -> bool:
        return self._active.wait(timeout)

    def idle(self) -> bool:
        """No key queued, delayed or being processed, and no start-up pass still deciding what
        to queue (used by tests and the benchmark)."""
        if self._starting.is_set():
            return False
        return all(q.depth() == 0 and q.processing() == 0 for q in self.queues.values())

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Controller:
        self._add_handlers()
        for cache in self.caches.values():
            cache.start()
        self._wait_for_caches()
        if self._stop.is_set():
            return self
        # The first lists (ten thousand Services) live as long as the process: keep them out
        # of every later cyclic collection (plain JSON dicts, freed by reference counting).
        gc.freeze()
        workers = self.settings.controller_workers
        self.queues["services"].start_workers(
            self._handler("services", self.services.reconcile), workers
        )
        self.queues["externalnames"].start_workers(
            self._handler("externalnames", self.externalnames.reconcile), 1
        )
        self.queues["nodes"].start_workers(self._handler("nodes", self.nodes.reconcile), 1)
        self.queues["ingresses"].start_workers(
            self._handler("ingresses", self.ingresses.reconcile), 1
        )
        self.dns.start()
        self._spawn(self._run_startup, "controller-startup")
        self._spawn(self._run_serving_poll, "controller-serving")
        if self.elector is not None:
            self.elector.start()
        else:
            self._on_started_leading()
        logger.info(
            "controller started", extra={"event": "controller_started", "identity": self.identity}
        )
        return self

    def _wait_for_caches(self) -> None:
        deadline = time.monotonic() + SYNC_TIMEOUT_SECONDS
        for name, cache in self.caches.items():
            while not cache.wait_for_sync(0.5):
                if self._stop.is_set():
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {name} cache did not sync in {SYNC_TIMEOUT_SECONDS}s")

    def stop(self, *, release_lease: bool = True) -> None:
        """Stop everything; by default hand the Lease over so a standby takes over now."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._active.clear()
        self._wake.set()
        if self.elector is not None:
            self.elector.stop(release=release_lease)
        for queue in self.queues.values():
            queue.shutdown()
        self.services.close()
        self.dns.stop()
        for cache in self.caches.values():
            cache.stop()
        for thread in self._threads:
            thread.join(5.0)
        if self._engine is not None:
            self._engine.dispose()
        self.metrics.close()
        logger.info("controller stopped", extra={"event": "controller_stopped"})

    def __enter__(self) -> Controller:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- leadership and start-up -----------------------------------------------------------

    def _on_started_leading(self) -> None:
        self._leading_since = time.monotonic()
        self._want_active.set()
        self._wake.set()

    def _on_stopped_leading(self) -> None:
        self._want_active.clear()
        self._active.clear()
        logger.warning("standing by", extra={"event": "controller_standby"})

    def _run_startup(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if not self._want_active.is_set() or self._active.is_set():
                continue
            try:
                self._activate()
                failures = 0
            except Exception as exc:  # the database may be away: adoption must finish first
                failures += 1
                logger.warning(
                    "start-up adoption failed, retrying",
                    extra={"event": "startup_retry", "error": str(exc), "failures": failures},
                )
                self._stop.wait(min(self.settings.reconcile_backoff_max_seconds, 0.2 * 2**failures))
                self._wake.set()

    def _activate(self) -> None:
        """Adopt first, then open the gate and enqueue everything (Services oldest first)."""
        with transaction(self.sessions) as session:
            known = known_service_keys(session=session)
            names = live_external_names(session=session)
            nodes = node_names(session=session)
            ingresses = ingress_keys(session=session)
        self.services.remember(known)
        with _collector_paused():
            self.services.adopt_all()
        if not self._want_active.is_set():
            return
        self._starting.set()
        self._active.set()
        try:
            self._queue_backlog(known, names, nodes, ingresses)
        finally:
            self._starting.clear()
        self._spawn(self._report_converged, "controller-converged")

    def _queue_backlog(
        self, known: set[str], names: set[str], nodes: set[str], ingresses: set[str]
    ) -> None:
        """Queue (background lane) every key that needs a look now the gate is open."""
        cached = self.caches["services"].list()
        ours = sorted((s for s in cached if self.services.concerns(s)), key=_creation_order)
        # Services whose database state and status already agree need no reconcile now (the
        # periodic resync still visits them); one bulk read tells which.
        settled = self._settled(ours)
        for key in [key_of(s) for s in ours] + sorted(known):
            if key not in settled:
                self.queues["services"].add(key, background=True)
        extnames = {key_of(s) for s in cached if spec(s).get("type") == "ExternalName"}
        for key in sorted(extnames | names):
            self.queues["externalnames"].add(key, background=True)
        for name in sorted(set(self.caches["nodes"].keys()) | nodes):
            self.queues["nodes"].add(name, background=True)
        for key in sorted(set(self.caches["ingresses"].keys()) | ingresses):
            self.queues["ingresses"].add(key, background=True)
        logger.info(
            "reconciling",
            extra={
                "event": "controller_active",
                "services": len(ours),
                "known": len(known),
                "settled": len(settled),
            },
        )

    def _settled(self, services: list[Obj]) -> set[str]:
        """``settled_keys``, or none when the check fails (then every Service is reconciled:
        the gate is already open, so start-up must not stop here)."""
        try:
            with _collector_paused():
                return self.services.settled_keys(services)
        except Exception as exc:
            logger.warning(
                "start-up check failed: reconciling every Service",
                extra={"event": "startup_check_error", "error": str(exc)},
            )
            return set()

    def _report_converged(self) -> None:
        """Log once the start-up backlog is drained: how long a restart takes to settle, from
        becoming leader (adoption and the bulk check included)."""
        started = self._leading_since
        while not self._stop.wait(0.05):
            if self.idle():
                logger.info(
                    "start-up backlog converged",
                    extra={
                        "event": "controller_converged",
                        "seconds": round(time.monotonic() - started, 3),
                        "writes": self.writes(),
                    },
                )
                return

    def writes(self) -> int:
        """Kubernetes writes so far: Service status and finalizers, Events."""
        return self.services.writes + self.events.created + self.events.aggregated

    # -- workers ---------------------------------------------------------------------------

    def _handler(
        self, queue: str, reconcile: Callable[[str], Result]
    ) -> Callable[[str], float | None]:
        def handle(key: str) -> float | None:
            if not self.is_active():
                return None  # standby: the next leader enqueues everything after adoption
            started, outcome = time.perf_counter(), "error"
            try:
                result = reconcile(key)
                outcome = result.action.value
            except (NotLeader, KubeNotFound):
                # Lost the Lease, or deleted meanwhile (its DELETED event enqueues it again).
                outcome = "skipped"
                return None
            finally:
                self.metrics.observe_reconcile(queue, outcome, time.perf_counter() - started)
            if result.action is Action.REPROCESS_PENDING:
                for pending in self.services.pending_keys():
                    if pending != key:
                        self.queues["services"].add(pending)
            return result.after if result.action is Action.RETRY else None

        return handle

    # -- watch handlers (enqueue only) -----------------------------------------------------

    def _add_handlers(self) -> None:
        self.caches["services"].add_handler(self._on_service)
        self.caches["services"].add_resync_handler(self._on_services_resync)
        self.caches["nodes"].add_handler(self._on_node)
        self.caches["ingresses"].add_handler(
            lambda t, obj: self._enqueue("ingresses", object_key(obj), background=t == RESYNC)
        )
        self.caches["ingressclasses"].add_handler(lambda _t, _obj: self._enqueue_all_ingresses())

    def _enqueue(self, queue: str, key: str, *, background: bool = False) -> None:
        """Queue ``key`` once active; ``background`` for a resync's look-again (see WorkQueue)."""
        if self._active.is_set():
            self.queues[queue].add(key, background=background)

    def _enqueue_all_ingresses(self) -> None:
        keys = self.caches["ingresses"].keys()
        for key in keys:
            self._enqueue("ingresses", key)

    def _on_service(self, event_type: str, svc: Obj) -> None:
        key = key_of(svc)
        new = None if event_type == DELETED else fingerprint(svc)
        old = self._fingerprints.pop(key, None)
        old_type = self._types.pop(key, None)
        if new is not None:
            self._fingerprints[key] = new
            self._types[key] = str(spec(svc).get("type") or "")
        if old == new and event_type not in ("ADDED", "RESYNC"):
            return  # label-only change or our own status write
        sweep = event_type == RESYNC
        # A resync of an unchanged Service is left to the bulk check (``_on_services_resync``).
        if (event_type == DELETED or self.services.concerns(svc)) and not (sweep and old == new):
            self._enqueue("services", key)
        if "ExternalName" in (spec(svc).get("type"), old_type):
            self._enqueue("externalnames", key, background=sweep)
        if old != new:
            self._enqueue_ingresses_using(
                str(meta(svc).get("namespace")), str(meta(svc).get("name"))
            )

    def _on_services_resync(self, services: list[Obj]) -> None:
        """The periodic resync: check every Service in bulk on a thread of its own (not the
        dispatcher's) and queue, in the background lane, only those that need a reconcile."""
        if not self._active.is_set() or not self._sweeping.acquire(blocking=False):
            return  # standby, or the previous sweep is still running

        def sweep() -> None:
            try:
                ours = sorted(
                    (s for s in services if self.services.concerns(s)), key=_creation_order
                )
                settled = self._settled(ours)
                for svc in ours:
                    if key_of(svc) not in settled:
                        self._enqueue("services", key_of(svc), background=True)
            finally:
                self._sweeping.release()

        self._spawn(sweep, "controller-resync")

    def _enqueue_ingresses_using(self, namespace: str, name: str) -> None:
        for ingress in self.caches["ingresses"].list():
            if meta(ingress).get("namespace") == namespace and name in backend_names(ingress):
                self._enqueue("ingresses", object_key(ingress))

    def _on_node(self, event_type: str, node: Obj) -> None:
        name = object_key(node)
        data = None if event_type == DELETED else node_data(node, self.settings.node_address_type)
        if self._node_data.get(name) == data and event_type != "RESYNC":
            return  # heartbeats and other changes the fleet does not care about
        if data is None:
            self._node_data.pop(name, None)
        else:
            self._node_data[name] = data
        self._enqueue("nodes", name, background=event_type == RESYNC)

    # -- serving state from the fleet ------------------------------------------------------

    def _run_serving_poll(self) -> None:
        while not self._stop.wait(self.settings.serving_poll_seconds):
            if not self.is_active():
                continue
            try:
                self.poll_serving()
            except Exception as exc:
                logger.warning(
                    "reading serving state failed",
                    extra={"event": "serving_error", "error": str(exc)},
                )

    def poll_serving(self) -> int:
        """Enqueue Services whose Serving condition lags the fleet's report; returns how many."""
        with read_transaction(self._read_sessions) as session:
            states = serving_states(session=session)
        lagging = 0
        for key, (serving, message) in states.items():
            svc = self.caches["services"].get(key)
            if svc is None or not is_ours(svc, self.settings):
                continue
            wanted = serving_condition(status_ips(svc), serving, message)
            if not condition_matches(svc, COND_SERVING, *wanted):
                self.queues["services"].add(key)
                lagging += 1
        return lagging


@contextmanager
def _collector_paused() -> Iterator[None]:
    """A bulk pass allocates tens of thousands of short-lived containers (freed by reference
    counting); cyclic collections meanwhile would only rescan the caches, many times over."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _always() -> bool:
    return True


def _creation_order(obj: Obj) -> tuple[str, str]:
    return (str(meta(obj).get("creationTimestamp") or ""), key_of(obj))


def start_in_background(
    settings: Settings, *, registry: CollectorRegistry | None = None
) -> Controller | None:
    """For ``serve``: a controller starting on its own thread (a slow or absent API server must
    not hold up the HTTP server), or None when no cluster is configured. ``registry``: the API
    app's, so one ``/metrics`` shows the controller too."""
    try:
        controller = Controller(settings, registry=registry)
    except KubeNotConfigured as exc:
        logger.info(
            "no cluster: controller not started",
            extra={"event": "controller_off", "error": str(exc)},
        )
        return None

    def run() -> None:
        try:
            controller.start()
        except Exception:
            logger.exception("controller failed to start", extra={"event": "controller_error"})

    threading.Thread(target=run, name="controller-start", daemon=True).start()
    return controller


def run_controller(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM (``lbprovider controller``)."""
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    registry = CollectorRegistry(auto_describe=False)
    server = serve_metrics(registry, settings.controller_metrics_listen)
    try:
        controller = Controller(settings, registry=registry).start()
        try:
            stop.wait()
        finally:
            controller.stop()
    finally:
        server.shutdown()
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
