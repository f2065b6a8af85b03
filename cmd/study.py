"""A study: what one `mams run` planned (runs, seed, rounds, models, items...), stored so
that `mams run --session ID --resume` completes it as planned without the flags given
again, and what a session already has of it (completed, interrupted, live elsewhere).

`StudyFlags` holds the flags as given (None: not given); `merge` fills those not given
from the stored plan (the session's newest, table `studies`, migration 0008), and
`run_options` gives the `RunOptions` they make, defaults from `domain.plan` for the rest.
Nothing here sees argparse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import msgspec

from mams.actors.market import RunOptions
from mams.storage import readmodels
from mams.storage.leases import live_rooms
from mams.storage.readmodels import Queries


class StudyFlags(msgspec.Struct, frozen=True, kw_only=True):
    """The flags of one `mams run` that shape its rooms (None: not given), stored as the
    session's plan (their JSON is the table's)."""

    runs: int | None = None
    seed: int | None = None
    max_rounds: int | None = None
    round_timeout: float | None = None
    buyer_model: str | None = None
    seller_model: str | None = None
    item: list[str] | None = None
    no_monitor: bool | None = None
    rooms_at_once: int | None = None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def merge(given: StudyFlags, stored: StudyFlags) -> tuple[StudyFlags, list[str]]:
    """The flags given, with those not given taken from the stored plan; and the flags so
    taken, as text (`--runs 100`, one `--item 'X'` per item)."""
    taken: list[str] = []
    values: dict[str, object] = {}
    for name in StudyFlags.__struct_fields__:
        mine, theirs = getattr(given, name), getattr(stored, name)
        if mine is not None or theirs is None:
            continue
        values[name] = theirs
        if isinstance(theirs, bool):
            taken.append(_flag(name))
        elif isinstance(theirs, list):
            taken += [f"{_flag(name)} {v!r}" for v in theirs]
        else:
            taken.append(f"{_flag(name)} {theirs}")
    return msgspec.structs.replace(given, **values), taken


def run_options(flags: StudyFlags, *, llm: bool = False) -> RunOptions:
    """The run these flags ask for; what is not given takes `PlanOptions`' default, or
    with `llm` (an agent is an LLM) the round deadline and rooms at once models need."""
    return RunOptions.given(
        llm=llm,
        max_rounds=flags.max_rounds,
        round_timeout=flags.round_timeout,
        seed=flags.seed,
        runs=flags.runs,
        rooms_at_once=flags.rooms_at_once,
        buyer_model=flags.buyer_model,
        seller_model=flags.seller_model,
        monitor=not flags.no_monitor,
    )


async def save_plan(conn: Queries, session_id: UUID, plan: StudyFlags) -> None:
    """Record a run's plan as the session's newest."""
    await readmodels.save_plan(conn, session_id, msgspec.json.encode(plan))


async def last_plan(conn: Queries, session_id: UUID) -> tuple[StudyFlags, datetime] | None:
    """The session's newest plan and when it was made, or None (no run recorded one)."""
    stored = await readmodels.last_plan(conn, session_id)
    if stored is None:
        return None
    plan, created_at = stored
    return msgspec.json.decode(plan, type=StudyFlags), created_at


@dataclass(frozen=True, slots=True)
class Progress:
    """What `mams run --resume` finds of the rooms a session's study already has."""

    completed: int = 0
    interrupted: list[UUID] = field(default_factory=list)  # no live broker: go on with them
    elsewhere: int = 0  # still run by a live broker (another mams run, a mams broker)
    skip: set[tuple[str, int | None]] = field(default_factory=set)  # (item, seed) not to open

    def describe(self, planned: int, new: int) -> str:
        """One line for the person resuming."""
        return (
            f"{self.completed} of {planned} rooms already completed in this session; "
            f"{len(self.interrupted)} interrupted to go on with; {new} to open"
        )


async def progress_of(
    conn: Queries, session_id: UUID, planned: list[tuple[str, int | None]]
) -> Progress:
    """The rooms of these (item, seed) the session already has: completed ones are not run
    again; running ones whose broker is gone (the run was killed) are gone on with from
    their log; running ones a live broker serves are counted (`elsewhere`). Aborted ones
    (Ctrl-C) are opened afresh."""
    wanted = set(planned)
    runs = await readmodels.run_states(conn, session_id, ("completed", "running"))
    runs = [r for r in runs if (r.item_name, r.seed) in wanted]
    running = [r.negotiation_id for r in runs if r.status == "running"]
    live = await live_rooms(conn, running)
    return Progress(
        completed=sum(r.status == "completed" for r in runs),
        interrupted=[nid for nid in running if nid not in live],
        elsewhere=len(live),
        skip={(r.item_name, r.seed) for r in runs},
    )
