"""Process-wide settings that the actors' workload needs.

The broker and the agents fold immutable records: every delivered message allocates
hundreds of short-lived objects and makes almost no reference cycles. With CPython's
default collector thresholds (a young-generation collection every 700 net allocations)
the cyclic collector took 20% of the broker process's CPU at 1000 concurrent rooms
(1.66 of 8.5 CPU-seconds, timed with gc.callbacks in bench/throughput.py).
"""

from __future__ import annotations

import gc

GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect the young generation every `GC_YOUNG_THRESHOLD` allocations (or the
    process's own setting if higher); older generations keep their ratios. Idempotent."""
    young, middle, old = gc.get_threshold()
    if 0 < young < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
