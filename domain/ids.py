"""Agent identity: the one rule for what an agent id (and a handle) may be.

An agent id is the bus identity of an agent: it goes into NATS subjects, credentials and
the event log, so it must be one safe subject token. A handle (``@TechMart``) is the name
people read; its agent id is the handle without its ``@``, lowercased. Every place that
checks a handle or derives an id (scenario configs, the bus, the CLI) uses this module, so
two handles can never collapse into one id in one place and stay apart in another.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Final

from mams.domain.errors import MamsError

__all__ = ["TOKEN_RULE", "AgentId", "AgentIdError", "check_token"]

TOKEN_RULE: Final = "1 to 32 characters from [a-z0-9_-], starting with a lowercase letter or digit"
_TOKEN_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
# What a handle may hold before lowercasing: ASCII only, checked on the handle as written,
# because str.lower() maps some non-ASCII letters to ASCII ones (the Kelvin sign U+212A
# lowercases to 'k'), which would let two different handles share one agent id.
_HANDLE_CHARS: Final = frozenset(string.ascii_letters + string.digits + "_-")


class AgentIdError(MamsError, ValueError):
    """A text is not a valid agent id (or subject prefix, or handle).

    Carries the offending ``value``, the ``rule`` it broke and ``what`` it was meant to be.
    """

    def __init__(self, value: str, rule: str, *, what: str = "agent id") -> None:
        self.value = value
        self.rule = rule
        self.what = what
        super().__init__(f"invalid {what} {value!r}: {rule}")


def check_token(value: str, *, what: str) -> str:
    """Return ``value`` if it is one token by `TOKEN_RULE`, else raise `AgentIdError`.

    ``what`` names the value in the error ("agent id", "subject prefix").
    """
    if _TOKEN_RE.fullmatch(value) is None:
        raise AgentIdError(value, f"must be {TOKEN_RULE}", what=what)
    return value


@dataclass(frozen=True, slots=True, order=True)
class AgentId:
    """A validated agent identifier, safe to place in one subject token.

    ``AgentId("techmart")`` validates exactly; ``AgentId.from_handle("@TechMart")``
    normalizes a human handle first.
    """

    value: str

    def __post_init__(self) -> None:
        check_token(self.value, what="agent id")

    @classmethod
    def from_str(cls, text: str) -> AgentId:
        """Parse an agent id exactly as `str()` renders it (no normalization)."""
        return cls(text)

    @classmethod
    def from_handle(cls, handle: str) -> AgentId:
        """Derive the agent id of a handle: strip one leading ``@``, lowercase.

        ``AgentId.from_handle("@TechMart") == AgentId("techmart")``. Any character
        outside ASCII letters, digits, ``_`` and ``-`` is rejected (never silently
        dropped or case-folded into ASCII, so two handles can never collapse into one
        id); the error names the handle and the rule.
        """
        text = handle[1:] if handle.startswith("@") else handle
        bad = sorted({c for c in text if c not in _HANDLE_CHARS})
        if bad:
            shown = ", ".join(repr(c) for c in bad)
            raise AgentIdError(
                handle,
                f"contains {shown}; after an optional leading '@' and lowercasing, "
                f"a handle must be {TOKEN_RULE}",
                what="handle",
            )
        text = text.lower()
        if _TOKEN_RE.fullmatch(text) is None:
            raise AgentIdError(
                handle,
                f"after an optional leading '@' and lowercasing, a handle must be {TOKEN_RULE}",
                what="handle",
            )
        return cls(text)

    def __str__(self) -> str:
        return self.value
