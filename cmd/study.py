"""A study: what one `mams run` planned (runs, seed, rounds, models, items...), stored so
that `mams run --session ID --resume` completes it as planned without the flags given
again, and what a session already has of it (completed, interrupted, live elsewhere).

The plan's flags parse to None when not given; `take_plan` fills those from the stored
plan (the session's newest, table `studies`, migration 0008), `fill_defaults` the rest.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import msgspec

from mams.storage import readmodels
from mams.storage.leases import live_rooms
from mams.storage.readmodels import Queries

DEFAULT_MAX_ROUNDS = 8
DEFAULT_RUNS = 1


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """The flags of one `mams run` that shape its rooms (None: not given, the default)."""

    runs: int | None = None
    seed: int | None = None
    max_rounds: int | None = None
    round_timeout: float | None = None
    buyer_model: str | None = None
    seller_model: str | None = None
    item: list[str] | None = None
    no_monitor: bool | None = None
    rooms_at_once: int | None = None


_FLAGS = tuple(Plan.__struct_fields__)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def plan_of(args: argparse.Namespace) -> Plan:
    """The plan these parsed arguments give (before defaults: None stays None)."""
    return Plan(**{name: getattr(args, name) for name in _FLAGS})


def take_plan(args: argparse.Namespace, stored: Plan) -> list[str]:
    """Fill the flags not given with the stored plan's; the flags so taken, as text."""
    taken: list[str] = []
    for name in _FLAGS:
        value = getattr(stored, name)
        if getattr(args, name) is not None or value is None:
            continue
        setattr(args, name, value)
        if isinstance(value, bool):
            taken.append(_flag(name))
        elif isinstance(value, list):
            taken += [f"{_flag(name)} {v!r}" for v in value]
        else:
            taken.append(f"{_flag(name)} {value}")
    return taken


def fill_defaults(args: argparse.Namespace) -> None:
    """The defaults of the plan's flags that are still None."""
    if args.runs is None:
        args.runs = DEFAULT_RUNS
    if args.max_rounds is None:
        args.max_rounds = DEFAULT_MAX_ROUNDS
    if args.item is None:
        args.item = []
    if args.no_monitor is None:
        args.no_monitor = False


async def save_plan(conn: Queries, session_id: UUID, plan: Plan) -> None:
    """Record a run's plan as the session's newest."""
    await readmodels.save_plan(conn, session_id, msgspec.json.encode(plan))


async def last_plan(conn: Queries, session_id: UUID) -> tuple[Plan, datetime] | None:
    """The session's newest plan and when it was made, or None (no run recorded one)."""
    stored = await readmodels.last_plan(conn, session_id)
    if stored is None:
        return None
    plan, created_at = stored
    return msgspec.json.decode(plan, type=Plan), created_at


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
