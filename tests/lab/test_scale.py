"""The lab keeps up with a controller's load: thousands of events and objects, quickly."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
from kubernetes import client, watch

from lbprovider.lab.apiserver import LabAPIServer
from lbprovider.lab.kinds import find_kind

pytestmark = pytest.mark.slow


_POSTER = """
import http.client, json, sys
host, port, prefix, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
connection = http.client.HTTPConnection(host, port, timeout=30)
for i in range(count):
    body = json.dumps({"metadata": {"name": prefix % i}, "spec": {"ports": [{"port": 80}]}})
    connection.request("POST", "/api/v1/namespaces/default/services", body,
                       {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    assert response.status == 201, response.status
connection.close()
"""


def _post_services(url: str, name_format: str, count: int) -> None:
    """Create Services from another process over one keep-alive connection, so the writer
    does not share this process's GIL with the server and the watcher."""
    parts = urlsplit(url)
    subprocess.run(
        [
            sys.executable,
            "-c",
            _POSTER,
            parts.hostname or "",
            str(parts.port),
            name_format,
            str(count),
        ],
        check=True,
        timeout=60,
    )


def _client(lab: LabAPIServer) -> client.ApiClient:
    configuration = client.Configuration()
    configuration.host = lab.url
    return client.ApiClient(configuration)


def test_a_watch_survives_ten_thousand_events_without_falling_behind() -> None:
    with LabAPIServer() as lab:
        api = client.CoreV1Api(_client(lab))
        rv = api.list_namespaced_service("default").metadata.resource_version
        seen: list[str] = []
        done = threading.Event()

        def consume() -> None:
            stream = watch.Watch().stream(
                api.list_namespaced_service,
                "default",
                resource_version=rv,
                timeout_seconds=60,
                deserialize=False,
            )
            for event in stream:
                seen.append(event["object"]["metadata"]["name"])
                if len(seen) == 10_000:
                    done.set()
                    return

        consumer = threading.Thread(target=consume)
        consumer.start()
        started = time.monotonic()
        _post_services(lab.url, "svc-%d", 10_000)
        assert done.wait(timeout=30)
        elapsed = time.monotonic() - started
        consumer.join(timeout=5)
        api.api_client.close()
    assert seen == [f"svc-{i}" for i in range(10_000)]
    assert elapsed < 20


def test_ten_thousand_services_are_listed_in_a_few_seconds() -> None:
    with LabAPIServer() as lab:
        _post_services(lab.url, "svc-%05d", 10_000)
        api = client.CoreV1Api(_client(lab))
        started = time.monotonic()
        listed = api.list_service_for_all_namespaces()
        elapsed = time.monotonic() - started
        api.api_client.close()
    assert len(listed.items) == 10_001  # and the cluster's own `kubernetes` Service
    assert listed.items[1].spec.cluster_ip.startswith("10.")
    # A generous bound: it catches per-object quadratic work (minutes), not a busy CI machine
    # (the typed client's own deserialisation takes ~2-5 s of this on 2 shared cores).
    assert elapsed < 15, elapsed


def _median_seconds(action: Callable[[], object], rounds: int) -> float:
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def test_a_name_selected_list_or_watch_costs_the_same_among_ten_thousand_services() -> None:
    """``fieldSelector=metadata.name=x`` in a namespace reads that one key (kube-apiserver
    does the same for single-object predicates) instead of scanning every Service: a client
    that lists or watches one Service must not pay for the other ten thousand."""
    with LabAPIServer() as lab:
        api = client.CoreV1Api(_client(lab))
        kind = find_kind("", "v1", "services")
        assert kind is not None
        for i in range(10):
            lab.store.create(
                kind,
                "default",
                {"metadata": {"name": f"few-{i}"}, "spec": {"ports": [{"port": 80}]}},
            )

        def one(name: str) -> Callable[[], object]:
            def call() -> object:
                listed = api.list_namespaced_service(
                    "default", field_selector=f"metadata.name={name}", _preload_content=False
                )
                watched = api.list_namespaced_service(
                    "default",
                    field_selector=f"metadata.name={name}",
                    watch=True,
                    timeout_seconds=0,
                    _preload_content=False,
                )
                return listed.data, watched.data

            return call

        few = _median_seconds(one("few-3"), 40)
        for i in range(10_000):
            lab.store.create(
                kind,
                "default",
                {"metadata": {"name": f"many-{i:05d}"}, "spec": {"ports": [{"port": 80}]}},
            )
        many = _median_seconds(one("many-04321"), 40)
        body = json.loads(one("many-04321")()[0])  # type: ignore[index]
        assert [item["metadata"]["name"] for item in body["items"]] == ["many-04321"]
        assert many < 3 * few, f"{many * 1000:.2f} ms among 10,010 vs {few * 1000:.2f} ms among 10"
