"""actors.queues.TurnPool: instant turns run back to back on the permanent workers; slow
turns get a task each (up to the limit), so rooms never wait for each other."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from mams.actors.queues import TurnPool


async def test_instant_turns_take_no_task_beyond_the_workers() -> None:
    done: list[int] = []
    all_done = anyio.Event()
    async with anyio.create_task_group() as tg:
        pool = TurnPool(workers=4, limit=100, queue=1000)
        pool.start(tg)
        await anyio.lowlevel.checkpoint()  # the workers wait for turns
        for i in range(500):  # a burst, submitted without yielding in between

            async def job(i: int = i) -> None:
                done.append(i)
                if len(done) == 500:
                    all_done.set()

            await pool.submit(job)
        with anyio.fail_after(5):
            await all_done.wait()
        pool.close()
    assert sorted(done) == list(range(500))
    assert pool.peak == 4


async def test_slow_turns_each_get_a_task_up_to_the_limit_then_queue() -> None:
    release, full, all_finished = anyio.Event(), anyio.Event(), anyio.Event()
    inside = most = finished = 0

    async def slow() -> None:
        nonlocal inside, most, finished
        inside += 1
        most = max(most, inside)
        if inside == 50:
            full.set()
        await release.wait()
        inside -= 1
        finished += 1
        if finished == 80:
            all_finished.set()

    async with anyio.create_task_group() as tg:
        pool = TurnPool(workers=4, limit=50, queue=1000)
        pool.start(tg)
        for _ in range(80):
            await pool.submit(slow)
        with anyio.fail_after(5):
            await full.wait()  # the limit, not the 4 workers, bounds turns in flight
        await anyio.sleep(0.05)
        assert inside == 50  # the other 30 wait in the queue
        release.set()
        with anyio.fail_after(5):
            await all_finished.wait()
        await anyio.sleep(0.05)
        assert pool.running == 4  # extra tasks ended once nothing was queued
        assert pool.busy == 0
        pool.close()
    assert most == 50


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="workers <= limit"):
        TurnPool(workers=0, limit=10, queue=10)
    with pytest.raises(ValueError, match="workers <= limit"):
        TurnPool(workers=8, limit=4, queue=10)
