"""List+watch caches against the lab API server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client

from lbprovider.config import Settings
from lbprovider.kube.cache import ObjectCache, object_key
from lbprovider.kube.client import load_api_client
from lbprovider.lab.apiserver import LabAPIServer

from .conftest import NAMESPACE, make_service, wait_until


class Events:
    """A handler collecting (event_type, key) pairs, as a controller's enqueue would."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str]] = []

    def __call__(self, event_type: str, obj: dict[str, Any]) -> None:
        with self.lock:
            self.seen.append((event_type, object_key(obj)))

    def of(self, event_type: str) -> list[str]:
        with self.lock:
            return [key for t, key in self.seen if t == event_type]


@pytest.fixture
def caches() -> Iterator[list[ObjectCache]]:
    started: list[ObjectCache] = []
    yield started
    for cache in started:
        cache.stop()


def run_cache(
    caches: list[ObjectCache], list_func: Callable[..., Any], **kwargs: Any
) -> tuple[ObjectCache, Events]:
    kwargs.setdefault(
        "field_selector", f"metadata.namespace={NAMESPACE}"
    )  # skip default/kubernetes
    cache = ObjectCache("services", list_func, **kwargs)
    events = Events()
    cache.add_handler(events)
    cache.start()
    caches.append(cache)
    assert cache.wait_for_sync(5)
    return cache, events


def test_cache_sees_existing_then_created_updated_deleted(
    core: Any, caches: list[ObjectCache]
) -> None:
    make_service(core, "before")
    cache, events = run_cache(caches, core.list_service_for_all_namespaces)
    assert events.of("ADDED") == [f"{NAMESPACE}/before"]  # delivered before has_synced
    assert cache.get(f"{NAMESPACE}/before")["kind"] == "Service"  # type: ignore[index]

    make_service(core, "web")
    assert wait_until(lambda: cache.get(f"{NAMESPACE}/web") is not None)
    core.patch_namespaced_service(
        "web",
        NAMESPACE,
        {"metadata": {"labels": {"tier": "front"}}},
        _content_type="application/merge-patch+json",
    )
    assert wait_until(
        lambda: (
            (cache.get(f"{NAMESPACE}/web") or {}).get("metadata", {}).get("labels", {}).get("tier")
            == "front"
        )
    )
    core.delete_namespaced_service("web", NAMESPACE)
    assert wait_until(lambda: cache.get(f"{NAMESPACE}/web") is None)

    assert wait_until(lambda: events.of("DELETED") == [f"{NAMESPACE}/web"])
    assert events.of("ADDED") == [f"{NAMESPACE}/before", f"{NAMESPACE}/web"]
    assert events.of("MODIFIED") == [f"{NAMESPACE}/web"]
    assert sorted(object_key(o) for o in cache.list()) == [f"{NAMESPACE}/before"]


def test_resync_redelivers_every_key(core: Any, caches: list[ObjectCache]) -> None:
    for name in ("a", "b", "c"):
        make_service(core, name)
    cache, events = run_cache(caches, core.list_service_for_all_namespaces, resync_seconds=0.3)

    assert wait_until(lambda: len(events.of("RESYNC")) >= 6, timeout=3)
    assert set(events.of("RESYNC")) == {f"{NAMESPACE}/{n}" for n in "abc"}
    assert cache.resyncs >= 2


class Recording:
    """A handler recording (event_type, key, thread name) and how many run at once."""

    def __init__(self, slow_resync: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str, str]] = []
        self.running = 0
        self.most = 0
        self.slow_resync = slow_resync
        self.in_resync = threading.Event()

    def __call__(self, event_type: str, obj: dict[str, Any]) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if event_type == "RESYNC" and self.slow_resync and not self.in_resync.is_set():
                self.in_resync.set()
                time.sleep(self.slow_resync)  # the sweep is still delivering meanwhile
            with self.lock:
                self.seen.append((event_type, object_key(obj), threading.current_thread().name))
        finally:
            with self.lock:
                self.running -= 1


def test_a_watch_event_reaches_the_handlers_on_the_watch_thread(
    core: Any, caches: list[ObjectCache]
) -> None:
    """No hand-off between the watch and the handlers when nothing is queued before it; the
    first list still goes through the dispatch thread (``has_synced`` follows it)."""
    make_service(core, "before")
    cache = ObjectCache(
        "services",
        core.list_service_for_all_namespaces,
        field_selector=f"metadata.namespace={NAMESPACE}",
    )
    handler = Recording()
    cache.add_handler(handler)
    cache.start()
    caches.append(cache)
    assert cache.wait_for_sync(5)
    make_service(core, "web")
    assert wait_until(lambda: any(k == f"{NAMESPACE}/web" for _, k, _ in handler.seen))
    threads = {key: thread for _, key, thread in handler.seen}
    assert threads[f"{NAMESPACE}/before"] == "cache-services-dispatch"
    assert threads[f"{NAMESPACE}/web"] == "cache-services-watch"


def test_an_event_seen_during_a_resync_comes_after_it_and_never_alongside(
    core: Any, caches: list[ObjectCache]
) -> None:
    """A watch event that arrives while a sweep is delivering waits for the whole sweep (no
    RESYNC of an older object after a newer event), and handlers never run two at a time."""
    for name in ("a", "b", "c"):
        make_service(core, name)
    cache = ObjectCache(
        "services",
        core.list_service_for_all_namespaces,
        field_selector=f"metadata.namespace={NAMESPACE}",
        resync_seconds=0.5,
    )
    handler = Recording(slow_resync=0.5)
    cache.add_handler(handler)
    cache.start()
    caches.append(cache)
    assert cache.wait_for_sync(5)
    assert handler.in_resync.wait(5)
    make_service(core, "late")  # while the first RESYNC is still being handled
    assert wait_until(lambda: any(k == f"{NAMESPACE}/late" for _, k, _ in handler.seen), 10)
    with handler.lock:
        seen = list(handler.seen)
    late = next(i for i, (_, k, _) in enumerate(seen) if k == f"{NAMESPACE}/late")
    first_sweep = [i for i, (t, _, _) in enumerate(seen) if t == "RESYNC"][:3]
    assert len(first_sweep) == 3 and max(first_sweep) < late, seen
    assert seen[late][0] == "ADDED" and seen[late][2] == "cache-services-dispatch", seen
    assert handler.most == 1


class DroppableWatch:
    """Wraps the real list function; lets the test cut the open watch connection."""

    def __init__(self, list_func: Callable[..., Any]) -> None:
        self.list_func = list_func
        self.responses: list[Any] = []
        self.cut_ones: list[Any] = []

    def __call__(self, **kwargs: Any) -> Any:
        response = self.list_func(**kwargs)
        if kwargs.get("watch"):
            self.responses.append(response)
        return response

    def cut(self) -> None:
        """Cut the open watch. On a loaded machine the latest watch may already have ended (and
        the cache be backing off before the next one): wait for a watch that is open."""
        done: list[Any] = []

        def cut_open_watch() -> bool:
            response = self.responses[-1] if self.responses else None
            if response is None or response.closed or any(response is r for r in self.cut_ones):
                return False
            try:
                response.shutdown()
            except (ValueError, RuntimeError):  # it ended between the check and the cut
                return False
            done.append(response)
            return True

        assert wait_until(cut_open_watch), "no open watch to cut"
        self.cut_ones.extend(done)


def test_dropped_stream_resumes_from_last_resource_version_without_relist(
    core: Any, caches: list[ObjectCache]
) -> None:
    watch = DroppableWatch(core.list_service_for_all_namespaces)
    cache, events = run_cache(caches, watch, retry_base_seconds=0.05)
    make_service(core, "one")
    assert wait_until(lambda: cache.get(f"{NAMESPACE}/one") is not None)

    for round_ in range(3):
        watch.cut()
        make_service(core, f"after-cut-{round_}")
        assert wait_until(lambda r=round_: cache.get(f"{NAMESPACE}/after-cut-{r}") is not None)

    assert cache.watch_restarts >= 3
    assert cache.relists == 0
    # the handler runs after the object is stored: the last ADDED may still be on its way
    wait_until(lambda: len(events.of("ADDED")) >= 4)
    added = events.of("ADDED")
    assert len(added) == len(set(added)) == 4  # nothing missed, nothing delivered twice


def test_server_ended_watch_is_reopened(core: Any, caches: list[ObjectCache]) -> None:
    cache, events = run_cache(caches, core.list_service_for_all_namespaces, watch_timeout_seconds=1)
    assert wait_until(lambda: cache.watch_restarts >= 1, timeout=4)
    make_service(core, "late")
    assert wait_until(lambda: events.of("ADDED") == [f"{NAMESPACE}/late"])


def test_label_selector_limits_the_cache(core: Any, caches: list[ObjectCache]) -> None:
    make_service(core, "web")
    make_service(core, "db")
    cache, _ = run_cache(caches, core.list_service_for_all_namespaces, label_selector="app=web")
    make_service(core, "web2")
    assert cache.keys() == [f"{NAMESPACE}/web"]


def test_nodes_are_keyed_by_name(api: Any, caches: list[ObjectCache]) -> None:
    core = k8s_client.CoreV1Api(api)
    core.create_node({"metadata": {"name": "node-1"}})
    cache, events = run_cache(caches, core.list_node, field_selector=None)
    assert cache.get("node-1") is not None
    assert events.of("ADDED") == ["node-1"]


class GatedWatch:
    """Wraps the real list function; holds watch requests back until the test opens the gate."""

    def __init__(self, list_func: Callable[..., Any]) -> None:
        self.list_func = list_func
        self.gate = threading.Event()

    def __call__(self, **kwargs: Any) -> Any:
        if kwargs.get("watch"):
            self.gate.wait(10)
        return self.list_func(**kwargs)


@pytest.fixture
def small_window_core(tmp_path: Path) -> Iterator[Any]:
    """A lab server that keeps only a few events, so an idle watcher's RV expires (410)."""
    with LabAPIServer(host="127.0.0.1", port=0, version="1.30", watch_window=5) as srv:
        api = load_api_client(Settings(kubeconfig=str(srv.write_kubeconfig(tmp_path / "kc"))))
        core = k8s_client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        try:
            yield core
        finally:
            api.close()


def test_expired_resource_version_relists_and_catches_up(small_window_core: Any) -> None:
    core = small_window_core
    make_service(core, "stays")
    make_service(core, "goes")
    watch = GatedWatch(core.list_service_for_all_namespaces)
    cache, events = run_cache([], watch, retry_base_seconds=0.05)
    try:
        # While the cache is not watching, the cluster moves on by more than the server keeps.
        core.delete_namespaced_service("goes", NAMESPACE)
        for i in range(15):
            make_service(core, f"new-{i}")
        core.patch_namespaced_service(
            "stays",
            NAMESPACE,
            {"metadata": {"annotations": {"lbprovider.io/pool": "blue"}}},
            _content_type="application/merge-patch+json",
        )
        watch.gate.set()

        assert wait_until(lambda: cache.relists == 1 and len(cache) == 16, timeout=5)
        assert events.of("DELETED") == [f"{NAMESPACE}/goes"]
        assert events.of("MODIFIED") == [f"{NAMESPACE}/stays"]
        assert sorted(events.of("ADDED")) == sorted(
            [f"{NAMESPACE}/stays", f"{NAMESPACE}/goes"]
            + [f"{NAMESPACE}/new-{i}" for i in range(15)]
        )
        stays = cache.get(f"{NAMESPACE}/stays") or {}
        assert stays["metadata"]["annotations"] == {"lbprovider.io/pool": "blue"}

        make_service(core, "after")  # and it keeps watching from the new list
        assert wait_until(lambda: cache.get(f"{NAMESPACE}/after") is not None)
        assert cache.relists == 1
    finally:
        cache.stop()


def test_bookmarks_move_the_resume_point_while_the_kind_is_quiet(
    tmp_path: Path, caches: list[ObjectCache]
) -> None:
    with LabAPIServer(host="127.0.0.1", port=0, version="1.30", bookmark_interval=0.2) as srv:
        api = load_api_client(Settings(kubeconfig=str(srv.write_kubeconfig(tmp_path / "kc"))))
        core = k8s_client.CoreV1Api(api)
        try:
            cache, events = run_cache(caches, core.list_service_for_all_namespaces)
            listed_rv = int(cache.resource_version)
            core.create_node({"metadata": {"name": "node-1"}})  # another kind moves the RV

            assert wait_until(lambda: int(cache.resource_version) > listed_rv, timeout=3)
            assert events.seen == []  # a bookmark is not an event for the handlers
        finally:
            cache.stop()
            api.close()
