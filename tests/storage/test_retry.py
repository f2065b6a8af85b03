"""storage/retry.py: the one retry policy (backoff, give up, logging) of database calls."""

from __future__ import annotations

import anyio
import pytest
import structlog

from mams.storage.errors import DatabaseUnavailable, StorageError
from mams.storage.pg import create_pool
from mams.storage.retry import retrying

REFUSED = "postgresql://mams:hunter2@127.0.0.1:1/nowhere"


class Flaky:
    """A step that fails `failures` times with `error`, then returns "done"."""

    def __init__(self, failures: int, error: BaseException) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


async def test_retries_until_the_step_succeeds_and_logs_each_failure() -> None:
    step = Flaky(3, DatabaseUnavailable(REFUSED, "refused"))
    with structlog.testing.capture_logs() as logs:
        with anyio.fail_after(10):
            assert await retrying(step, event="test.retry") == "done"
    assert step.calls == 4
    warned = [e for e in logs if e["event"] == "test.retry"]
    # waits double from 50 ms; the password never reaches the log
    assert [e["retry_in"] for e in warned] == [0.05, 0.1, 0.2]
    assert all("hunter2" not in e["error"] for e in warned)


async def test_gives_up_after_the_time_spent_waiting() -> None:
    # waits 0.05 then 0.1: after 0.15 s of waiting >= 0.1, the third failure is raised
    step = Flaky(100, DatabaseUnavailable(None, "refused"))
    with anyio.fail_after(10), pytest.raises(DatabaseUnavailable):
        await retrying(step, event="test.retry", give_up_after=0.1)
    assert step.calls == 3


async def test_other_errors_propagate_at_once_and_quiet_ones_are_not_logged() -> None:
    step = Flaky(1, StorageError("PostgreSQL rejected the data"))
    with pytest.raises(StorageError, match="rejected"):
        await retrying(step, event="test.retry")
    assert step.calls == 1

    quiet = Flaky(2, DatabaseUnavailable(None, "restarting"))
    with structlog.testing.capture_logs() as logs:
        with anyio.fail_after(10):
            await retrying(quiet, event="test.retry", on=Exception, quiet=(DatabaseUnavailable,))
    assert quiet.calls == 3
    assert not [e for e in logs if e["event"] == "test.retry"]


async def test_a_real_refused_server_is_retried_then_reported() -> None:
    calls = 0

    async def connect() -> None:
        nonlocal calls
        calls += 1
        pool = await create_pool(REFUSED)
        await pool.close()

    with anyio.fail_after(20), pytest.raises(DatabaseUnavailable) as caught:
        await retrying(connect, event="test.retry", give_up_after=0.1)
    assert calls == 3
    assert "hunter2" not in str(caught.value)
