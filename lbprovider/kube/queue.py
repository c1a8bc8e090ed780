"""A deduplicating, rate-limited work queue with worker threads (client-go's workqueue).

Watch events only say "look at this key again"; the queue turns a burst of events into one
reconcile per key, never runs the same key on two workers at once (a key added while it is being
processed runs again afterwards), retries failures with per-key exponential backoff and supports
delayed adds. Sweeps (a periodic resync, the start-up pass) add their keys as ``background``:
those run only when no other key is ready, so a change seen meanwhile never waits behind ten
thousand look-agains; a key added both ways runs once, in the front lane. It knows nothing about
what a key means and must not talk to Kubernetes.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

# What a worker's handler returns: None = done; a number = look again after that many seconds.
Handler = Callable[[K], float | None]


class WorkQueue(Generic[K]):
    """FIFO of distinct keys, with delays, backoff and an optional pool of workers."""

    def __init__(
        self,
        *,
        name: str = "work",
        backoff_base_seconds: float = 0.05,
        backoff_max_seconds: float = 60.0,
    ) -> None:
        self.name = name
        self._base = backoff_base_seconds
        self._max = backoff_max_seconds
        self._cond = threading.Condition()
        self._queue: deque[K] = deque()
        self._later: OrderedDict[K, None] = OrderedDict()  # the background lane, FIFO
        self._dirty: set[K] = set()
        self._background: set[K] = set()  # dirty keys that only a sweep asked for
        self._processing: set[K] = set()
        self._waiting: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()
        self._failures: dict[K, int] = {}
        self._shutting_down = False
        self._workers: list[threading.Thread] = []
        # Counters read by metrics.
        self.adds = 0
        self.retries = 0

    # -- adding --------------------------------------------------------------------------------

    def add(self, key: K, *, background: bool = False) -> None:
        """Queue ``key`` unless it is already queued; a key being processed runs again after.

        ``background``: a sweep's add, served after every other ready key (see the module)."""
        with self._cond:
            if background:
                self._add_background_locked(key)
            else:
                self._add_locked(key)

    def _add_locked(self, key: K) -> None:
        if self._shutting_down:
            return
        if key in self._dirty:
            if key in self._background:  # a sweep queued it; a change moves it to the front
                self._background.discard(key)
                if self._later.pop(key, False) is None:
                    self._queue.append(key)
                    self._cond.notify()
            return
        self.adds += 1
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._cond.notify()

    def _add_background_locked(self, key: K) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self.adds += 1
        self._dirty.add(key)
        self._background.add(key)
        if key not in self._processing:
            self._later[key] = None
            self._cond.notify()

    def add_after(self, key: K, delay: float) -> None:
        """Queue ``key`` after ``delay`` seconds; an earlier pending delay for it wins."""
        if delay <= 0:
            self.add(key)
            return
        ready = time.monotonic() + delay
        with self._cond:
            if self._shutting_down:
                return
            current = self._waiting.get(key)
            if current is not None and current <= ready:
                return
            self._waiting[key] = ready
            heapq.heappush(self._heap, (ready, next(self._seq), key))
            self._cond.notify_all()

    def add_rate_limited(self, key: K) -> float:
        """Queue ``key`` after its backoff (base * 2**failures, capped); returns the delay."""
        with self._cond:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
            self.retries += 1
        delay: float = min(self._max, self._base * 2.0**failures)
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """Reset the backoff of ``key`` (call after it succeeded)."""
        with self._cond:
            self._failures.pop(key, None)

    def num_requeues(self, key: K) -> int:
        """How many times ``key`` failed since it was last forgotten."""
        with self._cond:
            return self._failures.get(key, 0)

    # -- taking --------------------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> K | None:
        """The next key (now being processed), or None on shutdown or after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._shutting_down:
                    return None
                self._promote_due_locked()
                if self._queue or self._later:
                    key = self._queue.popleft() if self._queue else self._later.popitem(False)[0]
                    self._dirty.discard(key)
                    self._background.discard(key)
                    self._processing.add(key)
                    return key
                wait = self._wait_seconds_locked(deadline)
                if wait is not None and wait <= 0:
                    return None
                self._cond.wait(wait)

    def _wait_seconds_locked(self, deadline: float | None) -> float | None:
        now = time.monotonic()
        candidates = []
        if deadline is not None:
            if deadline <= now:
                return 0.0
            candidates.append(deadline - now)
        if self._heap:
            candidates.append(self._heap[0][0] - now)
        return max(0.001, min(candidates)) if candidates else None

    def _promote_due_locked(self) -> None:
        now = time.monotonic()
        while self._heap and self._heap[0][0] <= now:
            ready, _, key = heapq.heappop(self._heap)
            if self._waiting.get(key) != ready:
                continue  # superseded by an earlier add_after
            del self._waiting[key]
            self._add_locked(key)

    def done(self, key: K) -> None:
        """Mark ``key`` finished; if it was added meanwhile it is queued again now."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty and not self._shutting_down:
                if key in self._background:
                    self._later[key] = None
                else:
                    self._queue.append(key)
                self._cond.notify()

    # -- observing -----------------------------------------------------------------------------

    def depth(self) -> int:
        """Keys ready to run (not counting ones being processed or still delayed)."""
        with self._cond:
            self._promote_due_locked()
            return len(self._queue) + len(self._later)

    def delayed(self) -> int:
        """Keys waiting for a delayed add or a backoff."""
        with self._cond:
            return len(self._waiting)

    def processing(self) -> int:
        """Keys a worker holds right now."""
        with self._cond:
            return len(self._processing)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    # -- workers -------------------------------------------------------------------------------

    def start_workers(self, handler: Handler[K], workers: int) -> None:
        """Run ``handler(key)`` on ``workers`` threads until ``shutdown()``.

        The handler returns None when the key converged (its backoff is forgotten), or seconds
        after which to look again; an exception retries the key with backoff.
        """
        for index in range(workers):
            thread = threading.Thread(
                target=self._work, args=(handler,), name=f"{self.name}-worker-{index}", daemon=True
            )
            thread.start()
            self._workers.append(thread)

    def _work(self, handler: Handler[K]) -> None:
        while True:
            key = self.get()
            if key is None:
                return
            try:
                self._process(handler, key)
            finally:
                self.done(key)

    def _process(self, handler: Handler[K], key: K) -> None:
        try:
            again = handler(key)
        except Exception as exc:
            delay = self.add_rate_limited(key)
            logger.warning(
                "reconcile failed, retrying",
                exc_info=True,
                extra={
                    "event": "queue_retry",
                    "queue": self.name,
                    "key": str(key),
                    "retry_in": round(delay, 3),
                    "error": str(exc),
                },
            )
            return
        self.forget(key)
        if again is not None:
            self.add_after(key, again)

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop handing out keys, let running handlers finish, and join the workers."""
        with self._cond:
            self._shutting_down = True
            self._cond.notify_all()
        for thread in self._workers:
            thread.join(timeout)
        self._workers.clear()
