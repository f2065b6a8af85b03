"""Storage errors, and the one place where asyncpg's exceptions become them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

import asyncpg

from mams.domain.errors import MamsError
from mams.domain.redact import redact_url


class StorageError(MamsError):
    """Something went wrong storing or reading events or read models."""


class ConcurrencyError(StorageError):
    """A different event already holds `(stream_id, seq)`: another writer got there first.

    Reload the stream, decide again on the new state, and append with the next seq.
    """

    def __init__(self, stream_id: UUID, seq: int) -> None:
        self.stream_id = stream_id
        self.seq = seq
        super().__init__(
            f"another writer already appended seq {seq} to stream {stream_id}; "
            "reload the stream and decide again"
        )


class DatabaseUnavailable(StorageError):  # noqa: N818 - the name the brief fixed
    """PostgreSQL cannot be reached (refused, restarting, connection lost)."""

    def __init__(self, dsn: str | None, reason: str) -> None:
        self.dsn = redact_dsn(dsn) if dsn else None
        self.reason = reason
        where = f"PostgreSQL at {self.dsn}" if self.dsn else "PostgreSQL"
        super().__init__(
            f"{where} is unavailable ({reason}); start PostgreSQL, "
            "or unset DATABASE_URL to use the embedded one"
        )


def redact_dsn(dsn: str) -> str:
    """Return `dsn` with any password replaced by `***`, safe to log or show.

    The same redactor as the bus's (`mams.domain.redact.redact_url`).
    """
    return redact_url(dsn)


# Errors meaning "the server is not there (now)": retrying later may succeed.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, no such socket file, network unreachable
    TimeoutError,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, restarting
    asyncpg.ConnectionDoesNotExistError,  # connection lost mid-query
    # A server-side disconnect of an idle connection can leave asyncpg's protocol stuck
    # consuming the error ("cannot switch to state ..."); a fresh connection works.
    asyncpg.exceptions._base.InternalClientError,
)

_PK_DETAIL = re.compile(r"\(stream_id, seq\)=\(([0-9a-fA-F-]{36}), (\d+)\)")


def translate(exc: BaseException, *, dsn: str | None = None) -> StorageError | None:
    """Map an asyncpg (or socket) exception to a storage error; None if it is not ours.

    `(stream_id, seq)` collisions become ConcurrencyError only when the detail names the
    key; callers that can do better (the event store) look the key up themselves.
    """
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, asyncpg.UniqueViolationError) and exc.constraint_name == "events_pkey":
        match = _PK_DETAIL.search(exc.detail or "")
        if match:
            return ConcurrencyError(UUID(match.group(1)), int(match.group(2)))
        return None
    if isinstance(exc, _UNAVAILABLE):
        return DatabaseUnavailable(dsn, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
        return DatabaseUnavailable(dsn, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, asyncpg.DataError | asyncpg.IntegrityConstraintViolationError):
        return StorageError(f"PostgreSQL rejected the data: {exc}")
    return None


@contextmanager
def translating(dsn: str | None = None) -> Iterator[None]:
    """Re-raise asyncpg and connection exceptions inside the block as storage errors."""
    try:
        yield
    except (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.exceptions._base.InternalClientError,
        OSError,
        TimeoutError,
    ) as exc:
        mapped = translate(exc, dsn=dsn)
        if mapped is None:
            raise
        raise mapped from exc
