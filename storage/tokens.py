"""API tokens (migration 0012): what the HTTP API's operator mints for players and
observers, stored as the SHA-256 of their secret only.

A token reads `mams_<token_id>_<secret>`. The id is public: it finds the row, and names the
token in logs and rate limits. The secret is 256 random bits (`secrets.token_urlsafe`),
never stored: a row holds its hash, and `verify` compares the hash of what a caller sent
with it by `hmac.compare_digest`, so the comparison takes the same time wherever the two
differ.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Literal
from uuid import UUID

import msgspec

from mams.storage.errors import translating
from mams.storage.readmodels import Queries

PlayerRole = Literal["buyer", "seller", "observer"]
PREFIX = "mams"
_TOKEN = re.compile(r"mams_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_TOKEN_ID = re.compile(r"[0-9a-f]{16}")


class StoredToken(msgspec.Struct, frozen=True, kw_only=True):
    """What a verified token stands for."""

    token_id: str
    role: PlayerRole
    session_id: UUID | None
    agent: str | None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_token(token: str) -> tuple[str, str] | None:
    """(token_id, secret) of a token in the minted shape, or None."""
    found = _TOKEN.fullmatch(token)
    return None if found is None else (found.group(1), found.group(2))


async def mint_token(
    db: Queries, role: PlayerRole, session_id: UUID | None, agent: str | None
) -> tuple[str, StoredToken]:
    """A new token (shown once: only its hash is stored) and what it stands for."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    with translating():
        await db.execute(
            "INSERT INTO api_tokens (token_id, secret_sha256, role, session_id, agent) "
            "VALUES ($1, $2, $3, $4, $5)",
            token_id,
            _digest(secret),
            role,
            session_id,
            agent,
        )
    stored = StoredToken(token_id=token_id, role=role, session_id=session_id, agent=agent)
    return f"{PREFIX}_{token_id}_{secret}", stored


async def verify_token(db: Queries, token: str) -> StoredToken | None:
    """What `token` stands for, or None if it is not a live minted token."""
    parts = parse_token(token)
    if parts is None:
        return None
    token_id, secret = parts
    with translating():
        row = await db.fetchrow(
            "SELECT secret_sha256, role, session_id, agent FROM api_tokens "
            "WHERE token_id = $1 AND revoked_at IS NULL",
            token_id,
        )
    # Hash and compare even for an unknown id, so both take the same time.
    expected = bytes(row["secret_sha256"]) if row is not None else bytes(32)
    if not hmac.compare_digest(_digest(secret), expected) or row is None:
        return None
    return StoredToken(
        token_id=token_id, role=row["role"], session_id=row["session_id"], agent=row["agent"]
    )


async def revoke_token(db: Queries, token_id: str) -> bool:
    """Refuse the token from now on; False if there is no such live token."""
    if not _TOKEN_ID.fullmatch(token_id):  # never minted (and may hold what text columns refuse)
        return False
    with translating():
        done = await db.fetchval(
            "UPDATE api_tokens SET revoked_at = now() "
            "WHERE token_id = $1 AND revoked_at IS NULL RETURNING true",
            token_id,
        )
    return bool(done)
