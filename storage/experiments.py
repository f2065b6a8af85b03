"""Experiments (migration 0013): a spec and, per (arm, scenario), the session its rooms run in.

`create_experiment` stores the experiment, each arm's scenario as a session
(`readmodels.save_session`) and the row tying them, in one transaction: an experiment is
stored whole or not at all. The rooms themselves are ordinary rooms of those sessions.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import msgspec

from mams.domain.config import Scenario
from mams.storage.errors import translating
from mams.storage.readmodels import Conn, Queries, save_session


class ExperimentRow(msgspec.Struct, frozen=True, kw_only=True):
    """A stored experiment: its spec as JSON (`domain.experiment.ExperimentSpec`)."""

    experiment_id: UUID
    name: str
    spec: bytes
    created_at: datetime


class ArmSession(msgspec.Struct, frozen=True, kw_only=True):
    """One (arm, scenario) of an experiment and the session its rooms run in."""

    arm: str
    scenario: str
    session_id: UUID


async def create_experiment(
    conn: Conn,
    experiment_id: UUID,
    name: str,
    spec: bytes,
    sessions: Sequence[tuple[ArmSession, Scenario]],
) -> None:
    """Store the experiment, each (arm, scenario)'s scenario as its session, and the rows
    tying them, in one transaction."""
    with translating():
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO experiments (experiment_id, name, spec) VALUES ($1, $2, $3)",
                experiment_id,
                name,
                spec.decode(),
            )
            for arm, scenario in sessions:
                await save_session(conn, arm.session_id, scenario)
            await conn.executemany(
                "INSERT INTO experiment_arms (experiment_id, arm, scenario, session_id) "
                "VALUES ($1, $2, $3, $4)",
                [(experiment_id, a.arm, a.scenario, a.session_id) for a, _ in sessions],
            )


def _bytes(value: object) -> bytes:
    """A jsonb column's text as bytes (the pool may hand it over as either)."""
    return value if isinstance(value, bytes) else str(value).encode()


async def load_experiment(db: Queries, experiment_id: UUID) -> ExperimentRow | None:
    """The stored experiment, or None."""
    with translating():
        row = await db.fetchrow(
            "SELECT experiment_id, name, spec, created_at FROM experiments "
            "WHERE experiment_id = $1",
            experiment_id,
        )
    if row is None:
        return None
    return ExperimentRow(
        experiment_id=row["experiment_id"],
        name=row["name"],
        spec=_bytes(row["spec"]),
        created_at=row["created_at"],
    )


async def experiment_sessions(db: Queries, experiment_id: UUID) -> list[ArmSession]:
    """The experiment's (arm, scenario) sessions, by arm then scenario."""
    with translating():
        rows = await db.fetch(
            "SELECT arm, scenario, session_id FROM experiment_arms WHERE experiment_id = $1 "
            "ORDER BY arm, scenario",
            experiment_id,
        )
    return [
        ArmSession(arm=r["arm"], scenario=r["scenario"], session_id=r["session_id"]) for r in rows
    ]
