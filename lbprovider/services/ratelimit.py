"""Failed-authentication limiter shared by the REST API (bearer tokens) and the dashboard
(sign-in form): after ``limit`` failures from one client address within a minute, that client
is told to wait (429 with ``Retry-After``) before its next attempt is even looked at.

In memory and per process (each app instance has its own): it slows a guesser down, it is not
an account lockout. Stdlib only; it knows nothing of HTTP, tokens or the database.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

WINDOW_SECONDS = 60.0


class FailedAuthLimiter:
    """Sliding one-minute window of failed authentications per client address."""

    def __init__(self, limit: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int:
        """Seconds the client must wait, 0 when it may try."""
        with self._lock:
            window = self._prune(client)
            if len(window) < self.limit:
                return 0
            return max(1, int(window[0] + WINDOW_SECONDS - self.clock()) + 1)

    def failed(self, client: str) -> None:
        with self._lock:
            self._prune(client).append(self.clock())

    def _prune(self, client: str) -> deque[float]:
        window = self._failures.setdefault(client, deque())
        horizon = self.clock() - WINDOW_SECONDS
        while window and window[0] <= horizon:
            window.popleft()
        if not window:
            del self._failures[client]
            return self._failures.setdefault(client, deque())
        return window
