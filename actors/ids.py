"""Random (version 4) UUIDs, fast: like uuid.uuid4, but drawing os.urandom 4 KiB at a time.

uuid4's getrandom call per id was 6.8% of the broker's samples, and showed up again in the
agents' (a message id per turn). An instance belongs to one event loop (not thread-safe);
a forked child refills before its first id, so it never repeats its parent's.
"""

from __future__ import annotations

import os
from uuid import UUID

_FORKS = [0]  # bumped in a forked child, so no two processes draw the same random bytes
os.register_at_fork(after_in_child=lambda: _FORKS.__setitem__(0, _FORKS[0] + 1))
_VERSION_4 = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant
_KEEP = ~((0xF000 << 64) | (0xC000 << 48))


class RandomIds:
    """A source of fresh random UUIDs for one event loop."""

    __slots__ = ("_buffer", "_fork", "_next")

    def __init__(self) -> None:
        self._buffer = b""
        self._next = 0
        self._fork = _FORKS[0]

    def new(self) -> UUID:
        """A fresh random UUID (version 4)."""
        at = self._next
        if at >= len(self._buffer) or self._fork != _FORKS[0]:
            self._buffer, at, self._fork = os.urandom(4096), 0, _FORKS[0]
        self._next = at + 16
        return UUID(int=int.from_bytes(self._buffer[at : at + 16]) & _KEEP | _VERSION_4)
