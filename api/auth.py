"""Who is calling the HTTP API, and what they may do.

Roles: the operator configures and runs markets and reads everything; a buyer player
plays one session's rooms as the buyer (and reads its own view of them); a seller viewer
reads one seller's view of one session's rooms; an observer reads whole events, of one
session or (minted without one) of every session.

The operator's token is configured when `mams serve` starts (`--token-file`, or the
environment's MAMS_API_TOKEN; never on the command line, which any local user can read in
/proc); the operator mints the others (`POST /api/sessions/{id}/tokens`, `POST
/api/tokens`), stored as a hash only (`mams.storage.tokens`). With a token configured,
every request needs `Authorization: Bearer <token>` (401 otherwise). With none configured
(only allowed on loopback: `mams serve` refuses to bind elsewhere without one) a request
without a token is the operator's, and one with a minted token is that token's.
"""

from __future__ import annotations

import hmac
from typing import Literal
from uuid import UUID

import msgspec
from starlette.requests import Request

from mams.storage.readmodels import Queries
from mams.storage.tokens import verify_token

Role = Literal["operator", "buyer", "seller", "observer"]
MIN_OPERATOR_TOKEN = 24  # characters: `secrets.token_urlsafe(32)` gives 43
SEND = (
    "send the header 'Authorization: Bearer <token>' with the operator's token (the one "
    "mams serve was started with) or a token it minted (POST /api/sessions/{id}/tokens)"
)


class Viewer(msgspec.Struct, frozen=True, kw_only=True):
    """A caller: its role and, for a player or a session's observer, the session (and
    agent) it is bound to."""

    role: Role
    session_id: UUID | None = None
    agent: str | None = None
    token_id: str = "open"  # what rate limits count by

    @property
    def sees_everything(self) -> bool:
        """Whole events and every private term (of the sessions it may see)."""
        return self.role in ("operator", "observer")

    def may_see(self, session_id: UUID) -> bool:
        """Whether this caller may read `session_id`: a token bound to a session reads only
        that one; the operator and an observer minted without a session read every one."""
        if self.session_id is not None:
            return self.session_id == session_id
        return self.sees_everything


OPEN = Viewer(role="operator")


class AuthError(Exception):
    """A request refused before any handler ran (401): what to send instead."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class TokenBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /api/sessions/{id}/tokens` (or `POST /api/tokens`, observers of every
    session): a token for a player or an observer. A seller's names the seller by
    `handle`; a buyer's may name the session's buyer."""

    role: Literal["buyer", "seller", "observer"]
    handle: str | None = None


class TokenMinted(msgspec.Struct, frozen=True, kw_only=True):
    """A minted token, shown this once (only its hash is kept)."""

    token: str
    token_id: str
    role: Literal["buyer", "seller", "observer"]
    session_id: UUID | None
    agent: str | None


def bearer(request: Request) -> str | None:
    """The token of an `Authorization: Bearer` header (AuthError if the header is there
    but says something else), or None without the header."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(f"the Authorization header is not a bearer token: {SEND}")
    return token.strip()


class TokenAuth:
    """`authenticate` for `api.app.Api`: the operator's token (if configured) or a minted
    one, looked up by its public id and compared by hash in constant time."""

    def __init__(self, pool: Queries, operator_token: str | None) -> None:
        if operator_token is not None and len(operator_token) < MIN_OPERATOR_TOKEN:
            raise ValueError(
                f"the API token is {len(operator_token)} characters; use at least "
                f"{MIN_OPERATOR_TOKEN} random ones"
            )
        self.pool = pool
        self.operator = operator_token.encode() if operator_token is not None else None

    @property
    def required(self) -> bool:
        return self.operator is not None

    async def __call__(self, request: Request) -> Viewer:
        token = bearer(request)
        if token is None:
            if self.operator is None:
                return OPEN
            raise AuthError(f"this server needs a token: {SEND}")
        if self.operator is not None and hmac.compare_digest(token.encode(), self.operator):
            return Viewer(role="operator", token_id="operator")
        stored = await verify_token(self.pool, token)
        if stored is None:
            raise AuthError(f"the token is not valid (mistyped, or revoked): {SEND}")
        return Viewer(
            role=stored.role,
            session_id=stored.session_id,
            agent=stored.agent,
            token_id=stored.token_id,
        )
