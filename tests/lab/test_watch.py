"""resourceVersion and watch semantics, through the official client's watch helper."""

from __future__ import annotations

import http.client
import threading
import time

import pytest
from kubernetes import client, watch

from lbprovider.lab.apiserver import LabAPIServer
from lbprovider.lab.kinds import find_kind
from tests.lab.conftest import lb_service


def _svc(name: str, **labels: str) -> dict[str, object]:
    return {"metadata": {"name": name, "labels": labels}, "spec": {"ports": [{"port": 80}]}}


def test_resource_version_is_shared_by_all_kinds_and_increases(core: client.CoreV1Api) -> None:
    first = int(core.create_namespaced_service("default", _svc("a")).metadata.resource_version)
    secret = core.create_namespaced_secret("default", {"metadata": {"name": "s"}})
    second = int(core.create_namespaced_service("default", _svc("b")).metadata.resource_version)
    assert first < int(secret.metadata.resource_version) < second
    assert int(core.list_namespaced_service("default").metadata.resource_version) == second


def test_list_returns_the_collection_resource_version(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_service("default", _svc("a"))
    listed = core.list_service_for_all_namespaces()
    assert listed.metadata.resource_version == created.metadata.resource_version


def test_watch_from_a_resource_version_streams_only_later_events(core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", _svc("before"))
    rv = core.list_namespaced_service("default").metadata.resource_version
    core.create_namespaced_service("default", _svc("after"))
    core.delete_namespaced_service("before", "default")
    events = list(
        watch.Watch().stream(
            core.list_namespaced_service, "default", resource_version=rv, timeout_seconds=1
        )
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", "after"),
        ("DELETED", "before"),
    ]


def test_watch_without_resource_version_starts_with_current_objects(core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", _svc("web"))
    events = list(watch.Watch().stream(core.list_namespaced_service, "default", timeout_seconds=1))
    assert sorted(e["object"].metadata.name for e in events) == ["kubernetes", "web"]
    assert {e["type"] for e in events} == {"ADDED"}


def test_watch_honours_timeout_seconds(core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_service("default").metadata.resource_version
    started = time.monotonic()
    events = list(
        watch.Watch().stream(
            core.list_namespaced_service, "default", resource_version=rv, timeout_seconds=1
        )
    )
    elapsed = time.monotonic() - started
    assert events == []
    assert 0.9 <= elapsed < 3


def test_bookmarks_are_sent_when_allowed() -> None:
    with LabAPIServer(bookmark_interval=0.2) as lab:
        api = client.CoreV1Api(_client(lab))
        rv = api.list_namespaced_service("default").metadata.resource_version
        api.create_namespace({"metadata": {"name": "other"}})  # moves the RV, not a Service
        events = list(
            watch.Watch().stream(
                api.list_namespaced_service,
                "default",
                resource_version=rv,
                timeout_seconds=1,
                allow_watch_bookmarks=True,
                deserialize=False,
            )
        )
        api.api_client.close()
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks, events
    assert int(bookmarks[-1]["object"]["metadata"]["resourceVersion"]) > int(rv)


def test_no_bookmarks_unless_asked(core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_service("default").metadata.resource_version
    events = list(
        watch.Watch().stream(
            core.list_namespaced_service,
            "default",
            resource_version=rv,
            timeout_seconds=1,
            deserialize=False,
        )
    )
    assert events == []


def _client(lab: LabAPIServer) -> client.ApiClient:
    configuration = client.Configuration()
    configuration.host = lab.url
    return client.ApiClient(configuration)


def test_list_watch_expire_relist_cycle() -> None:
    with LabAPIServer(watch_window=20) as lab:
        api = client.CoreV1Api(_client(lab))
        listed = api.list_namespaced_service("default")
        for i in range(60):  # more changes than the server retains
            api.create_namespaced_service("default", _svc(f"s{i}"))
        with pytest.raises(client.ApiException) as expired:
            # timeout_seconds disables the helper's silent retry, so the 410 surfaces
            list(
                watch.Watch().stream(
                    api.list_namespaced_service,
                    "default",
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=1,
                )
            )
        assert expired.value.status == 410
        relisted = api.list_namespaced_service("default")
        assert len(relisted.items) == 61
        api.create_namespaced_service("default", _svc("fresh"))
        events = list(
            watch.Watch().stream(
                api.list_namespaced_service,
                "default",
                resource_version=relisted.metadata.resource_version,
                timeout_seconds=1,
            )
        )
        api.api_client.close()
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "fresh")]


def test_expired_watch_gets_an_error_event_with_status_410() -> None:
    with LabAPIServer(watch_window=5) as lab:
        api = client.CoreV1Api(_client(lab))
        for i in range(20):
            api.create_namespaced_service("default", _svc(f"s{i}"))
        response = api.list_namespaced_service(
            "default", watch=True, resource_version="1", timeout_seconds=1, _preload_content=False
        )
        body = response.data.decode()
        api.api_client.close()
    assert '"type":"ERROR"' in body
    assert '"code":410' in body and '"reason":"Expired"' in body


def test_watch_with_selector_turns_label_changes_into_added_and_deleted(
    core: client.CoreV1Api,
) -> None:
    core.create_namespaced_service("default", _svc("web", tier="front"))
    rv = core.list_namespaced_service("default").metadata.resource_version
    core.patch_namespaced_service("web", "default", {"metadata": {"labels": {"tier": "back"}}})
    core.patch_namespaced_service("web", "default", {"metadata": {"labels": {"tier": "front"}}})
    events = list(
        watch.Watch().stream(
            core.list_namespaced_service,
            "default",
            label_selector="tier=front",
            resource_version=rv,
            timeout_seconds=1,
        )
    )
    assert [e["type"] for e in events] == ["DELETED", "ADDED"]


def test_cluster_wide_watch_sees_every_namespace(core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "team"}})
    rv = core.list_service_for_all_namespaces().metadata.resource_version
    core.create_namespaced_service("team", _svc("a"))
    core.create_namespaced_service("default", _svc("b"))
    events = list(
        watch.Watch().stream(
            core.list_service_for_all_namespaces, resource_version=rv, timeout_seconds=1
        )
    )
    assert [(e["object"].metadata.namespace, e["object"].metadata.name) for e in events] == [
        ("team", "a"),
        ("default", "b"),
    ]


def test_watch_stream_ends_cleanly_when_the_server_stops() -> None:
    lab = LabAPIServer().start()
    api = client.CoreV1Api(_client(lab))
    received: list[str] = []
    finished = threading.Event()

    def consume() -> None:
        for event in watch.Watch().stream(
            api.list_namespaced_service, "default", timeout_seconds=600
        ):
            received.append(event["object"].metadata.name)
        finished.set()

    consumer = threading.Thread(target=consume)
    consumer.start()
    api.create_namespaced_service("default", lb_service("web"))
    time.sleep(0.3)
    lab.stop()
    consumer.join(timeout=5)
    api.api_client.close()
    assert finished.is_set()
    assert received == ["kubernetes", "web"]


def test_a_watch_whose_client_hung_up_ends_at_the_next_change(lab: LabAPIServer) -> None:
    """A real server ends a watch when its client goes away; the lab must not keep a thread
    filtering every later event for nobody until the watch's timeout."""
    host, port = lab.url.removeprefix("http://").split(":")
    before = threading.active_count()
    clients = []
    for _ in range(5):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request(
            "GET",
            "/api/v1/namespaces/default/services?watch=true&timeoutSeconds=300"
            "&fieldSelector=metadata.name%3Dnobody",
        )
        assert conn.getresponse().status == 200
        clients.append(conn)
    assert threading.active_count() >= before + 5
    for conn in clients:
        conn.close()
    with client.ApiClient(client.Configuration(host=lab.url)) as api_client:
        client.CoreV1Api(api_client).create_namespaced_service("default", _svc("wake-up"))
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


def test_a_commit_wakes_only_the_watches_of_its_kind(
    core: client.CoreV1Api, lab: LabAPIServer
) -> None:
    """Each commit wakes the watches of its own kind only (kube-apiserver's watch cache is per
    resource): a Secret written does not wake a thread waiting for Services."""
    services = find_kind("", "v1", "services")
    assert services is not None
    rv = lab.store.resource_version
    woke = threading.Event()

    def wait() -> None:
        lab.store.wait_beyond(rv, 10, lambda: False, services.storage_key)
        woke.set()

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    core.create_namespaced_secret("default", {"metadata": {"name": "s"}})
    assert not woke.wait(0.3)
    core.create_namespaced_service("default", _svc("wake"))
    assert woke.wait(2)
    waiter.join(2)


def test_a_watch_of_a_quiet_kind_outlives_the_window_of_other_kinds_changes() -> None:
    """Expiry is per kind (kube-apiserver's watch cache is per resource): a Services position
    stays valid while other kinds churn through more than the retained window, whether the
    watch was open meanwhile or is opened only afterwards; an unseen Service event compacted
    away still expires it."""
    with LabAPIServer(watch_window=5) as lab:
        api = client.CoreV1Api(_client(lab))
        rv = api.list_namespaced_service("default").metadata.resource_version
        seen: list[tuple[str, str]] = []

        def watch_services() -> None:
            for event in watch.Watch().stream(
                api.list_namespaced_service, "default", resource_version=rv, timeout_seconds=3
            ):
                seen.append((event["type"], event["object"].metadata.name))
                return

        watcher = threading.Thread(target=watch_services, daemon=True)
        watcher.start()
        time.sleep(0.2)
        for i in range(30):
            api.create_namespaced_secret("default", {"metadata": {"name": f"s{i}"}})
        api.create_namespaced_service("default", _svc("late"))
        watcher.join(5)
        assert seen == [("ADDED", "late")]
        assert lab.store.compacted > int(rv)

        # Opened only now, from the same old position: the one Service event is still retained.
        events = list(
            watch.Watch().stream(
                api.list_namespaced_service, "default", resource_version=rv, timeout_seconds=1
            )
        )
        assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "late")]

        # Services churn the window themselves: the old position is gone.
        for i in range(12):
            api.create_namespaced_service("default", _svc(f"more-{i}"))
        with pytest.raises(client.ApiException) as expired:
            list(
                watch.Watch().stream(
                    api.list_namespaced_service, "default", resource_version=rv, timeout_seconds=1
                )
            )
        assert expired.value.status == 410
        api.api_client.close()
