"""Session drafts (migration 0011): a session assembled piece by piece through the HTTP
API, frozen into `sessions` when its first room opens.

A draft's `config` is a scenario mapping (`domain.config.scenario_to_raw`'s shape) that
may still be incomplete; the caller validates each part before it is stored and the whole
before it is frozen. Every change runs in a transaction holding the draft's row, so two
requests adding sellers at once both land, and none lands after the freeze.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from mams.domain.config import Scenario
from mams.domain.errors import MamsError
from mams.storage.errors import translating
from mams.storage.readmodels import Conn, Queries, load_session, save_session

_json = msgspec.json.Encoder(decimal_format="string")


class Draft(msgspec.Struct, frozen=True, kw_only=True):
    """One draft: its description, the scenario mapping so far, and whether it is frozen."""

    session_id: UUID
    description: str
    config: dict[str, Any]
    created_at: datetime
    frozen_at: datetime | None


class DraftFrozenError(MamsError):
    """A change to a session whose rooms have started (its configuration is fixed)."""


def _draft(row: Any) -> Draft:
    return Draft(
        session_id=row["session_id"],
        description=row["description"],
        config=msgspec.json.decode(row["config"]),
        created_at=row["created_at"],
        frozen_at=row["frozen_at"],
    )


async def _locked(conn: Conn, session_id: UUID) -> Any:
    """The draft's row, locked until the transaction ends (None if there is none)."""
    return await conn.fetchrow(
        "SELECT session_id, description, config, created_at, frozen_at "
        "FROM session_drafts WHERE session_id = $1 FOR UPDATE",
        session_id,
    )


async def create_draft(
    db: Queries, session_id: UUID, description: str, config: dict[str, Any]
) -> Draft:
    """A new draft (its id chosen by the caller)."""
    with translating():
        row = await db.fetchrow(
            "INSERT INTO session_drafts (session_id, description, config) VALUES ($1, $2, $3) "
            "RETURNING session_id, description, config, created_at, frozen_at",
            session_id,
            description,
            _json.encode(config).decode(),
        )
    return _draft(row)


async def get_draft(db: Queries, session_id: UUID) -> Draft | None:
    """The draft with this id, or None."""
    with translating():
        row = await db.fetchrow(
            "SELECT session_id, description, config, created_at, frozen_at "
            "FROM session_drafts WHERE session_id = $1",
            session_id,
        )
    return None if row is None else _draft(row)


async def change_draft(
    conn: Conn, session_id: UUID, change: Callable[[dict[str, Any]], dict[str, Any]]
) -> Draft | None:
    """Apply `change` to the draft's config under its row lock and store the result; None
    if there is no such draft. Raises DraftFrozenError once its rooms have started, and
    whatever `change` raises (nothing is stored then)."""
    with translating():
        async with conn.transaction():
            row = await _locked(conn, session_id)
            if row is None:
                return None
            draft = _draft(row)
            if draft.frozen_at is not None:
                raise DraftFrozenError(
                    f"session {session_id} has started negotiating: its configuration is "
                    "fixed; create a new session to change it"
                )
            config = change(draft.config)
            await conn.execute(
                "UPDATE session_drafts SET config = $2 WHERE session_id = $1",
                session_id,
                _json.encode(config).decode(),
            )
    return msgspec.structs.replace(draft, config=config)


async def freeze_draft(
    conn: Conn, session_id: UUID, validate: Callable[[dict[str, Any]], Scenario]
) -> Scenario | None:
    """The session's scenario, freezing its draft first if it is not yet: `validate`
    turns the config into a Scenario (or raises, nothing changed), which is stored as the
    session. A session stored without a draft (`mams run`) is returned as stored. None if
    there is neither."""
    with translating():
        async with conn.transaction():
            row = await _locked(conn, session_id)
            if row is None or row["frozen_at"] is not None:
                return await load_session(conn, session_id)
            scenario = validate(_draft(row).config)
            await save_session(conn, session_id, scenario)
            await conn.execute(
                "UPDATE session_drafts SET frozen_at = now() WHERE session_id = $1", session_id
            )
    return scenario


class SessionSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A session as a list shows it: a draft (frozen or not) or a stored session."""

    session_id: UUID
    description: str
    created_at: datetime
    frozen: bool
    negotiations: int


async def list_session_summaries(db: Queries, *, limit: int, offset: int) -> list[SessionSummary]:
    """Drafts and stored sessions, newest first (`limit` from `offset`)."""
    with translating():
        rows = await db.fetch(
            """
            SELECT coalesce(d.session_id, s.session_id) AS session_id,
                   coalesce(d.description, s.name, '') AS description,
                   coalesce(d.created_at, s.created_at) AS created_at,
                   (s.session_id IS NOT NULL) AS frozen,
                   (SELECT count(*) FROM negotiation_runs r
                     WHERE r.session_id = coalesce(d.session_id, s.session_id)) AS negotiations
            FROM session_drafts d FULL OUTER JOIN sessions s USING (session_id)
            ORDER BY 3 DESC, 1 LIMIT $1 OFFSET $2
            """,
            limit,
            offset,
        )
    return [SessionSummary(**dict(r)) for r in rows]
