"""heap.settle: start-up objects frozen, young generation collected less often."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from notifier import heap


@pytest.fixture
def restored() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_settle_freezes_what_exists_and_raises_the_young_threshold(restored: None) -> None:
    older = gc.get_threshold()[1:]
    heap.settle()
    assert gc.get_freeze_count() > 1000  # pytest and the imported libraries
    assert gc.get_threshold() == (heap.GEN0_THRESHOLD, *older)
    cycle: list[object] = []
    cycle.append(cycle)  # garbage in a reference cycle is still collected
    del cycle
    assert gc.collect() >= 1
