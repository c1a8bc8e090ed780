"""List+watch caches: the controller's in-memory view of one kind of Kubernetes object.

Each ``ObjectCache`` lists a kind once, then watches from the list's resourceVersion (with
bookmarks), resumes from the last seen resourceVersion when a stream drops, relists when the
server answers 410 Gone, and re-delivers every object on a periodic resync so a missed event
heals by itself. Objects are plain dicts decoded straight from the JSON (no client models: ten
thousand Services must stay cheap). Handlers see every event in order and one at a time: a
watch event is handed to them on the watch thread itself when nothing is queued before it and
no delivery is running (a new Service reaches the work queue without a thread hand-off), else
it waits in order for the cache's dispatch thread, which also runs the periodic resync and
delivers the lists.

This module reads only; it must not write to Kubernetes or decide anything about the objects.
"""

from __future__ import annotations

import builtins
import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s_client

from lbprovider.config import Settings
from lbprovider.kube.client import REQUEST_TIMEOUT
from lbprovider.kube.errors import KubeError, KubeGone, error_from_status, translate_error

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
ListFunc = Callable[..., Any]
Handler = Callable[[str, Obj], None]

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"
RESYNC = "RESYNC"

LIST_PAGE_SIZE = 500
WATCH_TIMEOUT_SECONDS = 300
_SYNCED = object()


def object_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` for namespaced objects, ``name`` for cluster-scoped ones."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else str(meta["name"])


def resource_version(obj: Mapping[str, Any]) -> str:
    """The object's resourceVersion ("" when absent)."""
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


@dataclass
class _Event:
    type: str
    obj: Obj


class ObjectCache:
    """An informer-like cache for one kind, fed by ``list_func`` (a ``list_*`` client method)."""

    def __init__(
        self,
        name: str,
        list_func: ListFunc,
        *,
        resync_seconds: float | None = 300.0,
        label_selector: str | None = None,
        field_selector: str | None = None,
        watch_timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
        retry_base_seconds: float = 0.2,
        retry_max_seconds: float = 30.0,
    ) -> None:
        self.name = name
        self._list_func = list_func
        self._resync_seconds = resync_seconds
        self._selectors = {
            k: v
            for k, v in (("label_selector", label_selector), ("field_selector", field_selector))
            if v
        }
        self._watch_timeout = watch_timeout_seconds
        self._retry_base = retry_base_seconds
        self._retry_max = retry_max_seconds
        self._store: dict[str, Obj] = {}
        self._lock = threading.Lock()
        self._handlers: list[Handler] = []
        self._resync_handlers: list[Callable[[builtins.list[Obj]], None]] = []
        self._events: queue.Queue[_Event | object] = queue.Queue()
        # Delivery: ``_delivering`` is held while handlers run (on whichever thread);
        # ``_queued`` counts the events waiting in ``_events`` (under ``_order``).
        self._delivering = threading.Lock()
        self._order = threading.Lock()
        self._queued = 0
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._response: Any = None
        self._threads: list[threading.Thread] = []
        self._listed_once = False
        self.resource_version = ""
        # Counters read by metrics: streams reopened after the first, and lists after the first.
        self.watch_restarts = 0
        self.relists = 0
        self.resyncs = 0

    # -- reading -------------------------------------------------------------------------------

    def get(self, key: str) -> Obj | None:
        """The cached object under ``namespace/name`` (or ``name``), or None."""
        with self._lock:
            return self._store.get(key)

    def list(self) -> list[Obj]:
        """A snapshot of every cached object."""
        with self._lock:
            return builtins.list(self._store.values())

    def keys(self) -> builtins.list[str]:
        """A snapshot of every cached key."""
        with self._lock:
            return builtins.list(self._store)

    def __len__(self) -> int:
        with self._lock:
            return len(self._store)

    def has_synced(self) -> bool:
        """True once the first list is stored and every handler has seen it."""
        return self._synced.is_set()

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        """Block until ``has_synced()`` or ``timeout``; returns ``has_synced()``."""
        return self._synced.wait(timeout)

    # -- lifecycle -----------------------------------------------------------------------------

    def add_handler(self, handler: Handler) -> None:
        """Call ``handler(event_type, obj)`` for every change; add before ``start()``."""
        self._handlers.append(handler)

    def add_resync_handler(self, handler: Callable[[builtins.list[Obj]], None]) -> None:
        """Call ``handler(objects)`` once per periodic resync, after every object's RESYNC
        event, with the snapshot those events came from (for a check done in bulk)."""
        self._resync_handlers.append(handler)

    def start(self) -> None:
        """Start the list+watch and dispatch threads."""
        for target, role in ((self._run_watch, "watch"), (self._run_dispatch, "dispatch")):
            thread = threading.Thread(target=target, name=f"cache-{self.name}-{role}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads and close the open watch stream."""
        self._stop.set()
        self._events.put(_SYNCED)  # wake the dispatcher
        response = self._response
        if response is not None:
            _shutdown_response(response)
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    # -- list and watch ------------------------------------------------------------------------

    def _run_watch(self) -> None:
        need_list = True
        failures = 0
        first_watch = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self._relist()
                    need_list = False
                if not first_watch:
                    self.watch_restarts += 1
                first_watch = False
                opened = time.monotonic()
                self._watch_once()
                failures = 0
                if time.monotonic() - opened < 1.0:
                    # A stream that ends at once must not turn into a busy loop on the server.
                    self._stop.wait(self._retry_base)
            except KubeGone as exc:
                logger.info(
                    "resourceVersion expired, relisting",
                    extra={"event": "cache_relist", "cache": self.name, "error": str(exc)},
                )
                need_list = True
            except Exception as exc:
                if self._stop.is_set():
                    return
                failures += 1
                self._log_failure(exc, failures)
                self._stop.wait(self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        delay: float = min(self._retry_max, self._retry_base * 2 ** (failures - 1))
        return delay * random.uniform(0.8, 1.2)

    def _log_failure(self, exc: BaseException, failures: int) -> None:
        error = translate_error(exc, f"watch {self.name}")
        logger.warning(
            "list/watch failed, retrying",
            extra={
                "event": "cache_error",
                "cache": self.name,
                "error": str(error),
                "failures": failures,
            },
        )

    def _relist(self) -> None:
        items, rv = self._list_all()
        fresh = {object_key(item): item for item in items}
        with self._lock:
            old = self._store
            self._store = fresh
            self.resource_version = rv
        for key, obj in fresh.items():
            previous = old.get(key)
            if previous is None:
                self._emit(_Event(ADDED, obj))
            elif resource_version(previous) != resource_version(obj):
                self._emit(_Event(MODIFIED, obj))
        for key, obj in old.items():
            if key not in fresh:
                self._emit(_Event(DELETED, obj))
        if self._listed_once:
            self.relists += 1
        else:
            self._listed_once = True
            self._events.put(_SYNCED)
        logger.debug(
            "listed", extra={"event": "cache_list", "cache": self.name, "count": len(fresh)}
        )

    def _list_all(self) -> tuple[builtins.list[Obj], str]:
        items: builtins.list[Obj] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": LIST_PAGE_SIZE, **self._selectors}
            if token:
                kwargs["_continue"] = token
            page = self._call_list(**kwargs)
            kind, api_version = _item_kind(page)
            for item in page.get("items") or []:
                item.setdefault("kind", kind)
                item.setdefault("apiVersion", api_version)
                items.append(item)
            meta = page.get("metadata") or {}
            token = meta.get("continue") or None
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    def _call_list(self, **kwargs: Any) -> Obj:
        try:
            response = self._list_func(
                _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs
            )
            decoded: Obj = json.loads(response.data)
        except Exception as exc:
            raise translate_error(exc, f"list {self.name}") from exc
        return decoded

    def _watch_once(self) -> None:
        timeout = self._watch_timeout + random.randint(0, max(1, self._watch_timeout // 5))
        try:
            response = self._list_func(
                watch=True,
                resource_version=self.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout,
                _preload_content=False,
                _request_timeout=(REQUEST_TIMEOUT[0], timeout + 30),
                **self._selectors,
            )
        except Exception as exc:
            raise translate_error(exc, f"watch {self.name}") from exc
        self._response = response
        if self._stop.is_set():  # stop() ran before the stream was registered
            response.release_conn()
            return
        try:
            for line in _iter_lines(response):
                if self._stop.is_set():
                    return
                self._apply_watch_event(json.loads(line))
        finally:
            self._response = None
            response.release_conn()

    def _apply_watch_event(self, event: Mapping[str, Any]) -> None:
        event_type = event.get("type")
        obj: Obj = event.get("object") or {}
        if event_type == "ERROR":
            raise error_from_status(obj, f"watch {self.name}")
        rv = resource_version(obj)
        if event_type == "BOOKMARK":
            self.resource_version = rv or self.resource_version
            return
        if event_type not in (ADDED, MODIFIED, DELETED):
            logger.warning(
                "unknown watch event",
                extra={"event": "cache_odd_event", "cache": self.name, "type": str(event_type)},
            )
            return
        key = object_key(obj)
        with self._lock:
            if event_type == DELETED:
                self._store.pop(key, None)
            else:
                self._store[key] = obj
            self.resource_version = rv or self.resource_version
        self._emit(_Event(str(event_type), obj))

    # -- dispatch ------------------------------------------------------------------------------

    def _emit(self, event: _Event) -> None:
        """Hand ``event`` to the handlers now (on this thread) when nothing is queued before it
        and no delivery is running; else queue it for the dispatch thread, in order. Before
        the first list is delivered everything is queued (``has_synced`` follows it)."""
        with self._order:
            inline = (
                not self._queued
                and self._synced.is_set()
                and self._delivering.acquire(blocking=False)
            )
            if not inline:
                self._queued += 1
                self._events.put(event)
                return
        try:
            self._deliver_each(event.type, event.obj)
        finally:
            self._delivering.release()

    def _run_dispatch(self) -> None:
        next_resync = self._next_resync()
        while not self._stop.is_set():
            wait = None if next_resync is None else max(0.0, next_resync - time.monotonic())
            try:
                item = self._events.get(timeout=wait)
            except queue.Empty:
                self._resync()
                next_resync = self._next_resync()
                continue
            if self._stop.is_set():
                return
            if item is _SYNCED:
                self._synced.set()
            elif isinstance(item, _Event):
                try:
                    self._deliver(item.type, item.obj)
                finally:
                    with self._order:
                        self._queued -= 1

    def _next_resync(self) -> float | None:
        if not self._resync_seconds:
            return None
        return time.monotonic() + self._resync_seconds

    def _resync(self) -> None:
        if not self._synced.is_set():
            return
        self.resyncs += 1
        # One delivery for the whole sweep: a watch event seen meanwhile waits in the queue
        # and comes after it, as before (no RESYNC of an older object after a newer event).
        with self._delivering:
            snapshot = self.list()
            for obj in snapshot:
                self._deliver_each(RESYNC, obj)
            for handler in self._resync_handlers:
                try:
                    handler(snapshot)
                except Exception:
                    logger.exception(
                        "cache resync handler failed",
                        extra={"event": "cache_handler_error", "cache": self.name},
                    )

    def _deliver(self, event_type: str, obj: Obj) -> None:
        """Run the handlers for one event (dispatch thread): one delivery at a time."""
        with self._delivering:
            self._deliver_each(event_type, obj)

    def _deliver_each(self, event_type: str, obj: Obj) -> None:
        for handler in self._handlers:
            try:
                handler(event_type, obj)
            except Exception:
                logger.exception(
                    "cache handler failed",
                    extra={
                        "event": "cache_handler_error",
                        "cache": self.name,
                        "key": object_key(obj),
                    },
                )


def _item_kind(page: Mapping[str, Any]) -> tuple[str, str]:
    kind = str(page.get("kind") or "")
    return kind.removesuffix("List"), str(page.get("apiVersion") or "")


def _iter_lines(response: Any) -> Iterator[bytes]:
    buffer = bytearray()
    for chunk in response.stream(amt=None, decode_content=True):
        buffer.extend(chunk)
        start = 0
        end = buffer.find(b"\n", start)
        while end != -1:
            line = bytes(buffer[start:end])
            if line.strip():
                yield line
            start = end + 1
            end = buffer.find(b"\n", start)
        del buffer[:start]
    if bytes(buffer).strip():
        yield bytes(buffer)


def _shutdown_response(response: Any) -> None:
    try:
        response.shutdown()
    except Exception as exc:  # the stream may already be closed; stopping must not fail
        logger.debug("closing watch stream", extra={"event": "cache_close", "error": str(exc)})


# -- the kinds the controller watches -------------------------------------------------------------

KINDS: dict[str, Callable[[k8s_client.ApiClient], ListFunc]] = {
    "services": lambda api: k8s_client.CoreV1Api(api).list_service_for_all_namespaces,
    "nodes": lambda api: k8s_client.CoreV1Api(api).list_node,
    "namespaces": lambda api: k8s_client.CoreV1Api(api).list_namespace,
    "ingresses": lambda api: k8s_client.NetworkingV1Api(api).list_ingress_for_all_namespaces,
    "ingressclasses": lambda api: k8s_client.NetworkingV1Api(api).list_ingress_class,
    "endpointslices": (
        lambda api: k8s_client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces
    ),
}


def make_cache(
    kind: str,
    api: k8s_client.ApiClient,
    settings: Settings,
    *,
    label_selector: str | None = None,
    field_selector: str | None = None,
) -> ObjectCache:
    """A cache for one of ``KINDS`` with the resync period from settings."""
    if kind not in KINDS:
        raise KubeError(f"no cache for kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    return ObjectCache(
        kind,
        KINDS[kind](api),
        resync_seconds=settings.resync_seconds,
        label_selector=label_selector,
        field_selector=field_selector,
    )
