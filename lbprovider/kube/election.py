"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does it.

Only the leader writes to Kubernetes. Replicas race to create or update the Lease under
optimistic concurrency (the resourceVersion we read must still be current); the holder renews
it every retry period. Expiry is judged on this process's monotonic clock from when the Lease
record last changed, never by comparing wall clocks across machines. A leader that has not
renewed within the renew deadline stops being leader at once (``is_leader()`` turns false by
itself, even if the elector thread is stuck), so it stops writing before a standby may take over.

This module must not write anything but the Lease, and must not decide what a leader does.
"""

from __future__ import annotations

import json
import logging
import math
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s_client

from lbprovider.config import Settings
from lbprovider.kube.errors import KubeConflict, KubeError, KubeNotFound, translate_error

logger = logging.getLogger(__name__)

Callback = Callable[[], None]


def default_identity() -> str:
    """``hostname_random``: unique per process even when two run on one host."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _parse_time(value: Any) -> datetime | None:
    """A Kubernetes Time/MicroTime string as an aware datetime (None when absent or odd)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class LeaderElector:
    """Campaigns for one Lease on a thread; ``is_leader()`` is the guard every writer checks."""

    def __init__(
        self,
        api: k8s_client.ApiClient,
        *,
        name: str,
        namespace: str,
        identity: str | None = None,
        lease_duration_seconds: float = 15.0,
        renew_deadline_seconds: float = 10.0,
        retry_period_seconds: float = 2.0,
        on_started_leading: Callback | None = None,
        on_stopped_leading: Callback | None = None,
    ) -> None:
        if not retry_period_seconds < renew_deadline_seconds < lease_duration_seconds:
            raise ValueError("need retry period < renew deadline < lease duration")
        # Typed as Any: with _preload_content=False the client returns the raw HTTP response.
        self._coordination: Any = k8s_client.CoordinationV1Api(api)
        self.name = name
        self.namespace = namespace
        self.identity = identity or default_identity()
        self._lease_duration = lease_duration_seconds
        self._renew_deadline = renew_deadline_seconds
        self._retry_period = retry_period_seconds
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._leading = False
        self._renewed_at = 0.0  # monotonic time our last successful write was sent
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._leading_changed = threading.Condition(self._lock)
        # Counters read by metrics.
        self.transitions = 0

    @classmethod
    def from_settings(
        cls,
        api: k8s_client.ApiClient,
        settings: Settings,
        *,
        identity: str | None = None,
        on_started_leading: Callback | None = None,
        on_stopped_leading: Callback | None = None,
    ) -> LeaderElector:
        """An elector with the Lease name, namespace and timings from settings."""
        return cls(
            api,
            name=settings.lease_name,
            namespace=settings.lease_namespace,
            identity=identity,
            lease_duration_seconds=settings.lease_duration_seconds,
            renew_deadline_seconds=settings.renew_deadline_seconds,
            retry_period_seconds=settings.retry_period_seconds,
            on_started_leading=on_started_leading,
            on_stopped_leading=on_stopped_leading,
        )

    # -- the guard -----------------------------------------------------------------------------

    def is_leader(self) -> bool:
        """True only while we hold the Lease and renewed it within the renew deadline."""
        with self._lock:
            return self._leading and time.monotonic() - self._renewed_at < self._renew_deadline

    def wait_for_leadership(self, timeout: float | None = None) -> bool:
        """Block until we lead or ``timeout``; returns ``is_leader()``."""
        with self._leading_changed:
            self._leading_changed.wait_for(lambda: self._leading, timeout)
        return self.is_leader()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Campaign (and, once leading, renew) on a background thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, *, release: bool = True, timeout: float = 5.0) -> None:
        """Stop campaigning; when leading, hand the Lease back so a standby takes over now."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._leading:
            # Stop writing first, then hand the Lease over: never two writers at once.
            self._step_down("stopped")
            if release:
                self._release()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._leading:
                self._renew_round()
            else:
                self._campaign_round()
            jitter = random.uniform(0, 0.2) if not self._leading else 0.0
            self._stop.wait(self._retry_period * (1 + jitter))

    def _campaign_round(self) -> None:
        if self._try_acquire_or_renew():
            self._step_up()

    def _renew_round(self) -> None:
        if self._try_acquire_or_renew():
            return
        with self._lock:
            lost = self._observed is not None and self._observed[0] != self.identity
            overdue = time.monotonic() - self._renewed_at >= self._renew_deadline
        if lost:
            self._step_down("lease taken by " + (self._observed or ("?", ""))[0])
        elif overdue:
            self._step_down("could not renew within the renew deadline")

    def _step_up(self) -> None:
        with self._lock:
            self._leading = True
            self.transitions += 1
            self._leading_changed.notify_all()
        logger.info(
            "became leader",
            extra={
                "event": "leader_started",
                "lease": self._lease_ref(),
                "identity": self.identity,
            },
        )
        self._call(self._on_started)

    def _step_down(self, why: str) -> None:
        with self._lock:
            if not self._leading:
                return
            self._leading = False
            self._leading_changed.notify_all()
        logger.warning(
            "stopped leading",
            extra={
                "event": "leader_stopped",
                "lease": self._lease_ref(),
                "identity": self.identity,
                "error": why,
            },
        )
        self._call(self._on_stopped)

    def _call(self, callback: Callback | None) -> None:
        if callback is None:
            return
        try:
            callback()
        except Exception:
            logger.exception("leader callback failed", extra={"event": "leader_callback_error"})

    def _lease_ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    # -- the Lease -----------------------------------------------------------------------------

    def _try_acquire_or_renew(self) -> bool:
        sent_at = time.monotonic()
        try:
            lease = self._read_lease()
            if lease is None:
                self._create_lease()
            else:
                if not self._may_write(lease):
                    return False
                self._replace_lease(lease)
        except KubeConflict:
            return False  # someone else wrote first; look again next round
        except KubeError as exc:
            logger.warning(
                "lease request failed",
                extra={"event": "lease_error", "lease": self._lease_ref(), "error": str(exc)},
            )
            return False
        with self._lock:
            self._renewed_at = sent_at
        return True

    def _may_write(self, lease: Mapping[str, Any]) -> bool:
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        self._observe(holder, str(spec.get("renewTime") or ""))
        if not holder or holder == self.identity:
            return True
        with self._lock:
            return time.monotonic() - self._observed_at > self._lease_duration

    def _observe(self, holder: str, renew_time: str) -> None:
        with self._lock:
            if self._observed != (holder, renew_time):
                self._observed = (holder, renew_time)
                self._observed_at = time.monotonic()

    def _spec(self, previous: Mapping[str, Any] | None) -> Any:
        now = datetime.now(UTC)
        prev = previous or {}
        keeps_holder = prev.get("holderIdentity") == self.identity
        transitions = int(prev.get("leaseTransitions") or 0)
        if previous is not None and not keeps_holder:
            transitions += 1
        acquired = _parse_time(prev.get("acquireTime")) if keeps_holder else None
        return k8s_client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=max(1, math.ceil(self._lease_duration)),
            acquire_time=acquired or now,
            renew_time=now,
            lease_transitions=transitions,
        )

    def _timeout(self) -> tuple[float, float]:
        return (self._renew_deadline, self._renew_deadline)

    def _read_lease(self) -> dict[str, Any] | None:
        try:
            response = self._coordination.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False, _request_timeout=self._timeout()
            )
            lease: dict[str, Any] = json.loads(response.data)
        except Exception as exc:
            error = translate_error(exc, f"read lease {self._lease_ref()}")
            if isinstance(error, KubeNotFound):
                return None
            raise error from exc
        return lease

    def _create_lease(self) -> None:
        body = k8s_client.V1Lease(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            metadata=k8s_client.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=self._spec(None),
        )
        try:
            response = self._coordination.create_namespaced_lease(
                self.namespace, body, _preload_content=False, _request_timeout=self._timeout()
            )
            self._observe_lease(json.loads(response.data))
        except Exception as exc:
            raise translate_error(exc, f"create lease {self._lease_ref()}") from exc

    def _replace_lease(self, lease: Mapping[str, Any], spec: Any = None) -> None:
        meta = lease.get("metadata") or {}
        body = k8s_client.V1Lease(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            metadata=k8s_client.V1ObjectMeta(
                name=self.name,
                namespace=self.namespace,
                resource_version=meta.get("resourceVersion"),
                labels=meta.get("labels"),
                annotations=meta.get("annotations"),
            ),
            spec=spec if spec is not None else self._spec(lease.get("spec")),
        )
        try:
            response = self._coordination.replace_namespaced_lease(
                self.name,
                self.namespace,
                body,
                _preload_content=False,
                _request_timeout=self._timeout(),
            )
            self._observe_lease(json.loads(response.data))
        except Exception as exc:
            raise translate_error(exc, f"update lease {self._lease_ref()}") from exc

    def _observe_lease(self, lease: Mapping[str, Any]) -> None:
        spec = lease.get("spec") or {}
        self._observe(str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or ""))

    def _release(self) -> None:
        """Empty holderIdentity so a standby need not wait out the lease duration."""
        try:
            lease = self._read_lease()
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            previous = lease.get("spec") or {}
            now = datetime.now(UTC)
            spec = k8s_client.V1LeaseSpec(
                holder_identity="",
                lease_duration_seconds=1,
                acquire_time=now,
                renew_time=now,
                lease_transitions=int(previous.get("leaseTransitions") or 0),
            )
            self._replace_lease(lease, spec)
        except KubeError as exc:
            logger.warning(
                "could not release the lease",
                extra={
                    "event": "lease_release_error",
                    "lease": self._lease_ref(),
                    "error": str(exc),
                },
            )
