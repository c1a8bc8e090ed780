"""``lbprovider.server.HeapKeeper``: survivors of a slow full collection are frozen, later
objects are not, and a thaw gives the collector everything back."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator

import pytest

from lbprovider.server import HeapKeeper


@pytest.fixture
def keeper_of() -> Iterator[Callable[..., HeapKeeper]]:
    made: list[HeapKeeper] = []

    def make(**kwargs: float) -> HeapKeeper:
        made.append(HeapKeeper(**kwargs).start())
        return made[-1]

    yield make
    for keeper in made:
        keeper.stop()
    gc.unfreeze()  # the process's collector as the test found it (tests freeze nothing else)


def until(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.01)
    return check()


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_the_survivors_of_a_slow_full_collection_are_frozen_and_later_objects_are_not(
    keeper_of: Callable[..., HeapKeeper],
) -> None:
    gc.unfreeze()
    keeper = keeper_of(slow=0.0)  # every full collection counts as slow
    kept = [Cycle() for _ in range(1000)]  # alive through the collection: frozen after it
    gc.collect()
    assert until(lambda: keeper.freezes == 1)
    frozen = gc.get_freeze_count()
    assert frozen >= len(kept)
    Cycle()  # garbage made after the freeze: the collector still finds it
    assert gc.collect(2) >= 1


def test_a_fast_full_collection_freezes_nothing(keeper_of: Callable[..., HeapKeeper]) -> None:
    gc.unfreeze()
    keeper = keeper_of(slow=60.0)
    gc.collect()
    time.sleep(0.1)
    assert keeper.freezes == 0 and gc.get_freeze_count() == 0


def test_a_thaw_gives_every_frozen_object_back_to_the_collector(
    keeper_of: Callable[..., HeapKeeper],
) -> None:
    gc.unfreeze()
    keeper = keeper_of(slow=0.0, thaw_every=0.3)
    gc.collect()
    assert until(lambda: keeper.freezes >= 1) and gc.get_freeze_count() > 0
    keeper.slow = 60.0  # no freeze after this: the thaw is what is seen
    assert until(lambda: keeper.thaws >= 1 and gc.get_freeze_count() == 0)


def test_a_stopped_keeper_leaves_the_collector_alone(keeper_of: Callable[..., HeapKeeper]) -> None:
    gc.unfreeze()
    keeper = keeper_of(slow=0.0)
    keeper.stop()
    assert keeper._on_collection not in gc.callbacks
    gc.collect()
    time.sleep(0.1)
    assert keeper.freezes == 0 and gc.get_freeze_count() == 0
