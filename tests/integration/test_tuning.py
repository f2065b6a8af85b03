"""actors.tuning: the GC threshold the broker and agents set for their process."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from mams.actors.tuning import GC_YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*saved)


@pytest.mark.usefixtures("thresholds")
def test_raises_only_the_young_threshold_and_only_upwards() -> None:
    gc.set_threshold(700, 7, 9)
    tune_gc()
    tune_gc()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 7, 9)
    gc.set_threshold(GC_YOUNG_THRESHOLD * 2, 7, 9)
    tune_gc()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD * 2, 7, 9)
    gc.set_threshold(0, 7, 9)  # collection switched off on purpose: left so
    tune_gc()
    assert gc.get_threshold() == (0, 7, 9)


def test_the_first_call_freezes_what_the_process_holds_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mams.actors.tuning as tuning

    monkeypatch.setattr(tuning, "_frozen", False)
    try:
        tune_gc()
        frozen = gc.get_freeze_count()
        assert frozen > 0
        made = [[i] for i in range(1000)]  # tracked lists, made after the freeze
        tune_gc()  # not again: what the actors make stays collectable
        assert gc.get_freeze_count() == frozen
        assert made
    finally:
        gc.unfreeze()
