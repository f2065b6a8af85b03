"""An experiment: arms (who negotiates, how) over one set of scenarios and seeds, paired.

The spec is a TOML file (`mams experiment SPEC.toml`; the README's "Experiments" section
shows one):

    name = "accept-first vs default"
    control = "default"                 # the arm every other arm is compared with
    scenarios = ["phone.toml"]          # scenario files, relative to the spec; or
    # session = "3f2b6c1e-..."          # a stored session's scenario
    seeds = 1                           # the first seed
    repeats = 50                        # runs: seeds 1..50
    max_rounds = 8                      # optional (domain.plan's default)
    rooms_at_once = 100                 # optional
    budget_usd = 5.0                    # optional: no new rooms once spent

    [[arms]]
    name = "default"
    buyer_model = "baseline"

    [[arms]]
    name = "accept-first"
    buyer_model = "baseline"
    buyer_strategy = "accept_first"

An arm's fields override the scenario mapping before it is validated (`apply_arm`):
`buyer_model` / `buyer_strategy` set the buyer's `model` / `strategy`, `seller_model`,
`seller_strategy`, `seller_style`, `customer_retention_weight` and
`profit_maximization_weight` set every seller's (one weight alone sets the other to
1 minus it); `max_rounds` overrides the experiment's for that arm. Strategy names are
validated by `domain.config.parse_scenario`, as in scenario files.

The design is paired: every arm meets the same rooms, (scenario, item, seed) for each
scenario's items and seeds `seeds` .. `seeds + repeats - 1`; each (arm, scenario) is one
stored session. `room_metrics` gives the figures `mams compare` puts side by side.

Pure: no I/O, no clock (reading the spec and scenario files is the CLI's).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec

from mams.domain.analysis import NegotiationAnalysis
from mams.domain.config import STYLES, Problem, check_model
from mams.domain.errors import ConfigError
from mams.domain.plan import DEFAULT_MAX_ROUNDS, PlanOptions

ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,47}$")
MAX_ARMS = 20
MAX_SCENARIOS = 100
MAX_REPEATS = 100_000

TOP_FIELDS = (
    "name",
    "control",
    "arms",
    "scenarios",
    "session",
    "seeds",
    "repeats",
    "max_rounds",
    "rooms_at_once",
    "budget_usd",
)
ARM_FIELDS = (
    "name",
    "buyer_model",
    "buyer_strategy",
    "seller_model",
    "seller_strategy",
    "seller_style",
    "customer_retention_weight",
    "profit_maximization_weight",
    "max_rounds",
)

# The figures compared, per room, in order: (key, what it is).
METRICS: tuple[tuple[str, str], ...] = (
    ("deal_rate", "deal (1) or not (0)"),
    ("savings_pct", "buyer's saving vs the deal seller's first ask, % (deals only)"),
    ("surplus_share", "buyer's share of the surplus, 0..1 (deals with a zone of width)"),
    ("rounds", "rounds the room took"),
    ("tokens", "model tokens, input + output"),
    ("cost_usd", "estimated model cost, USD (rooms whose every call's cost is known)"),
    ("guardrail_rate", "a guardrail tripped in the room (1) or not (0)"),
    ("flags_per_100", "quality flags per 100 messages (rooms with messages)"),
)


class Arm(msgspec.Struct, frozen=True, kw_only=True):
    """One arm: its name and what it overrides (None: the scenario's own)."""

    name: str
    buyer_model: str | None = None
    buyer_strategy: str | None = None
    seller_model: str | None = None
    seller_strategy: str | None = None
    seller_style: str | None = None
    customer_retention_weight: Decimal | None = None
    profit_maximization_weight: Decimal | None = None
    max_rounds: int | None = None


class ExperimentSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A validated spec. `scenarios` are the files as written (relative to the spec's
    folder); exactly one of `scenarios` and `session` is set."""

    name: str
    control: str
    arms: tuple[Arm, ...]
    scenarios: tuple[str, ...] = ()
    session: UUID | None = None
    seeds: int = 0
    repeats: int = 1
    max_rounds: int = DEFAULT_MAX_ROUNDS
    rooms_at_once: int | None = None
    budget_usd: float | None = None

    def arm(self, name: str) -> Arm:
        """The arm of this name (KeyError if none)."""
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise KeyError(name)

    def seed_list(self) -> list[int]:
        """Every room's seed, in order."""
        return [self.seeds + r for r in range(self.repeats)]

    def max_rounds_of(self, arm: Arm) -> int:
        """The round limit of this arm's rooms."""
        return self.max_rounds if arm.max_rounds is None else arm.max_rounds


class ExperimentSpecError(ConfigError):
    """A spec that cannot run; `problems` name each field at fault by its path (the CLI
    exits 2, having written nothing)."""

    def __init__(self, problems: list[Problem], source: str = "experiment") -> None:
        self.problems = problems
        self.source = source
        listed = "; ".join(f"{p.path}: {p.message}" for p in problems)
        super().__init__(f"{source} is not a valid experiment: {listed}")


def _unknown(raw: Mapping[str, Any], path: str, allowed: Sequence[str]) -> list[Problem]:
    found = []
    for key in raw:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            did = f"; did you mean {hint[0]!r}?" if hint else f"; allowed: {', '.join(allowed)}"
            found.append(Problem(f"{path}{key}", f"unknown field{did}"))
    return found


def _int(raw: object, path: str, low: int, high: int, problems: list[Problem]) -> int | None:
    if isinstance(raw, bool) or not isinstance(raw, int):
        problems.append(Problem(path, f"must be a whole number, got {raw!r}"))
        return None
    if not low <= raw <= high:
        problems.append(Problem(path, f"must be from {low} to {high}, got {raw}"))
        return None
    return raw


def _text(raw: object, path: str, problems: list[Problem]) -> str | None:
    if not isinstance(raw, str) or not raw.strip():
        problems.append(Problem(path, f"must be a non-empty string, got {raw!r}"))
        return None
    return raw


def _weight(raw: object, path: str, problems: list[Problem]) -> Decimal | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float | Decimal | str):
        problems.append(Problem(path, f"must be a number between 0 and 1, got {raw!r}"))
        return None
    try:
        value = Decimal(str(raw))
    except ArithmeticError:
        problems.append(Problem(path, f"must be a number between 0 and 1, got {raw!r}"))
        return None
    if not value.is_finite() or not 0 <= value <= 1:
        problems.append(Problem(path, f"must be between 0 and 1, got {raw}"))
        return None
    return value


def _arm(raw: object, path: str, problems: list[Problem]) -> Arm | None:
    if not isinstance(raw, Mapping):
        problems.append(Problem(path, f"must be a table, got {type(raw).__name__}"))
        return None
    before = len(problems)
    problems += _unknown(raw, f"{path}.", ARM_FIELDS)
    name = None
    if "name" not in raw:
        problems.append(Problem(f"{path}.name", "is required"))
    elif (name := _text(raw["name"], f"{path}.name", problems)) is not None and not (
        ARM_NAME.match(name)
    ):
        problems.append(
            Problem(
                f"{path}.name",
                f"must be 1-48 letters, digits, _ . + - (starting with a letter or "
                f"digit), got {name!r}",
            )
        )
    values: dict[str, Any] = {}
    for key in ("buyer_model", "seller_model"):
        if key in raw:
            try:
                values[key] = check_model(raw[key])
            except ValueError as exc:
                problems.append(Problem(f"{path}.{key}", str(exc)))
    for key in ("buyer_strategy", "seller_strategy"):
        if key in raw:
            values[key] = _text(raw[key], f"{path}.{key}", problems)
    if "seller_style" in raw:
        style = raw["seller_style"]
        if style not in STYLES:
            hint = difflib.get_close_matches(str(style), STYLES, n=1)
            did = f"; did you mean {hint[0]!r}?" if hint else ""
            problems.append(
                Problem(f"{path}.seller_style", f"must be one of {', '.join(STYLES)}{did}")
            )
        else:
            values["seller_style"] = style
    for key in ("customer_retention_weight", "profit_maximization_weight"):
        if key in raw:
            values[key] = _weight(raw[key], f"{path}.{key}", problems)
    crw, pmw = values.get("customer_retention_weight"), values.get("profit_maximization_weight")
    if crw is not None and pmw is not None and crw + pmw != 1:
        problems.append(
            Problem(f"{path}.profit_maximization_weight", f"weights must sum to 1, got {crw + pmw}")
        )
    if "max_rounds" in raw:
        values["max_rounds"] = _int(raw["max_rounds"], f"{path}.max_rounds", 2, 100, problems)
    if len(problems) > before or name is None:
        return None
    return Arm(name=name, **{k: v for k, v in values.items() if v is not None})


def parse_spec(raw: object, *, source: str = "experiment") -> ExperimentSpec:
    """Validate a raw spec mapping, collecting every problem (each with its path) before
    raising ExperimentSpecError. Scenario files are not read here (see `apply_arm`)."""
    problems: list[Problem] = []
    if not isinstance(raw, Mapping):
        raise ExperimentSpecError([Problem("spec", "must be a table")], source)
    problems += _unknown(raw, "", TOP_FIELDS)
    name = _text(raw.get("name"), "name", problems) if "name" in raw else None
    if "name" not in raw:
        problems.append(Problem("name", "is required"))
    arms: list[Arm] = []
    raw_arms = raw.get("arms")
    if not isinstance(raw_arms, list) or not raw_arms:
        problems.append(Problem("arms", "is required: one [[arms]] table per arm"))
    elif len(raw_arms) > MAX_ARMS:
        problems.append(Problem("arms", f"has {len(raw_arms)} arms; at most {MAX_ARMS}"))
    else:
        seen: dict[str, int] = {}
        for i, entry in enumerate(raw_arms):
            arm = _arm(entry, f"arms[{i}]", problems)
            if arm is None:
                continue
            if arm.name in seen:
                problems.append(
                    Problem(
                        f"arms[{i}].name", f"duplicate of arms[{seen[arm.name]}] ({arm.name!r})"
                    )
                )
                continue
            seen[arm.name] = i
            arms.append(arm)
    control = None
    if "control" not in raw:
        problems.append(Problem("control", "is required: the name of the control arm"))
    elif (control := _text(raw["control"], "control", problems)) is not None and arms:
        names = [a.name for a in arms]
        if control not in names:
            hint = difflib.get_close_matches(control, names, n=1)
            did = f"; did you mean {hint[0]!r}?" if hint else f"; the arms are {', '.join(names)}"
            problems.append(Problem("control", f"names no arm{did}"))
    scenarios: tuple[str, ...] = ()
    session: UUID | None = None
    if ("scenarios" in raw) == ("session" in raw):
        problems.append(
            Problem("scenarios", 'give scenarios = [files] or session = "<id>", one of them')
        )
    elif "scenarios" in raw:
        files = raw["scenarios"]
        if not isinstance(files, list) or not files:
            problems.append(Problem("scenarios", "must be a non-empty array of file paths"))
        elif len(files) > MAX_SCENARIOS:
            problems.append(
                Problem("scenarios", f"has {len(files)} files; at most {MAX_SCENARIOS}")
            )
        else:
            for i, f in enumerate(files):
                _text(f, f"scenarios[{i}]", problems)
            if all(isinstance(f, str) and f.strip() for f in files):
                dupes = [f for i, f in enumerate(files) if f in files[:i]]
                for f in dupes:
                    problems.append(Problem("scenarios", f"{f!r} is listed twice"))
                scenarios = tuple(files)
    else:
        try:
            session = UUID(str(raw["session"]))
        except ValueError:
            problems.append(Problem("session", f"must be a session id, got {raw['session']!r}"))
    seeds = 0
    if "seeds" in raw:
        seeds = _int(raw["seeds"], "seeds", -(2**31), 2**31 - 1, problems) or 0
    repeats = 1
    if "repeats" in raw:
        repeats = _int(raw["repeats"], "repeats", 1, MAX_REPEATS, problems) or 1
    max_rounds = DEFAULT_MAX_ROUNDS
    if "max_rounds" in raw:
        max_rounds = _int(raw["max_rounds"], "max_rounds", 2, 100, problems) or max_rounds
    rooms_at_once = None
    if "rooms_at_once" in raw:
        rooms_at_once = _int(raw["rooms_at_once"], "rooms_at_once", 1, 10_000, problems)
    budget = None
    if "budget_usd" in raw:
        b = raw["budget_usd"]
        if isinstance(b, bool) or not isinstance(b, int | float | Decimal) or not b > 0:
            problems.append(Problem("budget_usd", f"must be a positive number, got {b!r}"))
        elif not math.isfinite(float(b)):
            problems.append(Problem("budget_usd", f"must be finite, got {b!r}"))
        else:
            budget = float(b)
    for problem in PlanOptions(seed=seeds, runs=repeats, max_rounds=max_rounds).problems():
        if problem.path == "seed":
            problems.append(Problem("seeds", problem.message))
    if problems or name is None or control is None:
        raise ExperimentSpecError(problems, source)
    return ExperimentSpec(
        name=name,
        control=control,
        arms=tuple(arms),
        scenarios=scenarios,
        session=session,
        seeds=seeds,
        repeats=repeats,
        max_rounds=max_rounds,
        rooms_at_once=rooms_at_once,
        budget_usd=budget,
    )


def _complement(value: Decimal) -> Decimal:
    return Decimal(1) - value


def apply_arm(scenario: Mapping[str, Any], arm: Arm) -> dict[str, Any]:
    """The scenario mapping (`domain.config.scenario_to_raw`'s shape) with the arm's
    overrides set; validate it with `parse_scenario`. The input is not changed."""
    out: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(scenario))
    buyer = out.setdefault("buyer", {})
    if isinstance(buyer, dict):
        if arm.buyer_model is not None:
            buyer["model"] = arm.buyer_model
        if arm.buyer_strategy is not None:
            buyer["strategy"] = arm.buyer_strategy
    crw, pmw = arm.customer_retention_weight, arm.profit_maximization_weight
    if crw is not None and pmw is None:
        pmw = _complement(crw)
    elif pmw is not None and crw is None:
        crw = _complement(pmw)
    for seller in out.get("sellers") or []:
        if not isinstance(seller, dict):
            continue
        for key, value in (
            ("model", arm.seller_model),
            ("strategy", arm.seller_strategy),
            ("style", arm.seller_style),
            ("customer_retention_weight", None if crw is None else str(crw)),
            ("profit_maximization_weight", None if pmw is None else str(pmw)),
        ):
            if value is not None:
                seller[key] = value
    return out


ARM_PATHS = {
    "buyer.model": "buyer_model",
    "buyer.strategy": "buyer_strategy",
    "model": "seller_model",
    "strategy": "seller_strategy",
    "style": "seller_style",
    "customer_retention_weight": "customer_retention_weight",
    "profit_maximization_weight": "profit_maximization_weight",
}


def arm_field_of(scenario_path: str) -> str | None:
    """The arm field whose override a scenario problem's path points at
    (`sellers[1].strategy` -> `seller_strategy`), or None."""
    if scenario_path in ARM_PATHS:
        return ARM_PATHS[scenario_path]
    m = re.match(r"^sellers\[\d+\]\.(\w+)$", scenario_path)
    if m and m.group(1) in ARM_PATHS and m.group(1) not in ("buyer.model", "buyer.strategy"):
        return ARM_PATHS[m.group(1)]
    return None


class RoomKey(msgspec.Struct, frozen=True, array_like=True):
    """What pairs rooms across arms: the scenario (as the spec names it), item and seed."""

    scenario: str
    item: str
    seed: int | None


def room_metrics(a: NegotiationAnalysis) -> dict[str, float | None]:
    """One completed room's figures (`METRICS`); None where the room has none."""
    deal = a.deal
    guardrails = sum(sum(g.guardrails.values()) for g in a.agents)
    return {
        "deal_rate": 1.0 if deal is not None else 0.0,
        "savings_pct": deal.saving_vs_first_ask_pct if deal is not None else None,
        "surplus_share": a.surplus.buyer_share if deal is not None else None,
        "rounds": float(a.rounds),
        "tokens": float(a.llm.input_tokens + a.llm.output_tokens),
        "cost_usd": a.llm.cost_usd,
        "guardrail_rate": 1.0 if guardrails else 0.0,
        "flags_per_100": len(a.flags) / a.messages * 100 if a.messages else None,
    }
