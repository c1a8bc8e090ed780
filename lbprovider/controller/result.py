"""What a reconcile tells its worker: converged, look again later, or re-evaluate the pending.

Reconcilers return one of these instead of touching the queue themselves, so every case of a
reconcile reads as a linear step with an early return. Failures are exceptions (the queue
retries them with backoff), never a result.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    DONE = "done"
    RETRY = "retry"
    REPROCESS_PENDING = "reprocess_pending"


@dataclass(frozen=True)
class Result:
    action: Action
    after: float | None = None


DONE = Result(Action.DONE)
# An address was freed: Services waiting for one must look again at once.
REPROCESS_PENDING = Result(Action.REPROCESS_PENDING)


def retry(after: float) -> Result:
    """Look at the key again after ``after`` seconds (a condition that time will change)."""
    return Result(Action.RETRY, after)
