"""Process-wide settings that the actors' workload needs.

The broker and the agents fold immutable records: every delivered message allocates
hundreds of short-lived objects and makes almost no reference cycles. With CPython's
default collector thresholds (a young-generation collection every 700 net allocations)
the cyclic collector took 20% of the broker process's CPU at 1000 concurrent rooms
(1.66 of 8.5 CPU-seconds, timed with gc.callbacks in bench/throughput.py).

What a process holds when its first actor starts (modules, configuration, connections)
lives as long as the process, so it is frozen out of the collector's scans once: every
full collection after that walks only what the actors made. In the broker of a run with
1000 rooms that is 43,000 objects instead of 98,000; the longest collector pauses in
bench/throughput.py's `paced` mode went from 19-54 ms to 16-26 ms (broker) and from
217-274 ms to 162-181 ms (the agents' process).
"""

from __future__ import annotations

import gc

GC_YOUNG_THRESHOLD = 50_000


_frozen = False


def tune_gc() -> None:
    """Collect the young generation every `GC_YOUNG_THRESHOLD` allocations (or the
    process's own setting if higher); older generations keep their ratios. The first
    call in a process also collects once and freezes what survives (see above).
    Idempotent."""
    global _frozen
    young, middle, old = gc.get_threshold()
    if 0 < young < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
    if not _frozen and gc.isenabled():
        _frozen = True
        gc.collect()
        gc.freeze()
