"""The work queue: dedupe, order, re-run after processing, backoff, delays, workers, shutdown."""

from __future__ import annotations

import itertools
import threading
import time

from lbprovider.kube.queue import WorkQueue


def test_keys_come_out_in_order_and_duplicates_collapse() -> None:
    q: WorkQueue[str] = WorkQueue()
    for key in ["a", "b", "a", "c", "b"]:
        q.add(key)
    assert q.depth() == 3
    assert [q.get(timeout=0), q.get(timeout=0), q.get(timeout=0)] == ["a", "b", "c"]
    assert q.get(timeout=0) is None


def test_key_added_while_processing_runs_again_after_done_not_in_parallel() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("ns/svc")
    key = q.get(timeout=0)
    assert key == "ns/svc"
    q.add("ns/svc")
    q.add("ns/svc")
    # Not handed to a second worker while the first still holds it.
    assert q.get(timeout=0.05) is None
    q.done("ns/svc")
    assert q.get(timeout=0) == "ns/svc"
    q.done("ns/svc")
    assert q.depth() == 0


def test_add_after_delays_and_earliest_delay_wins() -> None:
    q: WorkQueue[str] = WorkQueue()
    start = time.monotonic()
    q.add_after("slow", 0.3)
    q.add_after("slow", 5.0)  # later delay for the same key does not postpone it
    q.add_after("fast", 0.1)
    assert q.depth() == 0 and q.delayed() == 2
    assert q.get(timeout=2) == "fast"
    assert q.get(timeout=2) == "slow"
    assert 0.25 <= time.monotonic() - start < 2


def test_backoff_grows_exponentially_is_capped_and_forget_resets() -> None:
    q: WorkQueue[str] = WorkQueue(backoff_base_seconds=0.01, backoff_max_seconds=0.05)
    delays = [q.add_rate_limited("k") for _ in range(5)]
    assert delays == [0.01, 0.02, 0.04, 0.05, 0.05]
    assert q.num_requeues("k") == 5
    q.forget("k")
    assert q.num_requeues("k") == 0
    assert q.add_rate_limited("k") == 0.01


def test_workers_retry_failures_with_backoff_until_success() -> None:
    q: WorkQueue[str] = WorkQueue(backoff_base_seconds=0.02, backoff_max_seconds=1.0)
    attempts: list[float] = []
    converged = threading.Event()

    def reconcile(key: str) -> float | None:
        attempts.append(time.monotonic())
        if len(attempts) < 4:
            raise RuntimeError("database unreachable")
        converged.set()
        return None

    q.start_workers(reconcile, workers=2)
    try:
        q.add("ns/a")
        assert converged.wait(5)
    finally:
        q.shutdown()
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.015 and gaps[1] >= 0.035 and gaps[2] >= 0.075
    assert q.num_requeues("ns/a") == 0


def test_handler_return_value_requeues_after_that_delay() -> None:
    q: WorkQueue[str] = WorkQueue()
    seen: list[float] = []
    twice = threading.Event()

    def reconcile(key: str) -> float | None:
        seen.append(time.monotonic())
        if len(seen) == 2:
            twice.set()
            return None
        return 0.2

    q.start_workers(reconcile, workers=1)
    try:
        q.add("k")
        assert twice.wait(3)
    finally:
        q.shutdown()
    assert seen[1] - seen[0] >= 0.18


def test_n_workers_run_distinct_keys_concurrently_and_one_key_never_twice_at_once() -> None:
    q: WorkQueue[int] = WorkQueue()
    lock = threading.Lock()
    running: set[int] = set()
    peak = 0
    clash = False
    done = threading.Semaphore(0)

    def reconcile(key: int) -> float | None:
        nonlocal peak, clash
        with lock:
            clash = clash or key in running
            running.add(key)
            peak = max(peak, len(running))
        time.sleep(0.05)
        with lock:
            running.discard(key)
        done.release()
        return None

    q.start_workers(reconcile, workers=4)
    try:
        for key in range(8):
            q.add(key)
            q.add(key)
        for _ in range(8):
            assert done.acquire(timeout=3)
    finally:
        q.shutdown()
    assert peak >= 3
    assert not clash


def test_shutdown_lets_the_running_handler_finish_and_stops_workers() -> None:
    q: WorkQueue[str] = WorkQueue()
    started = threading.Event()
    finished = threading.Event()

    def reconcile(key: str) -> float | None:
        started.set()
        time.sleep(0.2)
        finished.set()
        return None

    q.start_workers(reconcile, workers=2)
    q.add("k")
    assert started.wait(2)
    q.shutdown(timeout=5)
    assert finished.is_set()
    assert q.get(timeout=0) is None
    q.add("late")
    assert q.depth() == 0
    assert all(not t.is_alive() for t in threading.enumerate() if t.name.startswith("work-"))


def test_background_keys_wait_for_every_other_ready_key() -> None:
    q: WorkQueue[str] = WorkQueue()
    for key in ["sweep-1", "sweep-2", "sweep-3"]:
        q.add(key, background=True)
    q.add("changed")
    assert q.depth() == 4
    # A change seen during a sweep runs first; the sweep keeps its own order.
    assert [q.get(timeout=0) for _ in range(4)] == ["changed", "sweep-1", "sweep-2", "sweep-3"]


def test_a_change_moves_a_background_key_to_the_front_once() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a", background=True)
    q.add("b", background=True)
    q.add("b")  # b changed while the sweep had queued it: front lane, still one entry
    q.add("b", background=True)  # a later sweep add does not push it back
    assert q.depth() == 2
    assert [q.get(timeout=0), q.get(timeout=0)] == ["b", "a"]
    assert q.get(timeout=0) is None


def test_a_background_add_while_processing_reruns_in_the_background_lane() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("busy")
    assert q.get(timeout=0) == "busy"
    q.add("busy", background=True)
    q.add("other")
    q.done("busy")
    assert [q.get(timeout=0), q.get(timeout=0)] == ["other", "busy"]
