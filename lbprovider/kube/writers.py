"""Every write the controller makes to Kubernetes: Service status, finalizers, Events.

Reconcilers depend on the small ``StatusWriter`` and ``EventRecorder`` Protocols, so a unit test
can hand in a recorder; the real implementations here patch through the official client. Each
write first asks the ``is_leader`` callable and raises ``NotLeader`` when it says no: a replica
that lost its Lease must not write even once more. Status goes only through the status
subresource; finalizer changes carry the resourceVersion they were computed from, so a stale
cache gets a 409 instead of dropping someone else's finalizer. Events with the same reason and
message on the same object within a window bump ``count`` instead of piling up.

This module must not decide what to write: that is the reconcilers' job.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from kubernetes import client as k8s_client

from lbprovider.kube.client import REQUEST_TIMEOUT
from lbprovider.kube.errors import KubeError, KubeNotFound, NotLeader, translate_error

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
IsLeader = Callable[[], bool]
EventType = Literal["Normal", "Warning"]

MERGE_PATCH = "application/merge-patch+json"
EVENT_MESSAGE_LIMIT = 1024


class StatusWriter(Protocol):
    """Writes to Services: status (subresource) and finalizers (metadata)."""

    def patch_service_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        *,
        resource_version: str | None = None,
        finalizers: Sequence[str] | None = None,
    ) -> Obj: ...

    def set_load_balancer_ingress(
        self, namespace: str, name: str, ingress: Sequence[Mapping[str, Any]]
    ) -> Obj: ...

    def set_service_conditions(
        self, namespace: str, name: str, conditions: Sequence[Mapping[str, Any]]
    ) -> Obj: ...

    def add_finalizer(self, service: Mapping[str, Any], finalizer: str) -> Obj: ...

    def remove_finalizer(self, service: Mapping[str, Any], finalizer: str) -> Obj: ...


class EventRecorder(Protocol):
    """Emits core/v1 Events about an object an operator will look at."""

    def record(
        self, obj: Mapping[str, Any], event_type: EventType, reason: str, message: str
    ) -> None: ...


def _require_leader(is_leader: IsLeader, action: str) -> None:
    if not is_leader():
        raise NotLeader(f"not the leader: refusing to {action}")


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


# -- conditions (pure) ----------------------------------------------------------------------------


def now_rfc3339() -> str:
    """Now as a Kubernetes ``Time`` (seconds, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    *,
    type: str,
    status: Literal["True", "False", "Unknown"],
    reason: str,
    message: str,
    observed_generation: int | None = None,
) -> list[Obj]:
    """A new conditions list with ``type`` set in place; ``lastTransitionTime`` moves only on a
    status flip, so setting the same condition twice yields an equal list (no write needed)."""
    result = [dict(condition) for condition in conditions]
    index = next((i for i, c in enumerate(result) if c.get("type") == type), None)
    previous = result[index] if index is not None else None
    flipped = previous is None or previous.get("status") != status
    new: Obj = {
        "type": type,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now_rfc3339()
        if flipped or previous is None
        else previous.get("lastTransitionTime") or now_rfc3339(),
    }
    if observed_generation is not None:
        new["observedGeneration"] = observed_generation
    if index is None:
        result.append(new)
    else:
        result[index] = new
    return result


def find_condition(obj: Mapping[str, Any], type: str) -> Mapping[str, Any] | None:
    """The condition ``type`` in ``obj.status.conditions``, or None."""
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type:
            return condition  # type: ignore[no-any-return]
    return None


# -- Services -------------------------------------------------------------------------------------


class KubeStatusWriter:
    """``StatusWriter`` through the API: merge patches on ``/status`` and on metadata."""

    def __init__(self, api: k8s_client.ApiClient, *, is_leader: IsLeader) -> None:
        # Typed as Any: with _preload_content=False the client returns the raw HTTP response.
        self._core: Any = k8s_client.CoreV1Api(api)
        self._is_leader = is_leader

    def patch_service_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        *,
        resource_version: str | None = None,
        finalizers: Sequence[str] | None = None,
    ) -> Obj:
        """Merge-patch ``status`` of a Service through its status subresource.

        ``finalizers`` (the whole list) is written in the same PATCH: the Service status
        strategy resets only spec, so one version gets both (e.g. an IP and our finalizer)."""
        action = f"patch status of service {namespace}/{name}"
        _require_leader(self._is_leader, action)
        body: Obj = {"status": dict(status)}
        metadata: Obj = {}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        if finalizers is not None:
            metadata["finalizers"] = list(finalizers) or None
        if metadata:
            body["metadata"] = metadata
        return self._patch(
            self._core.patch_namespaced_service_status, namespace, name, body, action
        )

    def set_load_balancer_ingress(
        self, namespace: str, name: str, ingress: Sequence[Mapping[str, Any]]
    ) -> Obj:
        """Replace ``status.loadBalancer.ingress`` (an empty list clears it)."""
        value = [dict(entry) for entry in ingress] or None
        return self.patch_service_status(namespace, name, {"loadBalancer": {"ingress": value}})

    def set_service_conditions(
        self, namespace: str, name: str, conditions: Sequence[Mapping[str, Any]]
    ) -> Obj:
        """Replace ``status.conditions`` (build the list with ``set_condition``)."""
        value = [dict(condition) for condition in conditions] or None
        return self.patch_service_status(namespace, name, {"conditions": value})

    def add_finalizer(self, service: Mapping[str, Any], finalizer: str) -> Obj:
        """Add ``finalizer`` unless present; 409 (``KubeConflict``) when ``service`` is stale."""
        finalizers = list(_meta(service).get("finalizers") or [])
        if finalizer in finalizers:
            return dict(service)
        return self._set_finalizers(service, [*finalizers, finalizer], f"add {finalizer}")

    def remove_finalizer(self, service: Mapping[str, Any], finalizer: str) -> Obj:
        """Remove ``finalizer`` if present; 409 (``KubeConflict``) when ``service`` is stale."""
        finalizers = list(_meta(service).get("finalizers") or [])
        if finalizer not in finalizers:
            return dict(service)
        kept = [f for f in finalizers if f != finalizer]
        return self._set_finalizers(service, kept, f"remove {finalizer}")

    def _set_finalizers(self, service: Mapping[str, Any], finalizers: list[str], what: str) -> Obj:
        meta = _meta(service)
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        action = f"{what} on service {namespace}/{name}"
        _require_leader(self._is_leader, action)
        body = {
            "metadata": {
                "resourceVersion": meta.get("resourceVersion"),
                "finalizers": finalizers or None,
            }
        }
        return self._patch(self._core.patch_namespaced_service, namespace, name, body, action)

    def _patch(self, method: Any, namespace: str, name: str, body: Obj, action: str) -> Obj:
        try:
            response = method(
                name,
                namespace,
                body,
                _content_type=MERGE_PATCH,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
            result: Obj = json.loads(response.data)
        except Exception as exc:
            raise translate_error(exc, action) from exc
        return result


# -- Events ---------------------------------------------------------------------------------------


class KubeEventRecorder:
    """``EventRecorder`` creating core/v1 Events, aggregating repeats into ``count``.

    Best effort: a failed Event is logged, never raised, except ``NotLeader``.
    """

    def __init__(
        self,
        api: k8s_client.ApiClient,
        *,
        is_leader: IsLeader,
        component: str = "lbprovider-controller",
        instance: str = "",
        window_seconds: float = 600.0,
        max_tracked: int = 4096,
    ) -> None:
        self._core: Any = k8s_client.CoreV1Api(api)
        self._is_leader = is_leader
        self._component = component
        self._instance = instance
        self._window = window_seconds
        self._max_tracked = max_tracked
        self._lock = threading.Lock()
        # dedupe key → (event namespace, event name, count, monotonic time of last write)
        self._seen: OrderedDict[tuple[str, ...], tuple[str, str, int, float]] = OrderedDict()
        self.created = 0
        self.aggregated = 0

    def record(
        self, obj: Mapping[str, Any], event_type: EventType, reason: str, message: str
    ) -> None:
        """Emit (or bump the count of) an Event about ``obj``."""
        ref = _involved_object(obj)
        _require_leader(self._is_leader, f"record event {reason} on {ref['name']}")
        message = message[:EVENT_MESSAGE_LIMIT]
        key = (ref["kind"], ref["namespace"], ref["name"], ref["uid"], event_type, reason, message)
        try:
            if not self._bump(key):
                self._create(key, ref, event_type, reason, message)
        except KubeError as exc:
            logger.warning(
                "could not record event",
                extra={
                    "event": "event_error",
                    "reason": reason,
                    "object": ref["name"],
                    "error": str(exc),
                },
            )

    def _bump(self, key: tuple[str, ...]) -> bool:
        with self._lock:
            seen = self._seen.get(key)
        if seen is None or time.monotonic() - seen[3] > self._window:
            return False
        namespace, name, count, _ = seen
        body = {"count": count + 1, "lastTimestamp": now_rfc3339()}
        try:
            response = self._core.patch_namespaced_event(
                name,
                namespace,
                body,
                _content_type=MERGE_PATCH,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
            _discard(response)
        except Exception as exc:
            error = translate_error(exc, f"update event {namespace}/{name}")
            if isinstance(error, KubeNotFound):
                return False  # the Event expired server-side: start a new one
            raise error from exc
        self._remember(key, namespace, name, count + 1)
        self.aggregated += 1
        return True

    def _create(
        self,
        key: tuple[str, ...],
        ref: Mapping[str, str],
        event_type: str,
        reason: str,
        message: str,
    ) -> None:
        namespace = ref["namespace"] or "default"
        name = f"{ref['name']}.{time.time_ns():x}"
        now = datetime.now(UTC).replace(microsecond=0)
        body = k8s_client.CoreV1Event(
            metadata=k8s_client.V1ObjectMeta(name=name, namespace=namespace),
            involved_object=k8s_client.V1ObjectReference(**{k: v or None for k, v in ref.items()}),
            type=event_type,
            reason=reason,
            message=message,
            count=1,
            first_timestamp=now,
            last_timestamp=now,
            source=k8s_client.V1EventSource(component=self._component),
            reporting_component=self._component,
            reporting_instance=self._instance or None,
        )
        try:
            response = self._core.create_namespaced_event(
                namespace, body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            )
            _discard(response)
        except Exception as exc:
            raise translate_error(exc, f"create event {namespace}/{name}") from exc
        self._remember(key, namespace, name, 1)
        self.created += 1

    def _remember(self, key: tuple[str, ...], namespace: str, name: str, count: int) -> None:
        with self._lock:
            self._seen[key] = (namespace, name, count, time.monotonic())
            self._seen.move_to_end(key)
            while len(self._seen) > self._max_tracked:
                self._seen.popitem(last=False)


def _involved_object(obj: Mapping[str, Any]) -> dict[str, str]:
    meta = _meta(obj)
    kind = str(obj.get("kind") or "")
    if not kind:
        raise ValueError("an Event needs the object's kind (cached objects carry it)")
    return {
        "kind": kind,
        "api_version": str(obj.get("apiVersion") or "v1"),
        "namespace": str(meta.get("namespace") or ""),
        "name": str(meta.get("name") or ""),
        "uid": str(meta.get("uid") or ""),
        "resource_version": str(meta.get("resourceVersion") or ""),
    }


def _discard(response: Any) -> None:
    """Read the unread body, then pool the connection: a connection pooled with its body
    unread makes the next request on it parse that body as a status line."""
    response.drain_conn()
    response.release_conn()
