"""Who is calling the HTTP API, and what they may do.

Roles: the operator configures and runs markets and reads everything; a buyer player
plays one session's rooms as the buyer (and reads its own view of them); a seller viewer
reads one seller's view; an observer reads everything. With no token configured (only
allowed on loopback: `mams serve` refuses to bind elsewhere without one), every caller is
the operator.
"""

from __future__ import annotations

from typing import Literal
from uuid import UUID

import msgspec

Role = Literal["operator", "buyer", "seller", "observer"]


class Viewer(msgspec.Struct, frozen=True, kw_only=True):
    """A caller: its role and, for a player, the session and agent it is bound to."""

    role: Role
    session_id: UUID | None = None
    agent: str | None = None
    token_id: str = "open"  # what rate limits count by

    @property
    def sees_everything(self) -> bool:
        return self.role in ("operator", "observer")


OPEN = Viewer(role="operator")
