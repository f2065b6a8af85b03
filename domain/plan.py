"""Which rooms a study opens, and when: the one room-opening plan of every runtime.

`mams run` in one process, `mams buyer` against a `mams broker` (and the broker answering
its `open_rooms`), and any later front end all plan with `plan_rooms`: the items picked by
name, times the runs' seeds, minus the rooms a study already has, in one order. Their
options, with the defaults, are one struct, `PlanOptions`, checked in one place. `Window`
says which planned rooms open now when at most `rooms_at_once` may be open.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Sequence
from typing import Any, Generic, NamedTuple, Self, TypeVar

import msgspec

from mams.domain.bounds import MAX_ROOMS_PER_REQUEST, room_option_problem
from mams.domain.config import BuyerItem, Problem, Scenario, item_key
from mams.domain.errors import MamsError

DEFAULT_MAX_ROUNDS = 8
DEFAULT_ROUND_TIMEOUT = 30.0  # seconds; a rule-based round takes milliseconds
DEFAULT_RUNS = 1
# A run where any agent is an LLM: a model takes seconds per call and a repair round
# doubles that, so a round's deadline is longer, and only so many rooms open at once: each
# round of a room asks the model 1 + S times, MAMS_LLM_CONCURRENCY (default 8) calls run at
# a time, and 20 rooms of 3 sellers keep a round's wait well inside LLM_ROUND_TIMEOUT.
LLM_ROUND_TIMEOUT = 120.0
LLM_ROOMS_AT_ONCE = 20

T = TypeVar("T")

HUMAN_TURN_TIMEOUT = 86_400.0  # a person playing the buyer: a day per turn


def default_round_timeout(*, llm: bool) -> float:
    """A round's deadline when none is given: longer when an agent is an LLM."""
    return LLM_ROUND_TIMEOUT if llm else DEFAULT_ROUND_TIMEOUT


def default_rooms_at_once(*, llm: bool) -> int | None:
    """Rooms open at once when not given: all, or LLM_ROOMS_AT_ONCE with LLM agents."""
    return LLM_ROOMS_AT_ONCE if llm else None


class PlanOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What shapes a study's rooms, with the defaults every runtime uses.

    `seed` is the first run's seed: run r (from 0) is seeded `seed` + r (0 + r without a
    seed when there are several runs; a single run keeps None). `rooms_at_once` None opens
    every room at once.
    """

    max_rounds: int = DEFAULT_MAX_ROUNDS
    round_timeout: float = DEFAULT_ROUND_TIMEOUT
    seed: int | None = None
    runs: int = DEFAULT_RUNS
    rooms_at_once: int | None = None
    # The buyer's turn's own deadline (None: round_timeout): a person playing the buyer.
    buyer_timeout: float | None = None

    def problems(self) -> list[Problem]:
        """What is out of range, each named by its option (empty: all in range)."""
        found: list[Problem] = []
        for name in ("max_rounds", "round_timeout", "runs"):
            value = getattr(self, name)
            if (problem := room_option_problem(name, value)) is not None:
                found.append(Problem(name, f"{problem}, got {value}"))
        if self.seed is not None:
            last = self.seed + max(self.runs, 1) - 1
            if (problem := room_option_problem("seed", self.seed)) is not None:
                found.append(Problem("seed", f"{problem}, got {self.seed}"))
            elif (problem := room_option_problem("seed", last)) is not None:
                said = f"{problem} for every run (the last run's would be {last})"
                found.append(Problem("seed", f"{said}, got {self.seed}"))
        timeout = self.buyer_timeout
        if timeout is not None and (problem := room_option_problem("round_timeout", timeout)):
            found.append(Problem("buyer_timeout", f"{problem}, got {timeout}"))
        if self.rooms_at_once is not None and self.rooms_at_once < 1:
            found.append(Problem("rooms_at_once", f"must be at least 1, got {self.rooms_at_once}"))
        return found

    @classmethod
    def given(cls, *, llm: bool = False, **given: Any) -> Self:
        """The options these values ask for, None meaning not given: the defaults for the
        rest, and with `llm` (an agent is an LLM) the round deadline and rooms at once
        models need. Out-of-range values are kept for `problems()` to name."""
        values = {name: value for name, value in given.items() if value is not None}
        values.setdefault("round_timeout", default_round_timeout(llm=llm))
        values.setdefault("rooms_at_once", default_rooms_at_once(llm=llm))
        return cls(**values)

    def for_room(self, seed: int | None) -> PlanOptions:
        """The options of one room of this plan: a single run with that run's seed."""
        return msgspec.structs.replace(self, seed=seed, runs=1, rooms_at_once=None)

    def seeds(self) -> list[int | None]:
        """The seed of each run, in order."""
        if self.runs == 1:
            return [self.seed]
        return [(self.seed or 0) + r for r in range(self.runs)]


class PlanError(MamsError):
    """A plan that cannot be made; `problems` name each option or item at fault."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class PlannedRoom(NamedTuple):
    """One room of a plan: a buyer item (by name) and the seed of its run."""

    item_name: str
    seed: int | None

    @property
    def key(self) -> tuple[str, int | None]:
        """What a study knows the room by (`skip` pairs): (normalised item name, seed)."""
        return item_key(self.item_name), self.seed


class Plan(msgspec.Struct, frozen=True):
    """The rooms a study has in all (`planned`: run by run, items in order) and those to
    open (`rooms`: `planned` minus the skipped, which the study already has)."""

    options: PlanOptions
    items: tuple[str, ...]
    planned: tuple[PlannedRoom, ...]
    rooms: tuple[PlannedRoom, ...]

    @property
    def skipped(self) -> int:
        """Planned rooms left out (the study already has them)."""
        return len(self.planned) - len(self.rooms)


def pick_items(scenario: Scenario, names: Iterable[str]) -> list[BuyerItem]:
    """The buyer's items with these names (matched as `item_key` does: case and spacing
    aside), in the scenario's order; no names: every item. Raises PlanError naming the
    unknown ones and listing the scenario's items."""
    wanted = {item_key(n): n for n in names}
    if not wanted:
        return list(scenario.buyer.items)
    items = [i for i in scenario.buyer.items if item_key(i.item_name) in wanted]
    missing = sorted(set(wanted) - {item_key(i.item_name) for i in items})
    if missing:
        known = ", ".join(repr(i.item_name) for i in scenario.buyer.items)
        unknown = ", ".join(repr(wanted[m]) for m in missing)
        raise PlanError(
            [Problem("items", f"{unknown} not in this scenario; its items are {known}")]
        )
    return items


def plan_rooms(
    item_names: Iterable[str],
    options: PlanOptions,
    skip: Collection[tuple[str, int | None]] = (),
) -> Plan:
    """The rooms a study of these items opens: every run's seed times every item, run by
    run, minus the (item name, seed) pairs in `skip`. Names are matched as `item_key` does
    (a name given twice is one item); check them against the scenario first where it is
    known (`pick_items`). Raises PlanError if an option is out of range, there is no item,
    or the study is larger than one request may open (`runs` x items)."""
    problems = options.problems()
    if problems:
        raise PlanError(problems)
    first: dict[str, str] = {}
    for name in item_names:
        first.setdefault(item_key(name), name)
    items = list(first.values())
    if not items:
        raise PlanError([Problem("items", "no item to negotiate")])
    if options.runs * len(items) > MAX_ROOMS_PER_REQUEST:
        raise PlanError(
            [
                Problem(
                    "runs",
                    f"{options.runs} run(s) x {len(items)} item(s) is more than "
                    f"{MAX_ROOMS_PER_REQUEST} rooms in one plan; plan fewer runs or items "
                    "at a time",
                )
            ]
        )
    planned = tuple(PlannedRoom(name, seed) for seed in options.seeds() for name in items)
    skipped = {(item_key(name), seed) for name, seed in skip}
    rooms = tuple(room for room in planned if room.key not in skipped)
    return Plan(options, tuple(items), planned, rooms)


class Window(Generic[T]):
    """Which rooms open when: every one at once, or at most `at_once` open, the next as
    one ends. `open_now` says which to open now (call it first); `ended` says a room has
    ended and returns those that open in its place. `already_open` rooms (taken over from
    an interrupted run) count against `at_once` until they end."""

    def __init__(self, rooms: Sequence[T], at_once: int | None, *, already_open: int = 0) -> None:
        if at_once is not None and at_once < 1:
            raise ValueError(f"at_once must be at least 1, got {at_once}")
        self._waiting = deque(rooms)
        self._at_once = at_once
        self._open = already_open

    def open_now(self) -> list[T]:
        """The waiting rooms that may open now (each counted open from here on)."""
        due: list[T] = []
        while self._waiting and (self._at_once is None or self._open < self._at_once):
            due.append(self._waiting.popleft())
            self._open += 1
        return due

    def ended(self) -> list[T]:
        """One open room has ended; the rooms that open in its place."""
        self._open = max(0, self._open - 1)
        return self.open_now()

    @property
    def waiting(self) -> int:
        """Rooms not opened yet."""
        return len(self._waiting)

    @property
    def open(self) -> int:
        """Rooms counted open."""
        return self._open
