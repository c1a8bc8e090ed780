"""The lab API server's storage: objects, one resourceVersion counter, and the event log.

This plays etcd plus the generic registry store: every successful write bumps one cluster-wide
resourceVersion and appends exactly one watch event, so a watch from RV n replays the events
after n in order, and an RV that has fallen out of the retained window is reported as expired
(the client must relist). Expiry is judged per kind, as kube-apiserver's watch cache is per
resource: a watch of one kind expires only when an event of that kind it has not seen was
compacted, never because other kinds churned through the window. Writes run the kind's
`Strategy`, enforce optimistic concurrency, keep `.status` and the rest of the object apart,
handle finalizers and `deletionTimestamp`, bump `generation` on spec changes, and terminate
namespaces. Stored objects are never mutated in place, so readers may serialize them without
copying. It must not know about HTTP.
"""

from __future__ import annotations

import copy
import logging
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lbprovider.lab import errors
from lbprovider.lab.kinds import Kind, find_kind
from lbprovider.lab.strategy import Strategy
from lbprovider.lab.validation import metadata_errors

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
Key = tuple[str, str]  # (namespace or "", name)

NAMESPACES = find_kind("", "v1", "namespaces")


@dataclass
class WatchEvent:
    rv: int
    type: str  # ADDED, MODIFIED or DELETED
    storage: str
    obj: JSON
    old: JSON | None
    encoded: dict[str, bytes] = field(default_factory=dict)  # per-representation cache


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _generated_name(prefix: str) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return prefix + "".join(secrets.choice(alphabet) for _ in range(5))


def _without(obj: JSON, *keys: str) -> JSON:
    return {k: v for k, v in obj.items() if k not in keys}


class Store:
    """All objects of the lab cluster; every method is thread-safe."""

    def __init__(self, strategies: dict[str, Strategy], window: int) -> None:
        self._lock = threading.RLock()
        # One condition per storage key on the lock: a commit wakes only the watches of its
        # kind (kube-apiserver's watch cache is per resource too), not every watch open.
        self._kind_changed: dict[str, threading.Condition] = {}
        self._kind_rv: dict[str, int] = {}
        self._strategies = strategies
        self._window = window
        self._objects: dict[str, dict[Key, JSON]] = {}
        self._rv = 0
        self._log: list[WatchEvent] = []
        self._compacted = 0  # events with rv <= this are gone from the log
        # storage key -> rv of the newest event of that kind compacted away
        self._compacted_kind: dict[str, int] = {}

    # --- reads --------------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def get(self, kind: Kind, namespace: str, name: str) -> JSON:
        with self._lock:
            return self._get(kind, namespace, name)

    def list_objects(
        self, kind: Kind, namespace: str, match: Callable[[JSON], bool], *, name: str | None = None
    ) -> tuple[list[JSON], int]:
        """Objects that ``match``, sorted by key, and the current RV. ``name``: only that object
        can match (a ``metadata.name`` selector), so it is looked up instead of scanned for
        when its key is known (a namespaced kind needs ``namespace``)."""
        with self._lock:
            table = self._objects.get(kind.storage_key, {})
            if name is not None and (namespace or not kind.namespaced):
                found = table.get((namespace, name))
                return ([found] if found is not None and match(found) else []), self._rv
            if namespace:
                items = [o for (ns, _), o in table.items() if ns == namespace and match(o)]
            else:
                items = [o for o in table.values() if match(o)]
            rv = self._rv
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return items, rv

    def events_after(self, rv: int, storage: str) -> list[WatchEvent] | None:
        """Events newer than `rv` for a watch of `storage`, or None when an event of that kind
        newer than `rv` was already compacted away. The result may also hold other kinds'
        events (from the oldest one retained), which the caller skips."""
        with self._lock:
            if self._compacted_kind.get(storage, 0) > rv:
                return None
            start = max(rv, self._compacted) - self._compacted
            return self._log[start:] if start < len(self._log) else []

    @property
    def compacted(self) -> int:
        with self._lock:
            return self._compacted

    def wait_beyond(self, rv: int, timeout: float, stop: Callable[[], bool], storage: str) -> None:
        """Block until an event of `storage` newer than `rv` exists, `stop()` is true, or
        `timeout` passes."""
        with self._lock:
            condition = self._kind_changed.get(storage)
            if condition is None:
                condition = self._kind_changed[storage] = threading.Condition(self._lock)
            condition.wait_for(
                lambda: self._kind_rv.get(storage, 0) > rv or stop(), timeout=timeout
            )

    def wake_all(self) -> None:
        with self._lock:
            for condition in self._kind_changed.values():
                condition.notify_all()

    def seed(self, kind: Kind, obj: JSON) -> JSON:
        """Create a built-in object (the default namespaces, the `kubernetes` Service)."""
        namespace = str(obj.get("metadata", {}).get("namespace", ""))
        return self.create(kind, namespace, obj)

    def _get(self, kind: Kind, namespace: str, name: str) -> JSON:
        obj = self._objects.get(kind.storage_key, {}).get((namespace, name))
        if obj is None:
            raise errors.not_found(kind.group, kind.plural, name)
        return obj

    def _strategy(self, kind: Kind) -> Strategy:
        return self._strategies.get(kind.storage_key) or Strategy()

    # --- commit -------------------------------------------------------------------------------

    def _commit(self, kind_type: str, storage: str, obj: JSON, old: JSON | None) -> JSON:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if kind_type == "DELETED":
            del self._objects[storage][key]
        else:
            self._objects.setdefault(storage, {})[key] = obj
        self._log.append(WatchEvent(self._rv, kind_type, storage, obj, old))
        if len(self._log) > 2 * self._window:
            dropped = len(self._log) - self._window
            for event in self._log[:dropped]:
                self._compacted_kind[event.storage] = event.rv
            self._log = self._log[dropped:]
            self._compacted += dropped
        self._kind_rv[storage] = self._rv
        condition = self._kind_changed.get(storage)
        if condition is not None:
            condition.notify_all()
        return obj

    # --- create -------------------------------------------------------------------------------

    def create(self, kind: Kind, namespace: str, obj: JSON) -> JSON:
        with self._lock:
            meta = self._new_metadata(kind, namespace, obj)
            if kind.namespaced:
                self._require_open_namespace(kind, namespace, meta["name"])
            if (namespace, meta["name"]) in self._objects.get(kind.storage_key, {}):
                raise errors.already_exists(kind.group, kind.plural, meta["name"])
            strategy = self._strategy(kind)
            if kind.has_status and not strategy.status_on_create:
                obj.pop("status", None)
            strategy.prepare_create(obj)
            self._raise_invalid(
                kind, obj, metadata_errors(meta, kind.name_rule) + strategy.validate(obj, None)
            )
            strategy.allocate(obj, None)
            return self._commit("ADDED", kind.storage_key, obj, None)

    def _new_metadata(self, kind: Kind, namespace: str, obj: JSON) -> JSON:
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            meta = obj["metadata"] = {}
        if kind.namespaced and meta.get("namespace", namespace) != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the "
                "namespace sent on the request"
            )
        if meta.get("resourceVersion"):
            raise errors.ApiError(
                500,
                "InternalError",
                "Internal error occurred: "
                "resourceVersion should not be set on objects to be created",
            )
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = _generated_name(str(meta["generateName"]))
        if not meta.get("name"):
            self._raise_invalid(
                kind, obj, [errors.required("metadata.name", "name or generateName is required")]
            )
        for system in (
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
            "generation",
        ):
            meta.pop(system, None)
        if kind.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now())
        if kind.has_generation:
            meta["generation"] = 1
        obj["kind"], obj["apiVersion"] = kind.kind, kind.api_version
        return meta

    def _require_open_namespace(self, kind: Kind, namespace: str, name: str) -> None:
        assert NAMESPACES is not None
        ns = self._objects.get(NAMESPACES.storage_key, {}).get(("", namespace))
        if ns is None:
            raise errors.not_found("", "namespaces", namespace)
        if ns["metadata"].get("deletionTimestamp"):
            raise errors.forbidden_request(
                f'{kind.plural} "{name}" is forbidden: unable to create new content in '
                f"namespace {namespace} because it is being terminated",
                kind.group,
                kind.plural,
                name,
            )

    @staticmethod
    def _raise_invalid(kind: Kind, obj: JSON, causes: list[errors.FieldError]) -> None:
        if causes:
            name = str(obj.get("metadata", {}).get("name", ""))
            raise errors.invalid_object(kind.group, kind.kind, name, causes)

    # --- update -------------------------------------------------------------------------------

    def update(self, kind: Kind, namespace: str, name: str, obj: JSON, *, status: bool) -> JSON:
        with self._lock:
            return self._update(kind, namespace, name, obj, status=status)

    def patch(
        self, kind: Kind, namespace: str, name: str, apply: Callable[[JSON], JSON], *, status: bool
    ) -> JSON:
        """Apply `apply` to a private copy of the current object and write the result."""
        with self._lock:
            current = self._get(kind, namespace, name)
            patched = apply(copy.deepcopy(current))
            return self._update(kind, namespace, name, patched, status=status)

    def _update(self, kind: Kind, namespace: str, name: str, new: JSON, *, status: bool) -> JSON:
        old = self._get(kind, namespace, name)
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            meta = new["metadata"] = {}
        if meta.get("name", name) != name:
            raise errors.bad_request(
                f"the name of the object ({meta.get('name')}) does not "
                f"match the name on the URL ({name})"
            )
        if (
            meta.get("resourceVersion")
            and meta["resourceVersion"] != old["metadata"]["resourceVersion"]
        ):
            raise errors.stale_write(kind.group, kind.plural, name)
        if meta.get("uid") and meta["uid"] != old["metadata"]["uid"]:
            raise errors.conflict(
                kind.group,
                kind.plural,
                name,
                "Precondition failed: UID in "
                f"precondition: {meta['uid']}, UID in object meta: "
                f"{old['metadata']['uid']}",
            )
        strategy = self._strategy(kind)
        new = (
            self._prepare_status(kind, strategy, new, old)
            if status
            else self._prepare_main(kind, strategy, new, old)
        )
        if new == old:
            return old  # a no-op write changes nothing, not even the resourceVersion
        if not status:
            strategy.allocate(new, old)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            return self._remove(kind.storage_key, new, old)
        return self._commit("MODIFIED", kind.storage_key, new, old)

    def _prepare_status(self, kind: Kind, strategy: Strategy, new: JSON, old: JSON) -> JSON:
        merged = copy.deepcopy(old)
        merged["status"] = new.get("status") or {}
        causes: list[errors.FieldError] = []
        if strategy.status_keeps_metadata:
            meta = merged["metadata"] = new["metadata"]
            _keep_system_metadata(meta, old["metadata"])
            causes += metadata_errors(meta, kind.name_rule)
            causes += self._finalizer_errors(meta, old["metadata"])
        strategy.prepare_status(merged, old)
        self._raise_invalid(kind, merged, causes + strategy.validate_status(merged, old))
        return merged

    def _prepare_main(self, kind: Kind, strategy: Strategy, new: JSON, old: JSON) -> JSON:
        meta, old_meta = new["metadata"], old["metadata"]
        _keep_system_metadata(meta, old_meta)
        new["kind"], new["apiVersion"] = kind.kind, kind.api_version
        if kind.has_status:
            new.pop("status", None)
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        strategy.prepare_update(new, old)
        causes = metadata_errors(meta, kind.name_rule) + strategy.validate(new, old)
        causes += self._finalizer_errors(meta, old_meta)
        self._raise_invalid(kind, new, causes)
        if kind.has_generation and _without(new, "metadata", "status") != _without(
            old, "metadata", "status"
        ):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        return new

    @staticmethod
    def _finalizer_errors(meta: JSON, old_meta: JSON) -> list[errors.FieldError]:
        if not old_meta.get("deletionTimestamp"):
            return []
        added = [
            f for f in meta.get("finalizers") or [] if f not in (old_meta.get("finalizers") or [])
        ]
        if not added:
            return []
        return [
            errors.forbidden(
                "metadata.finalizers",
                "no new finalizers can be added if the "
                f"object is being deleted, found new finalizers {added}",
            )
        ]

    # --- delete -------------------------------------------------------------------------------

    def delete(self, kind: Kind, namespace: str, name: str, options: JSON) -> tuple[JSON, bool]:
        """Delete or, with finalizers pending, mark for deletion; True when the object is gone."""
        with self._lock:
            obj = self._get(kind, namespace, name)
            self._check_preconditions(kind, obj, options.get("preconditions") or {})
            if NAMESPACES is not None and kind.storage_key == NAMESPACES.storage_key:
                return self._delete_namespace(obj)
            return self._delete(kind.storage_key, obj)

    def _check_preconditions(self, kind: Kind, obj: JSON, preconditions: JSON) -> None:
        meta, name = obj["metadata"], obj["metadata"]["name"]
        uid, rv = preconditions.get("uid"), preconditions.get("resourceVersion")
        if uid and uid != meta["uid"]:
            raise errors.conflict(
                kind.group,
                kind.plural,
                name,
                "Precondition failed: UID in "
                f"precondition: {uid}, UID in object meta: {meta['uid']}",
            )
        if rv and rv != meta["resourceVersion"]:
            raise errors.conflict(
                kind.group,
                kind.plural,
                name,
                "Precondition failed: "
                f"ResourceVersion in precondition: {rv}, ResourceVersion in "
                f"object meta: {meta['resourceVersion']}",
            )

    def _delete(self, storage: str, obj: JSON) -> tuple[JSON, bool]:
        if not obj["metadata"].get("finalizers"):
            return self._remove(storage, copy.deepcopy(obj), obj), True
        if obj["metadata"].get("deletionTimestamp"):
            return obj, False
        marked = copy.deepcopy(obj)
        marked["metadata"].update(deletionTimestamp=now(), deletionGracePeriodSeconds=0)
        return self._commit("MODIFIED", storage, marked, obj), False

    def _remove(self, storage: str, final: JSON, old: JSON) -> JSON:
        self._strategies.get(storage, Strategy()).release(final)
        gone = self._commit("DELETED", storage, final, old)
        namespace = final["metadata"].get("namespace")
        if namespace:
            self._finish_namespace(namespace)
        return gone

    def _delete_namespace(self, ns: JSON) -> tuple[JSON, bool]:
        assert NAMESPACES is not None
        name = ns["metadata"]["name"]
        if not ns["metadata"].get("deletionTimestamp"):
            marked = copy.deepcopy(ns)
            marked["metadata"].update(deletionTimestamp=now(), deletionGracePeriodSeconds=0)
            marked["status"] = {"phase": "Terminating"}
            self._commit("MODIFIED", NAMESPACES.storage_key, marked, ns)
            for storage, obj in list(self._contents(name)):
                self._delete(storage, obj)
            self._finish_namespace(name)
        current = self._objects[NAMESPACES.storage_key].get(("", name))
        return (current, False) if current is not None else (ns, True)

    def _contents(self, namespace: str) -> Iterator[tuple[str, JSON]]:
        for storage, table in self._objects.items():
            for (ns, _), obj in table.items():
                if ns == namespace:
                    yield storage, obj

    def _finish_namespace(self, name: str) -> None:
        """A terminating namespace goes away once nothing is left in it."""
        assert NAMESPACES is not None
        ns = self._objects.get(NAMESPACES.storage_key, {}).get(("", name))
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return
        if next(self._contents(name), None) is not None:
            return
        if ns["metadata"].get("finalizers"):
            if ns.get("spec", {}).get("finalizers"):
                emptied = copy.deepcopy(ns)
                emptied["spec"]["finalizers"] = []
                self._commit("MODIFIED", NAMESPACES.storage_key, emptied, ns)
            return
        self._remove(NAMESPACES.storage_key, copy.deepcopy(ns), ns)


def _keep_system_metadata(meta: JSON, old_meta: JSON) -> None:
    """Reset the fields of `meta` that no write may set (the generic registry's BeforeUpdate)."""
    for system in (
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "namespace",
    ):
        if system in old_meta:
            meta[system] = old_meta[system]
        else:
            meta.pop(system, None)
    meta["name"] = old_meta["name"]
    meta.pop("managedFields", None)
    meta.pop("selfLink", None)
    meta["resourceVersion"] = old_meta["resourceVersion"]
