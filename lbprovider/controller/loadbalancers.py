"""Reconcile one LoadBalancer Service: finalizer, allocation (DB first), status, Events.

Level-triggered and idempotent: each call reads the cached Service, asks the services layer
what it holds (one transaction), and writes to Kubernetes only what differs from the cache.
A crash between any two steps is repaired by the next call. Order matters and is fixed: the
the database before status; a new Service's finalizer goes on in the same status PATCH as its
first status (a Service deleted before that PATCH is released by key); status before finalizer
removal.

This module must not write to a Service that is not ours and that we never touched, must not
import ``kubernetes`` (writes go through ``StatusWriter`` / ``EventRecorder``) and must not run
SQL itself (the services layer does).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from lbprovider.config import Settings
from lbprovider.controller.mirror import adoption_request, service_data, service_request
from lbprovider.controller.options import Options, parse_options
from lbprovider.controller.result import DONE, REPROCESS_PENDING, Result
from lbprovider.controller.status import (
    COND_ALLOCATED,
    COND_SERVING,
    FINALIZER,
    Status,
    condition_matches,
    conditions_of,
    current_ingress,
    desired_ingress,
    has_finalizer,
    ingress_matches,
    is_deleting,
    is_load_balancer,
    is_ours,
    key_of,
    meta,
    serving_condition,
    spec,
    status_ips,
    touched_by_us,
    unsupported_ports,
    with_condition,
    without_our_conditions,
)
from lbprovider.db.session import read_only_factory, read_transaction, transaction
from lbprovider.ipam.allocator import Request
from lbprovider.kube.writers import EventRecorder, StatusWriter
from lbprovider.services.context import CONTROLLER, Actor, IPPolicy
from lbprovider.services.loadbalancers import (
    Converged,
    adopt_services,
    converge_service,
    held_service_keys,
    mark_invalid,
    retire_service,
    steady_services,
)
from lbprovider.services.records import ServiceData

logger = logging.getLogger(__name__)

Obj = dict[str, Any]


class Reader(Protocol):
    """The read side of a cache (``lbprovider.kube.cache.ObjectCache``)."""

    def get(self, key: str) -> Obj | None: ...

    def list(self) -> list[Obj]: ...


class ServiceReconciler:
    """Converges Services of our class; undoes our work on the ones that stop being ours."""

    def __init__(
        self,
        *,
        settings: Settings,
        services: Reader,
        namespaces: Reader,
        writer: StatusWriter,
        events: EventRecorder,
        sessions: sessionmaker[Session],
        policy: IPPolicy,
        actor: Actor = CONTROLLER,
        record_allocation: Callable[[str], None] = lambda _reason: None,
    ) -> None:
        """``record_allocation`` hears the reason of every allocation decision (metrics)."""
        self._settings = settings
        self._services = services
        self._namespaces = namespaces
        self._writer = writer
        self._events = events
        self._sessions = sessions
        self._read_sessions = read_only_factory(sessions)
        self._policy = policy
        self._actor = actor
        self._record_allocation = record_allocation
        self._known_lock = threading.Lock()
        self._known: set[str] = set()  # keys the database holds state for
        self.writes = 0  # Kubernetes writes (status, finalizers); Events are counted apart

    # -- which keys matter -----------------------------------------------------------------

    def remember(self, keys: set[str]) -> None:
        """Keys the database knows (loaded at start-up): their disappearance must release."""
        with self._known_lock:
            self._known |= keys

    def is_known(self, key: str) -> bool:
        with self._known_lock:
            return key in self._known

    def _set_known(self, key: str, known: bool) -> None:
        with self._known_lock:
            if known:
                self._known.add(key)
            else:
                self._known.discard(key)

    def concerns(self, svc: Mapping[str, Any]) -> bool:
        """Whether a Service event may need this reconciler at all."""
        return is_load_balancer(svc) or touched_by_us(svc) or self.is_known(key_of(svc))

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        ns = self._namespaces.get(namespace) or {}
        return {str(k): str(v) for k, v in (meta(ns).get("labels") or {}).items()}

    # -- start-up --------------------------------------------------------------------------

    def adopt_all(self) -> int:
        """Record every address our Services already show, oldest Service first, before
        anything is allocated. Returns how many Services had addresses adopted."""
        ours = sorted(
            (s for s in self._services.list() if is_ours(s, self._settings) and not is_deleting(s)),
            key=_creation_order,
        )
        with transaction(self._sessions) as session:
            # Services the database already holds addresses for have nothing to adopt.
            held = held_service_keys(session=session)
            requests: list[Request] = []
            for svc in ours:
                if key_of(svc) in held or (parse_options(svc).problems and not status_ips(svc)):
                    continue
                labels = self.namespace_labels(str(meta(svc).get("namespace")))
                request = adoption_request(svc, labels)
                if request.requested_ips:
                    requests.append(request)
            results = adopt_services(
                session=session, requests=requests, actor=self._actor, policy=self._policy
            )
        adopted = sum(1 for r in results.values() if r.decision.ok and r.changed)
        logger.info(
            "adopted addresses already in status",
            extra={"event": "adopted", "count": adopted, "candidates": len(requests)},
        )
        return adopted

    def pending_keys(self) -> list[str]:
        """Our Services still waiting for an address, oldest first."""
        waiting = [
            s
            for s in self._services.list()
            if is_ours(s, self._settings) and not is_deleting(s) and not status_ips(s)
        ]
        return [key_of(s) for s in sorted(waiting, key=_creation_order)]

    # -- reconcile -------------------------------------------------------------------------

    def reconcile(self, key: str) -> Result:
        svc = self._services.get(key)
        # Gone from the API (deleted past its finalizer, or while we were away): release.
        if svc is None:
            return self._retire_gone(key)
        # Not ours (never was, or type/class changed) or being deleted: undo what we did.
        if not is_ours(svc, self._settings) or is_deleting(svc):
            return self._let_go(svc)
        opts = parse_options(svc)
        # Bad annotations: say so on the Service, keep what it holds, allocate nothing.
        if opts.problems:
            return self._invalid(svc, opts)
        # The database step does not need the finalizer (a Service deleted before it lands is
        # released through ``is_known``); the finalizer goes on in the status PATCH that first
        # shows the result, so no version shows an IP without it.
        actor = Actor(self._actor.name)
        converged = self._converge(svc, opts, actor)
        try:
            return self._publish(svc, converged)
        finally:
            # After the status: neither the metric nor the log line is on the way to it.
            decision = converged.outcome.decision
            self._record_allocation("Satisfied" if decision.ok else decision.reason.value)
            _log_decision(svc, converged, actor)

    def close(self) -> None:
        """Nothing to stop: the reconciler runs on its callers' threads."""

    def _converge(self, svc: Obj, opts: Options, actor: Actor) -> Converged:
        key = key_of(svc)
        labels = self.namespace_labels(str(meta(svc).get("namespace")))
        data = service_data(svc, opts, labels)
        request = service_request(svc, opts, labels)
        shown = status_ips(svc)
        with transaction(self._sessions) as session:
            converged = converge_service(
                session=session,
                data=data,
                request=request,
                status_ips=shown,
                actor=actor,
                policy=self._policy,
                # A key the database holds nothing for (as far as this process knows) is a
                # new Service: its record is inserted without being looked for first.
                recorded=self.is_known(key),
            )
        self._set_known(key, True)
        return converged

    def _publish(self, svc: Obj, converged: Converged) -> Result:
        plan = _StatusPlan.of(svc, converged)
        finalize = not has_finalizer(svc)
        # Steady state: the server already says all of it; write nothing.
        if plan.unchanged and not finalize:
            return DONE
        decision = converged.outcome.decision
        conditions = with_condition(
            conditions_of(svc), COND_ALLOCATED, *plan.allocated, decision.message
        )
        conditions = with_condition(conditions, COND_SERVING, *plan.serving)
        self._write_status(svc, plan.ingress, conditions, finalize=finalize)
        self._announce(svc, converged, plan.same_ingress, plan.same_alloc)
        freed = set(status_ips(svc)) - set(converged.outcome.ips)
        return REPROCESS_PENDING if freed else DONE

    # -- start-up --------------------------------------------------------------------------

    def settled_keys(self, services: Sequence[Obj]) -> set[str]:
        """Keys of ``services`` that a reconcile would leave exactly as they are (database
        and status agree, finalizer on): checked in bulk in one read-only transaction, so the
        start-up pass queues only the others. Any doubt (bad annotations, nothing recorded,
        a decision that would write) leaves a key out: it is reconciled as usual."""
        candidates: list[tuple[Obj, ServiceData, Request]] = []
        for svc in services:
            if not is_ours(svc, self._settings) or is_deleting(svc) or not has_finalizer(svc):
                continue
            opts = parse_options(svc)
            if opts.problems:
                continue
            labels = self.namespace_labels(str(meta(svc).get("namespace")))
            candidates.append(
                (svc, service_data(svc, opts, labels), service_request(svc, opts, labels))
            )
        with read_transaction(self._read_sessions) as session:
            steady = steady_services(
                session=session,
                items=[(data, request) for _, data, request in candidates],
                policy=self._policy,
            )
        settled = set()
        for svc, _, _ in candidates:
            converged = steady.get(key_of(svc))
            if converged is not None and _StatusPlan.of(svc, converged).unchanged:
                settled.add(key_of(svc))
        with self._known_lock:
            self._known |= settled
        return settled

    def _write_status(
        self,
        svc: Obj,
        ingress: Sequence[Mapping[str, Any]],
        conditions: list[Obj],
        *,
        finalize: bool,
    ) -> None:
        """One PATCH to ``services/status``; with ``finalize`` it also adds our finalizer
        (the Service status strategy keeps metadata, so the IP and the finalizer land in one
        version). The cached resourceVersion makes a stale cache a 409, never a lost
        finalizer."""
        m = meta(svc)
        self.writes += 1
        self._writer.patch_service_status(
            str(m.get("namespace")),
            str(m.get("name")),
            {"loadBalancer": {"ingress": list(ingress) or None}, "conditions": conditions or None},
            resource_version=str(m.get("resourceVersion") or "") or None,
            finalizers=[*(m.get("finalizers") or []), FINALIZER] if finalize else None,
        )

    def _announce(
        self, svc: Obj, converged: Converged, same_ingress: bool, same_alloc: bool
    ) -> None:
        decision = converged.outcome.decision
        before, after = set(status_ips(svc)), set(converged.outcome.ips)
        if after - before:
            self._events.record(svc, "Normal", "IPAllocated", _allocated_message(converged))
        if before - after:
            released = ", ".join(sorted(before - after))
            self._events.record(svc, "Normal", "IPReleased", f"released {released}")
        if not decision.ok and not same_alloc:
            self._events.record(
                svc, "Warning", "AllocationFailed", f"{decision.reason.value}: {decision.message}"
            )
        unsupported = unsupported_ports(svc)
        if unsupported and after and not same_ingress:
            self._events.record(
                svc,
                "Warning",
                "UnsupportedProtocol",
                f"ports {', '.join(unsupported)} are not served yet (the fleet serves TCP only)",
            )

    def _invalid(self, svc: Obj, opts: Options) -> Result:
        message = "; ".join(opts.problems)
        m = meta(svc)
        namespace, name = str(m.get("namespace")), str(m.get("name"))
        with transaction(self._sessions) as session:
            mark_invalid(session=session, namespace=namespace, name=name, message=message)
        self._record_allocation("InvalidRequest")
        if condition_matches(svc, COND_ALLOCATED, "False", "InvalidRequest", message):
            return DONE
        conditions = with_condition(
            conditions_of(svc), COND_ALLOCATED, "False", "InvalidRequest", message
        )
        self.writes += 1
        self._writer.patch_service_status(
            namespace,
            name,
            {"conditions": conditions},
            resource_version=str(m.get("resourceVersion") or "") or None,
        )
        self._events.record(svc, "Warning", "AnnotationInvalid", message)
        logger.warning(
            "invalid annotations",
            extra={"event": "annotation_invalid", "service": key_of(svc), "error": message},
        )
        return DONE

    # -- letting go ------------------------------------------------------------------------

    def _retire_gone(self, key: str) -> Result:
        if not self.is_known(key):
            return DONE
        released = self._retire(key, "service deleted")
        return REPROCESS_PENDING if released else DONE

    def _retire(self, key: str, why: str) -> list[str]:
        namespace, _, name = key.partition("/")
        with transaction(self._sessions) as session:
            released = retire_service(
                session=session,
                namespace=namespace,
                name=name,
                actor=Actor(self._actor.name),
                reason=why,
            )
        self._set_known(key, False)
        if released:
            logger.info(
                "released",
                extra={
                    "event": "released",
                    "service": key,
                    "ip": ",".join(released),
                    "reason": why,
                },
            )
        return released

    def _let_go(self, svc: Obj) -> Result:
        key = key_of(svc)
        touched = touched_by_us(svc)
        # Someone else's Service we never wrote to and hold nothing for: leave it alone.
        if not touched and not self.is_known(key):
            return DONE
        released = self._retire(key, _why_not_ours(svc, self._settings))
        if touched:
            svc = self._clear_status(svc, released)
        # Last: once the finalizer is gone the API server may delete the Service.
        if has_finalizer(svc):
            self.writes += 1
            self._writer.remove_finalizer(svc, FINALIZER)
        return REPROCESS_PENDING if released else DONE

    def _clear_status(self, svc: Obj, released: list[str]) -> Obj:
        shown = status_ips(svc)
        kept_conditions = without_our_conditions(svc)
        if not current_ingress(svc) and len(kept_conditions) == len(conditions_of(svc)):
            return svc
        m = meta(svc)
        self.writes += 1
        updated = self._writer.patch_service_status(
            str(m.get("namespace")),
            str(m.get("name")),
            {"loadBalancer": {"ingress": None}, "conditions": kept_conditions or None},
            resource_version=str(m.get("resourceVersion") or "") or None,
        )
        gone = sorted(set(released) | set(shown))
        if gone:
            self._events.record(
                svc,
                "Normal",
                "IPReleased",
                f"released {', '.join(gone)}: {_why_not_ours(svc, self._settings)}",
            )
        return updated


@dataclass(frozen=True)
class _StatusPlan:
    """What a Service's status should say after ``converged``, and what already does."""

    ingress: list[Obj]
    allocated: tuple[Status, str]
    serving: tuple[Status, str, str]
    same_ingress: bool
    same_alloc: bool
    same_serving: bool

    @property
    def unchanged(self) -> bool:
        return self.same_ingress and self.same_alloc and self.same_serving

    @classmethod
    def of(cls, svc: Obj, converged: Converged) -> _StatusPlan:
        ips = converged.outcome.ips
        decision = converged.outcome.decision
        allocated: tuple[Status, str] = (
            ("True", "Satisfied") if decision.ok else ("False", decision.reason.value)
        )
        serving = serving_condition(ips, converged.serving, converged.serving_message)
        desired = desired_ingress(svc, ips)
        return cls(
            ingress=desired,
            allocated=allocated,
            serving=serving,
            same_ingress=ingress_matches(current_ingress(svc), desired),
            same_alloc=condition_matches(svc, COND_ALLOCATED, *allocated, decision.message),
            same_serving=condition_matches(svc, COND_SERVING, *serving),
        )


def _creation_order(obj: Mapping[str, Any]) -> tuple[str, str]:
    return (str(meta(obj).get("creationTimestamp") or ""), key_of(obj))


def _why_not_ours(svc: Mapping[str, Any], settings: Settings) -> str:
    if is_deleting(svc):
        return "service deleted"
    if not is_load_balancer(svc):
        return f"type changed to {spec(svc).get('type') or 'ClusterIP'}"
    cls = spec(svc).get("loadBalancerClass")
    return f"loadBalancerClass changed to {cls!r}" if cls else "class-less Services not handled"


def _allocated_message(converged: Converged) -> str:
    decision = converged.outcome.decision
    if decision.ok:
        return decision.message
    return f"keeps {', '.join(converged.outcome.ips)}"


def _log_decision(svc: Mapping[str, Any], converged: Converged, actor: Actor) -> None:
    outcome = converged.outcome
    if not outcome.changed and outcome.decision.ok:
        return
    level = logging.INFO if outcome.decision.ok else logging.WARNING
    logger.log(
        level,
        "allocation decided",
        extra={
            "event": "allocation",
            "service": key_of(svc),
            "ip": ",".join(outcome.ips),
            "reason": outcome.reason.value,
            "request_id": actor.request_id,
            "error": "" if outcome.decision.ok else outcome.decision.message,
        },
    )
