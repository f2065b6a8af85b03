"""The one retry policy of MAMS's database calls: exponential backoff, logged, optionally
bounded. Built on tenacity (a maintained, typed retry library) so the policy is stated, not
re-implemented in each loop.

Use `retrying(step, ...)` for a call that may meet a database that is restarting: the
lease keeper retries forever (it must never take its broker down), the broker's commit
pipeline gives up after `give_up_after` seconds of waiting and lets the error out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_exponential,
)

from mams.storage.errors import DatabaseUnavailable

__all__ = ["FIRST_WAIT", "retrying"]

log = structlog.get_logger("mams.storage.retry")

_T = TypeVar("_T")

# The first wait; each next one doubles, up to the caller's `max_wait`.
FIRST_WAIT = 0.05


async def retrying(
    step: Callable[[], Awaitable[_T]],
    *,
    event: str,
    on: type[BaseException] | tuple[type[BaseException], ...] = DatabaseUnavailable,
    give_up_after: float | None = None,
    max_wait: float = 2.0,
    quiet: tuple[type[BaseException], ...] = (),
) -> _T:
    """Run ``step``; while it raises one of ``on``, wait and run it again.

    Waits start at `FIRST_WAIT` seconds and double up to ``max_wait``. With
    ``give_up_after`` (seconds), once that much time has been spent waiting the last
    error is raised as is; without it, retries go on until the step succeeds or the
    caller is cancelled. Each failure is logged as a warning ``event`` with the error and
    the next wait, except errors of a ``quiet`` type (the routine ones). Errors not in
    ``on`` propagate at once.
    """

    def stop(state: RetryCallState) -> bool:
        return give_up_after is not None and state.idle_for >= give_up_after

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is not None and not isinstance(exc, quiet):
            wait = state.next_action.sleep if state.next_action is not None else None
            log.warning(event, error=str(exc) or repr(exc), retry_in=wait)

    policy = AsyncRetrying(
        retry=retry_if_exception_type(on),
        wait=wait_exponential(multiplier=FIRST_WAIT, max=max_wait),
        stop=stop if give_up_after is not None else stop_never,
        sleep=anyio.sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    return await policy(step)
