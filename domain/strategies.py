"""Negotiation strategies: named, versioned ways for a buyer or a seller to play.

A `Strategy` is what an agent plays beside its model (and, for a seller, its style and
weights): for an LLM brain a paragraph of its system prompt (`prompt`), for a baseline
brain the rule variant's parameters (`rules`: `BuyerRules` or `SellerRules`). The
built-ins are below; a scenario (and an experiment file) may define its own with
`[strategies.<name>]` (`side`, `version`, `prompt`, `base`: the built-in whose rules its
baseline brain plays), validated by `domain.config`.

Every version of a built-in stays here once released, so a room's log, which records
what each agent played by its label (`name@version`, see `Strategy.label`), is replayed
and rerun with the same rules and the same prompt. The built-in `default` is today's
behaviour, unchanged: its label is plain `"default"` (what logs written before
strategies existed mean), and its prompt is empty, so the prompts of rooms that play it
are those from before.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

from mams.domain.errors import MamsError

Side = Literal["buyer", "seller"]
SIDES: tuple[Side, ...] = ("buyer", "seller")
DEFAULT = "default"


class BuyerRules(msgspec.Struct, frozen=True, kw_only=True, tag="buyer"):
    """The baseline buyer's rule variant (`actors.brains.baseline.BaselineBuyer`).

    Its target price rises from `min_price` (less `opening_discount` of it: an anchor
    below the ideal) to `max_price` over the rounds, along progress to the power `pace`
    (2 concedes late). `counter`: propose the target (`target`), the midpoint of the last
    counter and the best offer (`split`), or just under the best standing offer, cited
    as such (`beat`). `accept`: at or under the target (or, with `accept_asked`, at or
    under what it had countered), or the first offer within max (`first`).
    `threat_rounds`: the last rounds before the final one carry a walk-away threat."""

    opening_discount: Decimal = Decimal(0)
    pace: int = 1
    counter: Literal["target", "split", "beat"] = "target"
    accept: Literal["target", "first"] = "target"
    accept_asked: bool = True
    threat_rounds: int = 0


class SellerRules(msgspec.Struct, frozen=True, kw_only=True, tag="seller"):
    """The baseline seller's rule variant (`actors.brains.baseline.BaselineSeller`).

    `concession` scales the share of the gap to its floor it gives up each round;
    `opening` scales how far under its asking price it opens; `meet`: take a buyer's
    counter when it is close to its own price (`close`), whenever it is at or above its
    floor (`floor`), or only when it is at or above its own price (`never`)."""

    concession: Decimal = Decimal(1)
    opening: Decimal = Decimal(1)
    meet: Literal["close", "floor", "never"] = "close"


class Strategy(msgspec.Struct, frozen=True, kw_only=True):
    """A named, versioned way to play one side: an LLM prompt paragraph and the baseline
    rules. `base` is set for a user-defined strategy: the label of the built-in whose
    rules it plays."""

    name: str
    version: int
    description: str
    prompt: str
    rules: BuyerRules | SellerRules
    base: str = ""

    @property
    def side(self) -> Side:
        """Which agent plays it."""
        return "buyer" if isinstance(self.rules, BuyerRules) else "seller"

    @property
    def label(self) -> str:
        """`name@version`, as the log records it; plain `default` for the built-in
        default's first version (what older logs, with no strategy, mean)."""
        if self.name == DEFAULT and self.version == 1:
            return DEFAULT
        return f"{self.name}@{self.version}"

    @property
    def builtin(self) -> bool:
        """Whether this is one of the built-ins (not defined by a scenario)."""
        return not self.base


class StrategyError(MamsError):
    """A strategy label that names no known strategy."""


def _buyer(name: str, description: str, prompt: str, **rules: object) -> Strategy:
    return Strategy(
        name=name,
        version=1,
        description=description,
        prompt=prompt,
        rules=msgspec.convert(rules, BuyerRules),
    )


def _seller(name: str, description: str, prompt: str, **rules: object) -> Strategy:
    return Strategy(
        name=name,
        version=1,
        description=description,
        prompt=prompt,
        rules=msgspec.convert(rules, SellerRules),
    )


# Every released version, oldest first; a new version is appended, never edited in place.
BUILTINS: tuple[Strategy, ...] = (
    _buyer("default", "counter along a target rising from min to max; accept in range", ""),
    _buyer(
        "anchor_low",
        "anchor well below the ideal price, then concede in small steps",
        "Anchor low: make your first counter well below your ideal price and concede in "
        "small steps, so that the price settles near your ideal.",
        opening_discount=Decimal("0.25"),
    ),
    _buyer(
        "cite_offers",
        "play sellers against each other by citing the best real standing offer",
        "Play the sellers against each other: tell them the best standing offer you "
        "actually have (never invent one) and ask them to beat it.",
        counter="beat",
    ),
    _buyer(
        "patient",
        "concede slowly and hold out for the target",
        "Be patient: concede slowly, use the rounds you have, and accept only an offer at "
        "or below the price you are aiming for, or on your final turn.",
        pace=2,
        accept_asked=False,
    ),
    _buyer(
        "split_difference",
        "counter at the midpoint of the last counter and the best offer",
        "Split the difference: each counter proposes the midpoint between your last "
        "counter and the best standing offer.",
        counter="split",
    ),
    _buyer(
        "walk_away_threat",
        "near the end, threaten to walk away without a deal",
        "Near the end, make it clear that you will walk away without a deal unless the "
        "price comes down.",
        threat_rounds=2,
    ),
    _buyer(
        "accept_first",
        "accept the first offer within the maximum price",
        "Close at once: accept the first standing offer at or below your maximum price.",
        accept="first",
    ),
    _seller("default", "concede toward the floor at a pace set by the weights", ""),
    _seller(
        "firm",
        "concede little and slowly; never simply meet a counter",
        "Hold firm: open at your asking price, concede little and slowly, and do not simply "
        "meet the buyer's counters.",
        concession=Decimal("0.5"),
        opening=Decimal(0),
        meet="never",
    ),
    _seller(
        "flexible",
        "concede readily toward the floor",
        "Be flexible: concede readily toward your floor to keep the buyer.",
        concession=Decimal("1.5"),
        opening=Decimal(2),
    ),
    _seller(
        "quick_close",
        "open lower and take any counter at or above the floor",
        "Close quickly: open a little below your asking price and accept any counter at or "
        "above your floor.",
        concession=Decimal("1.5"),
        opening=Decimal(3),
        meet="floor",
    ),
)


def split_label(label: str) -> tuple[str, int | None]:
    """`("name", version)` of `name@version`; `("name", None)` for a bare name. Raises
    ValueError for a version that is not a whole number from 1."""
    name, sep, version = label.partition("@")
    if not sep:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise ValueError(f"{label!r}: the version after '@' must be a whole number from 1")
    return name, int(version)


def builtin_names(side: Side) -> tuple[str, ...]:
    """The built-in strategies' names for one side, in their order."""
    return tuple(dict.fromkeys(s.name for s in BUILTINS if s.side == side))


def find(side: Side, label: str, defined: tuple[Strategy, ...] = ()) -> Strategy | None:
    """The strategy `label` (`name`, or `name@version`) names for `side`, among the
    built-ins and `defined` (a scenario's own); a bare name is its latest version. None
    if there is none (or the label is malformed)."""
    try:
        name, version = split_label(label)
    except ValueError:
        return None
    found = [s for s in (*BUILTINS, *defined) if s.side == side and s.name == name]
    if version is not None:
        found = [s for s in found if s.version == version]
    return found[-1] if found else None


def resolve(side: Side, label: str, prompt: str = "", base: str = "") -> Strategy:
    """The strategy an agent plays, as its room's terms record it: a built-in by its label,
    or (with `base` set) a user-defined one, whose prompt the terms carry and whose rules
    are its base's. Raises StrategyError for a label no built-in has."""
    if base:
        rules = resolve(side, base).rules
        name, version = split_label(label)
        return Strategy(
            name=name, version=version or 1, description="", prompt=prompt, rules=rules, base=base
        )
    found = find(side, label)
    if found is None:
        known = ", ".join(builtin_names(side))
        raise StrategyError(f"no {side} strategy {label!r}; built-in: {known}")
    return found


def prompt_paragraph(strategy: Strategy) -> str:
    """What an LLM's system prompt adds for this strategy: nothing for one with no
    prompt (the default), else a paragraph naming it by its label."""
    if not strategy.prompt:
        return ""
    return f"\n\nYour negotiation strategy ({strategy.label}): {strategy.prompt}"
