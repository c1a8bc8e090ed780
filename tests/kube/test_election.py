"""Leader election on a Lease in the lab API server, with short timings (1 s / 0.7 s / 0.2 s)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s_client

from lbprovider.kube.election import LeaderElector

from .conftest import NAMESPACE, wait_until

LEASE = 1.0
RENEW = 0.7
RETRY = 0.2


class Recorder:
    """Counts leadership callbacks so a test can see what the controller would be told."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.stopped = threading.Event()

    def on_started(self) -> None:
        self.started.set()

    def on_stopped(self) -> None:
        self.stopped.set()


def elector(api: Any, identity: str, recorder: Recorder | None = None) -> LeaderElector:
    recorder = recorder or Recorder()
    return LeaderElector(
        api,
        name="lbprovider-controller",
        namespace=NAMESPACE,
        identity=identity,
        lease_duration_seconds=LEASE,
        renew_deadline_seconds=RENEW,
        retry_period_seconds=RETRY,
        on_started_leading=recorder.on_started,
        on_stopped_leading=recorder.on_stopped,
    )


@pytest.fixture
def pair(api: Any) -> Iterator[tuple[LeaderElector, LeaderElector]]:
    a, b = elector(api, "replica-a"), elector(api, "replica-b")
    yield a, b
    a.stop(timeout=2)
    b.stop(timeout=2)


def read_lease(api: Any) -> dict[str, Any]:
    coordination = k8s_client.CoordinationV1Api(api)
    response = coordination.read_namespaced_lease(
        "lbprovider-controller", NAMESPACE, _preload_content=False
    )
    lease: dict[str, Any] = json.loads(response.data)
    return lease


def test_two_electors_one_leader_and_it_holds_the_lease(
    api: Any, pair: tuple[LeaderElector, LeaderElector]
) -> None:
    a, b = pair
    a.start()
    b.start()
    assert wait_until(lambda: a.is_leader() or b.is_leader(), timeout=3)

    both = False
    end = time.monotonic() + 2 * LEASE
    while time.monotonic() < end:  # several renew periods: never two leaders
        both = both or (a.is_leader() and b.is_leader())
        time.sleep(0.01)
    assert not both
    leader = a if a.is_leader() else b
    assert read_lease(api)["spec"]["holderIdentity"] == leader.identity


def test_standby_takes_over_within_the_lease_after_the_leader_dies(
    api: Any, pair: tuple[LeaderElector, LeaderElector]
) -> None:
    a, b = pair
    a.start()
    assert a.wait_for_leadership(3)
    b.start()
    time.sleep(3 * RETRY)
    assert not b.is_leader()

    a.stop(release=False)  # a crash: the Lease is left as it was
    died = time.monotonic()
    assert b.wait_for_leadership(LEASE + 3 * RETRY + 1)
    took = time.monotonic() - died
    assert took <= LEASE + 2 * RETRY + 0.3
    assert read_lease(api)["spec"]["holderIdentity"] == "replica-b"


def test_clean_shutdown_releases_the_lease_for_an_immediate_failover(
    api: Any, pair: tuple[LeaderElector, LeaderElector]
) -> None:
    a, b = pair
    a.start()
    assert a.wait_for_leadership(3)
    b.start()
    time.sleep(2 * RETRY)

    a.stop()
    released = time.monotonic()
    assert not a.is_leader()
    assert b.wait_for_leadership(LEASE)
    assert time.monotonic() - released < LEASE / 2
    assert read_lease(api)["spec"]["leaseTransitions"] >= 1


def test_leader_whose_lease_is_taken_stops_at_once(api: Any) -> None:
    recorder = Recorder()
    a = elector(api, "replica-a", recorder)
    a.start()
    try:
        assert recorder.started.wait(3)
        lease = read_lease(api)
        lease["spec"]["holderIdentity"] = "intruder"
        coordination = k8s_client.CoordinationV1Api(api)
        coordination.replace_namespaced_lease(
            "lbprovider-controller", NAMESPACE, lease, _preload_content=False
        )
        taken = time.monotonic()
        assert recorder.stopped.wait(2 * RETRY + 0.5)
        assert not a.is_leader()
        assert time.monotonic() - taken < 2 * RETRY + 0.5
    finally:
        a.stop()
    # The intruder's Lease was not "released" by a replica that no longer holds it.
    assert read_lease(api)["spec"]["holderIdentity"] == "intruder"


def test_leader_that_cannot_renew_stops_within_the_renew_deadline(lab: Any, api: Any) -> None:
    recorder = Recorder()
    a = elector(api, "replica-a", recorder)
    a.start()
    try:
        assert recorder.started.wait(3)
        lab.stop()  # the API server goes away: no renewal can succeed
        gone = time.monotonic()
        assert wait_until(lambda: not a.is_leader(), timeout=RENEW + 0.5, interval=0.01)
        assert time.monotonic() - gone <= RENEW + 0.15
        assert recorder.stopped.wait(RENEW + 2)
    finally:
        a.stop(timeout=3)
