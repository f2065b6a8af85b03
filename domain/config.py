"""Scenario configuration: the buyer, the sellers, and every rule a scenario must obey.

`parse_scenario` reads the raw mapping a TOML or JSON file gives and either returns a
`Scenario` or raises `ScenarioError` listing *every* problem with its path, for example
`sellers[2].inventory[0].least_price: must be greater than cost_price (8.00)`.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from mams.domain.bounds import (
    MAX_DESCRIPTION,
    MAX_NAME,
    MAX_PRICE,
    MAX_QUANTITY,
    MAX_SCENARIO_BYTES,
    MAX_SCENARIO_DEPTH,
    MAX_SCENARIO_ITEMS,
    MAX_SCENARIO_SELLERS,
    MAX_SCENARIO_VALUES,
    MAX_TOTAL,
    BoundsError,
    check_label,
    check_nesting,
)
from mams.domain.bounds import MAX_SELLERS_PER_ITEM as MAX_SELLERS_PER_ITEM
from mams.domain.errors import MamsError
from mams.domain.ids import AgentId, AgentIdError
from mams.domain.money import parse_price
from mams.domain.strategies import (
    BUILTINS,
    DEFAULT,
    SIDES,
    Side,
    Strategy,
    builtin_names,
    find,
    split_label,
)
from mams.domain.voices import check_voice

Style = Literal["rude", "neutral", "sweet"]
STYLES: tuple[Style, ...] = ("rude", "neutral", "sweet")
BASELINE_MODEL = "baseline"
# "auto": an LLM if one is configured in the environment, else the baseline brains.
AUTO_MODEL = "auto"
MODEL_PROVIDERS = ("anthropic", "openai", "openrouter")


class InventoryItem(msgspec.Struct, frozen=True, kw_only=True):
    """One item a seller stocks, with its private cost, asking price and floor."""

    item_name: str
    cost_price: Decimal
    selling_price: Decimal
    least_price: Decimal


class SellerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A seller agent: public handle, private style, weights and inventory."""

    handle: str
    style: Style
    customer_retention_weight: Decimal
    profit_maximization_weight: Decimal
    inventory: tuple[InventoryItem, ...]
    model: str = AUTO_MODEL
    # The strategy it plays (`domain.strategies`): a built-in's or the scenario's own name,
    # optionally `name@version`.
    strategy: str = DEFAULT
    # The voice its lines are read in (`domain.voices.VOICES`); None: chosen from its style
    # and handle (`domain.voices.cast_voices`).
    voice: str | None = None

    @property
    def agent_id(self) -> str:
        """The bus identity derived from the handle (`@TechMart` -> `techmart`)."""
        return agent_id_of(self.handle)

    def stock(self, item_name: str) -> InventoryItem | None:
        """This seller's inventory entry for an item, matched by normalized name."""
        key = item_key(item_name)
        for entry in self.inventory:
            if item_key(entry.item_name) == key:
                return entry
        return None


class BuyerItem(msgspec.Struct, frozen=True, kw_only=True):
    """One item the buyer needs, with its private unit price range."""

    item_name: str
    quantity: int
    min_price: Decimal
    max_price: Decimal


class BuyerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The buyer agent and the items it needs."""

    items: tuple[BuyerItem, ...]
    handle: str = "@Buyer"
    model: str = AUTO_MODEL
    strategy: str = DEFAULT  # as SellerConfig.strategy

    @property
    def agent_id(self) -> str:
        """The buyer's bus identity."""
        return agent_id_of(self.handle)


class Scenario(msgspec.Struct, frozen=True, kw_only=True):
    """A whole market: one buyer, its items, and the sellers who may sell them."""

    name: str
    buyer: BuyerConfig
    sellers: tuple[SellerConfig, ...]
    description: str = ""
    # The strategies the scenario defines (`[strategies.<name>]`), beside the built-ins.
    strategies: tuple[Strategy, ...] = ()

    def strategy(self, side: Side, name: str) -> Strategy:
        """The strategy `name` (as an agent's `strategy` field holds it) for `side`."""
        found = find(side, name, self.strategies)
        if found is None:  # parse_scenario refuses such a name
            raise ScenarioError([Problem("strategy", f"no {side} strategy {name!r}")])
        return found

    def sellers_of(self, item_name: str) -> tuple[SellerConfig, ...]:
        """The sellers stocking an item, in scenario order."""
        return tuple(s for s in self.sellers if s.stock(item_name) is not None)

    def buyer_item(self, item_name: str) -> BuyerItem:
        """The buyer's entry for an item; raises ScenarioError naming the known items."""
        key = item_key(item_name)
        for item in self.buyer.items:
            if item_key(item.item_name) == key:
                return item
        known = ", ".join(repr(i.item_name) for i in self.buyer.items)
        raise ScenarioError([Problem("buyer.items", f"no item {item_name!r}; known: {known}")])


class Problem(msgspec.Struct, frozen=True):
    """One thing wrong with a scenario, at a path like `sellers[2].style`."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ScenarioError(MamsError):
    """A scenario that cannot run; carries every problem found, each with its path."""

    def __init__(self, problems: list[Problem], source: str = "scenario") -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source} has {len(problems)} problem(s):\n{lines}")


Stockists = tuple[tuple[SellerConfig, InventoryItem], ...]


def stock_index(scenario: Scenario) -> dict[str, Stockists]:
    """Who stocks what, by normalized item name: one pass over every inventory, so a run
    with many items need not search every seller's inventory for every item."""
    index: dict[str, list[tuple[SellerConfig, InventoryItem]]] = {}
    for seller in scenario.sellers:
        for entry in seller.inventory:
            index.setdefault(item_key(entry.item_name), []).append((seller, entry))
    return {key: tuple(found) for key, found in index.items()}


def item_key(name: str) -> str:
    """Normalize an item name for matching buyer needs to seller stock."""
    return " ".join(name.casefold().split())


def agent_id_of(handle: str) -> str:
    """Derive the bus identity from a handle: strip `@`, lowercase, validate as a token.

    The rule is `AgentId.from_handle`'s (domain/ids.py), the one the bus and the CLI use.
    Raises `AgentIdError` (a ValueError) naming the handle and the rule.
    """
    try:
        return AgentId.from_handle(handle).value
    except AgentIdError as e:
        raise AgentIdError(
            handle,
            f"must be @ followed by 1-32 letters, digits, '_' or '-' ({e.rule})",
            what="handle",
        ) from None


def _is_handle(raw: object) -> bool:
    """Whether ``raw`` is a handle an agent id can be derived from."""
    if not isinstance(raw, str):
        return False
    try:
        AgentId.from_handle(raw)
    except AgentIdError:
        return False
    return True


def display_handle(handle: str) -> str:
    """The handle as people see it, always with its `@`."""
    return handle if handle.startswith("@") else f"@{handle}"


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file (.toml or .json); raises ScenarioError."""
    source = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_SCENARIO_BYTES:  # before reading it all into memory
            raise ScenarioError(
                [Problem("file", f"is {size} bytes; a scenario is at most {MAX_SCENARIO_BYTES}")],
                source,
            )
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError([Problem("file", f"cannot read: {exc.strerror}")], source) from None
    except UnicodeDecodeError as exc:
        raise ScenarioError([Problem("file", f"is not UTF-8 text: {exc}")], source) from None
    return parse_scenario_text(
        text,
        fmt="json" if path.suffix.lower() == ".json" else "toml",
        source=source,
        default_name=path.stem,
    )


def parse_scenario_text(
    text: str, *, fmt: Literal["toml", "json"], source: str = "scenario", default_name: str = ""
) -> Scenario:
    """Parse TOML or JSON text (decimals exact) and validate it; raises ScenarioError, also
    for text too big (MAX_SCENARIO_BYTES) or nested too deeply to parse."""
    if len(text) > MAX_SCENARIO_BYTES:
        raise ScenarioError(
            [Problem("file", f"is {len(text)} characters; at most {MAX_SCENARIO_BYTES}")], source
        )
    try:
        if fmt == "json":
            raw = json.loads(text, parse_float=Decimal)
        else:
            raw = tomllib.loads(text, parse_float=Decimal)
    except RecursionError:
        # Both parsers recurse per level; a scenario nests MAX_SCENARIO_DEPTH at most.
        raise ScenarioError(
            [
                Problem(
                    "file",
                    f"not valid {fmt.upper()}: nested too deeply (a scenario nests at most "
                    f"{MAX_SCENARIO_DEPTH} levels)",
                )
            ],
            source,
        ) from None
    except ValueError as exc:  # their decode errors, and integers beyond 4,300 digits
        why = str(exc)
        if "integer string conversion" in why:  # not Python's advice to raise the limit
            why = "holds a number of more than 4300 digits"
        raise ScenarioError([Problem("file", f"not valid {fmt.upper()}: {why}")], source) from None
    return parse_scenario(raw, source=source, default_name=default_name)


def parse_scenario(raw: object, *, source: str = "scenario", default_name: str = "") -> Scenario:
    """Validate a raw mapping into a Scenario, collecting every problem before raising.

    Input nested deeper than MAX_SCENARIO_DEPTH or holding more than MAX_SCENARIO_VALUES
    values is refused first, as one problem, without walking it recursively.
    """
    try:
        check_nesting(raw, "", depth=MAX_SCENARIO_DEPTH, values=MAX_SCENARIO_VALUES)
    except BoundsError as exc:
        raise ScenarioError([Problem("scenario", exc.reason)], source) from None
    v = _Validator()
    scenario = v.scenario(raw, default_name)
    if v.problems or scenario is None:
        raise ScenarioError(v.problems, source)
    return scenario


def _part(raw: object, source: str, read: Callable[[_Validator, object], _P | None]) -> _P:
    try:
        check_nesting(raw, "", depth=MAX_SCENARIO_DEPTH, values=MAX_SCENARIO_VALUES)
    except BoundsError as exc:
        raise ScenarioError([Problem(source, exc.reason)], source) from None
    v = _Validator()
    part = read(v, raw)
    if v.problems or part is None:
        # Paths from the part's root: the validator's `.field` of an empty path drops its dot.
        problems = [Problem(p.path.removeprefix("."), p.message) for p in v.problems]
        raise ScenarioError(problems, source)
    return part


def parse_seller(raw: object, *, source: str = "seller") -> SellerConfig:
    """One seller as a scenario's `[[sellers]]` entry holds it, validated as scenario files
    are (problems' paths from the entry: `inventory[0].least_price`); raises
    ScenarioError with every problem."""
    return _part(raw, source, lambda v, r: v.seller(r, ""))


def parse_buyer(raw: object, *, source: str = "buyer") -> BuyerConfig:
    """The buyer as a scenario's `[buyer]` table holds it (`items` not empty), validated as
    scenario files are (paths from the table: `items[0].max_price`); raises ScenarioError
    with every problem."""
    return _part(raw, source, lambda v, r: v.buyer(r, ""))


def scenario_to_raw(scenario: Scenario) -> dict[str, Any]:
    """The scenario as a JSON-able mapping that `parse_scenario` reads back identically."""
    # Through JSON, so tuples become lists (which `parse_scenario` requires for arrays)
    # and decimals become exact strings.
    raw: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(scenario))
    # A default strategy, and no strategies of its own, are left out, as a file has them.
    for agent in (raw["buyer"], *raw["sellers"]):
        if agent.get("strategy") == DEFAULT:
            del agent["strategy"]
    del raw["strategies"]
    if scenario.strategies:
        raw["strategies"] = {
            s.name: {
                "side": s.side,
                "version": s.version,
                "prompt": s.prompt,
                "base": s.base,
                **({"description": s.description} if s.description else {}),
            }
            for s in scenario.strategies
        }
    for seller in raw["sellers"]:
        if seller.get("voice") is None:  # not set: the file had no voice either
            seller.pop("voice", None)
    return raw


_T = TypeVar("_T")
_P = TypeVar("_P", SellerConfig, BuyerConfig)
_Named = TypeVar("_Named", BuyerItem, InventoryItem)


class _Validator:
    """Walks a raw scenario, recording problems instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        # The scenario's own strategies, and every name its [strategies] table gives.
        self.defined: tuple[Strategy, ...] = ()
        self.defined_names: set[str] = set()

    def bad(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    # -- generic field readers -------------------------------------------------------
    def table(
        self, raw: object, path: str, allowed: tuple[str, ...]
    ) -> Mapping[str, object] | None:
        if not isinstance(raw, Mapping):
            self.bad(path, f"must be a table/object, got {type(raw).__name__}")
            return None
        for key in raw:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                did = f"; did you mean {hint[0]!r}?" if hint else f"; allowed: {', '.join(allowed)}"
                self.bad(f"{path}.{key}" if path else str(key), f"unknown field{did}")
        return raw

    def field(
        self,
        table: Mapping[str, object],
        path: str,
        key: str,
        read: Callable[[object], _T],
        *,
        default: _T | None = None,
        required: bool = True,
    ) -> _T | None:
        full = f"{path}.{key}" if path else key
        if key not in table:
            if required:
                self.bad(full, "is required")
            return default
        try:
            return read(table[key])
        except ValueError as exc:
            self.bad(full, str(exc))
            return None

    def array(
        self, table: Mapping[str, object], path: str, key: str, limit: int = MAX_SCENARIO_ITEMS
    ) -> list[object]:
        full = f"{path}.{key}" if path else key
        value = table.get(key)
        if value is None:
            self.bad(full, "is required (a non-empty array)")
            return []
        if not isinstance(value, list):
            self.bad(full, f"must be an array, got {type(value).__name__}")
            return []
        if not value:
            self.bad(full, "must not be empty")
        if len(value) > limit:
            self.bad(full, f"has {len(value)} entries; at most {limit}")
            return []
        return value

    def unique_items(
        self,
        table: Mapping[str, object],
        path: str,
        key: str,
        parse: Callable[[object, str], _Named | None],
    ) -> list[_Named]:
        """Parse an array of item entries, reporting any item named twice."""
        found: list[_Named] = []
        seen: dict[str, int] = {}
        for i, raw in enumerate(self.array(table, path, key)):
            at = f"{path}.{key}" if path else key
            entry = parse(raw, f"{at}[{i}]")
            if entry is None:
                continue
            name = item_key(entry.item_name)
            if name in seen:
                self.bad(
                    f"{at}[{i}].item_name",
                    f"duplicate of {at}[{seen[name]}] ({entry.item_name!r})",
                )
                continue
            seen[name] = i
            found.append(entry)
        return found

    # -- the scenario ------------------------------------------------------------------
    def scenario(self, raw: object, default_name: str) -> Scenario | None:
        top = self.table(raw, "", ("name", "description", "buyer", "sellers", "strategies"))
        if top is None:
            return None
        self.defined = self.strategies(top["strategies"]) if "strategies" in top else ()
        name = self.field(top, "", "name", _text, required=False) or default_name or "scenario"
        description = self.field(top, "", "description", _any_text, required=False) or ""
        buyer = self.buyer(top.get("buyer"), "buyer") if "buyer" in top else None
        if "buyer" not in top:
            self.bad("buyer", "is required (a [buyer] table with [[buyer.items]])")
        parsed = [
            self.seller(raw_seller, f"sellers[{i}]")
            for i, raw_seller in enumerate(self.array(top, "", "sellers", MAX_SCENARIO_SELLERS))
        ]
        sellers = tuple(s for s in parsed if s is not None)
        self.cross_checks(buyer, sellers, top.get("sellers"))
        if buyer is None or self.problems:
            return None
        return Scenario(
            name=name,
            description=description,
            buyer=buyer,
            sellers=sellers,
            strategies=self.defined,
        )

    def strategies(self, raw: object) -> tuple[Strategy, ...]:
        """The `[strategies.<name>]` tables: each a side, version, prompt and base."""
        if not isinstance(raw, Mapping):
            self.bad("strategies", "must be a table of [strategies.<name>] tables")
            return ()
        if len(raw) > MAX_SCENARIO_ITEMS:
            self.bad("strategies", f"has {len(raw)} entries; at most {MAX_SCENARIO_ITEMS}")
            return ()
        found: list[Strategy] = []
        for name, entry in raw.items():
            at = f"strategies.{name}"
            self.defined_names.add(str(name))
            ok = True
            if not isinstance(name, str) or not _STRATEGY_NAME.fullmatch(name):
                self.bad(at, "a strategy's name is 1-40 letters, digits, '_' or '-'")
                ok = False
            elif any(s.name == name for s in BUILTINS):
                self.bad(at, f"{name!r} is a built-in strategy's name; choose another")
                ok = False
            t = self.table(entry, at, ("side", "version", "prompt", "base", "description"))
            if t is None:
                continue
            side = self.field(t, at, "side", _side)
            version = self.field(t, at, "version", _version, default=1, required=False)
            prompt = self.field(t, at, "prompt", _prompt)
            description = self.field(t, at, "description", _any_text, default="", required=False)
            base = None
            if side is not None:
                raw_base = t.get("base", DEFAULT)
                base = find(side, raw_base) if isinstance(raw_base, str) else None
                if base is None:
                    names = ", ".join(builtin_names(side))
                    self.bad(
                        f"{at}.base",
                        f"must name a built-in {side} strategy ({names}), got {raw_base!r}",
                    )
            if not ok or side is None or version is None or prompt is None or base is None:
                continue
            found.append(
                Strategy(
                    name=name,
                    version=version,
                    description=description or "",
                    prompt=prompt,
                    rules=base.rules,
                    base=base.label,
                )
            )
        return tuple(found)

    def strategy(self, t: Mapping[str, object], path: str, side: Side) -> str | None:
        """An agent's `strategy` field: a built-in's or the scenario's own strategy of its
        side (`name` or `name@version`); unknown names get a did-you-mean."""
        full = f"{path}.strategy" if path else "strategy"
        raw = t.get("strategy", DEFAULT)
        if not isinstance(raw, str) or not raw.strip():
            self.bad(full, f'must name a strategy, e.g. "{DEFAULT}", got {raw!r}')
            return None
        if find(side, raw, self.defined) is not None:
            return raw
        try:
            name, version = split_label(raw)
        except ValueError as exc:
            self.bad(full, str(exc))
            return None
        if name in self.defined_names:
            return None  # its definition's problems are reported at strategies.<name>
        names = (*builtin_names(side), *(s.name for s in self.defined if s.side == side))
        other = next(s for s in SIDES if s != side)
        if version is not None and name in names:
            self.bad(full, f"{side} strategy {name!r} has no version {version}")
        elif find(other, raw, self.defined) is not None:
            self.bad(full, f"{raw!r} is a {other} strategy; {side} strategies: {', '.join(names)}")
        else:
            hint = difflib.get_close_matches(name, names, n=1)
            did = f"; did you mean {hint[0]!r}?" if hint else f"; known: {', '.join(names)}"
            self.bad(full, f"unknown {side} strategy {raw!r}{did}")
        return None

    def buyer(self, raw: object, path: str) -> BuyerConfig | None:
        t = self.table(raw, path, ("handle", "model", "items", "name", "strategy"))
        if t is None:
            return None
        handle = self.field(t, path, "handle", _handle, default="@Buyer", required=False)
        model = self.field(t, path, "model", _model, default=AUTO_MODEL, required=False)
        strategy = self.strategy(t, path, "buyer")
        items = self.unique_items(t, path, "items", self.buyer_item)
        if handle is None or model is None or strategy is None:
            return None
        return BuyerConfig(
            handle=display_handle(handle), model=model, items=tuple(items), strategy=strategy
        )

    def buyer_item(self, raw: object, path: str) -> BuyerItem | None:
        t = self.table(raw, path, ("item_name", "quantity", "min_price", "max_price"))
        if t is None:
            return None
        name = self.field(t, path, "item_name", _text)
        qty = self.field(t, path, "quantity", _quantity)
        lo = self.field(t, path, "min_price", _positive_price)
        hi = self.field(t, path, "max_price", _positive_price)
        if lo is not None and hi is not None and lo > hi:
            self.bad(f"{path}.max_price", f"must be at least min_price ({lo})")
            return None
        if name is None or qty is None or lo is None or hi is None:
            return None
        return BuyerItem(item_name=name, quantity=qty, min_price=lo, max_price=hi)

    def seller(self, raw: object, path: str) -> SellerConfig | None:
        t = self.table(
            raw,
            path,
            (
                "handle",
                "style",
                "customer_retention_weight",
                "profit_maximization_weight",
                "inventory",
                "model",
                "name",
                "strategy",
                "voice",
            ),
        )
        if t is None:
            return None
        handle = self.field(t, path, "handle", _handle)
        style = self.field(t, path, "style", _style)
        retention = self.field(t, path, "customer_retention_weight", _weight)
        profit = self.field(t, path, "profit_maximization_weight", _weight)
        strategy = self.strategy(t, path, "seller")
        model = self.field(t, path, "model", _model, default=AUTO_MODEL, required=False)
        voice = self.field(t, path, "voice", _voice, required=False)
        if retention is not None and profit is not None and retention + profit != 1:
            self.bad(
                f"{path}.profit_maximization_weight",
                f"must sum to 1 with customer_retention_weight ({retention} + {profit} "
                f"= {retention + profit})",
            )
            retention = None
        inventory = self.unique_items(t, path, "inventory", self.inventory_item)
        if handle is None or style is None or model is None or strategy is None:
            return None
        if retention is None or profit is None:
            return None
        return SellerConfig(
            handle=display_handle(handle),
            style=style,
            model=model,
            strategy=strategy,
            customer_retention_weight=retention,
            profit_maximization_weight=profit,
            inventory=tuple(inventory),
            voice=voice,
        )

    def inventory_item(self, raw: object, path: str) -> InventoryItem | None:
        t = self.table(raw, path, ("item_name", "cost_price", "selling_price", "least_price"))
        if t is None:
            return None
        name = self.field(t, path, "item_name", _text)
        cost = self.field(t, path, "cost_price", _price)
        sell = self.field(t, path, "selling_price", _positive_price)
        least = self.field(t, path, "least_price", _positive_price)
        ok = True
        if cost is not None and least is not None and least <= cost:
            self.bad(f"{path}.least_price", f"must be greater than cost_price ({cost})")
            ok = False
        if least is not None and sell is not None and least > sell:
            self.bad(f"{path}.least_price", f"must not exceed selling_price ({sell})")
            ok = False
        if not ok or name is None or cost is None or sell is None or least is None:
            return None
        return InventoryItem(item_name=name, cost_price=cost, selling_price=sell, least_price=least)

    def totals(self, buyer: BuyerConfig, sellers: tuple[SellerConfig, ...]) -> None:
        """A deal's total (price x quantity) must fit numeric(14,2): the buyer's max price
        bounds what it may pay, a seller's asking price is what it offers first."""
        asks: dict[str, list[tuple[int, int, Decimal]]] = {}
        for si, s in enumerate(sellers):
            for ii, entry in enumerate(s.inventory):
                asks.setdefault(item_key(entry.item_name), []).append((si, ii, entry.selling_price))
        for i, item in enumerate(buyer.items):
            if item.max_price * item.quantity > MAX_TOTAL:
                self.bad(
                    f"buyer.items[{i}].max_price",
                    f"x quantity ({item.max_price} x {item.quantity}) must be at most {MAX_TOTAL}",
                )
            for si, ii, ask in asks.get(item_key(item.item_name), []):
                if ask * item.quantity > MAX_TOTAL:
                    self.bad(
                        f"sellers[{si}].inventory[{ii}].selling_price",
                        f"x the buyer's quantity ({ask} x {item.quantity}) must be at most "
                        f"{MAX_TOTAL}",
                    )

    def cross_checks(
        self, buyer: BuyerConfig | None, sellers: tuple[SellerConfig, ...], raw_sellers: object
    ) -> None:
        ids: dict[str, int] = {}
        raw_list = raw_sellers if isinstance(raw_sellers, list) else []
        for i, raw in enumerate(raw_list):
            handle = raw.get("handle") if isinstance(raw, Mapping) else None
            if not isinstance(handle, str) or not _is_handle(handle):
                continue
            key = agent_id_of(handle)
            if key in ids:
                self.bad(
                    f"sellers[{i}].handle",
                    f"{handle!r} is already used by sellers[{ids[key]}] "
                    "(handles are unique, ignoring case)",
                )
            else:
                ids[key] = i
        if buyer is None:
            return
        self.totals(buyer, sellers)
        if buyer.agent_id in ids:
            self.bad("buyer.handle", f"{buyer.handle!r} is also a seller's handle")
        stockists: dict[str, int] = {}  # one pass, not every inventory for every item
        for s in sellers:
            for key in {item_key(e.item_name) for e in s.inventory}:
                stockists[key] = stockists.get(key, 0) + 1
        for i, item in enumerate(buyer.items):
            count = stockists.get(item_key(item.item_name), 0)
            path = f"buyer.items[{i}].item_name"
            sellers_ok = not any(p.path.startswith("sellers") for p in self.problems)
            if count == 0 and sellers_ok:
                stocked = sorted({e.item_name for s in sellers for e in s.inventory})
                hint = difflib.get_close_matches(item.item_name, stocked, n=1)
                tail = (
                    f"; did you mean {hint[0]!r}?"
                    if hint
                    else (f"; sellers stock: {', '.join(repr(n) for n in stocked)}")
                )
                self.bad(path, f"no seller stocks {item.item_name!r}{tail}")
            elif count > MAX_SELLERS_PER_ITEM:
                self.bad(
                    path,
                    f"{count} sellers stock {item.item_name!r}; at most "
                    f"{MAX_SELLERS_PER_ITEM} may negotiate one item",
                )


# -- field readers: each returns the value or raises ValueError with the reason ---------
def _text(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("must be a non-empty string")
    if len(raw) > MAX_NAME:
        raise ValueError(f"must be at most {MAX_NAME} characters")
    if "\x00" in raw:  # PostgreSQL's text and jsonb refuse NUL
        raise ValueError("must not hold a NUL character")
    return raw.strip()


def _any_text(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError("must be a string")
    if len(raw) > MAX_DESCRIPTION:
        raise ValueError(f"must be at most {MAX_DESCRIPTION} characters")
    if "\x00" in raw:
        raise ValueError("must not hold a NUL character")
    return raw


def _handle(raw: object) -> str:
    if not isinstance(raw, str) or not _is_handle(raw):
        raise ValueError(
            f"must look like @TechMart (1-32 letters, digits, '_' or '-'), got {raw!r}"
        )
    return raw


def _style(raw: object) -> Style:
    for style in STYLES:
        if raw == style:
            return style
    raise ValueError(f"must be one of {', '.join(STYLES)}, got {raw!r}")


def _voice(raw: object) -> str | None:
    return None if raw is None else check_voice(raw)  # null in JSON: not set


_STRATEGY_NAME = re.compile(r"[A-Za-z0-9_-]{1,40}")


def _side(raw: object) -> Side:
    for side in SIDES:
        if raw == side:
            return side
    raise ValueError(f"must be one of {', '.join(SIDES)}, got {raw!r}")


def _version(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 1_000_000:
        raise ValueError(f"must be a whole number from 1 to 1000000, got {raw!r}")
    return raw


def _prompt(raw: object) -> str:
    text = _any_text(raw)
    if not text.strip():
        raise ValueError("must be a non-empty string (the paragraph an LLM agent is given)")
    return text


def check_model(raw: object) -> str:
    """A model string as scenarios and CLI flags accept it; raises ValueError saying why."""
    return _model(raw)


def _model(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(
            'must be "auto", "baseline" or "provider:model", e.g. "anthropic:claude-sonnet-5"'
        )
    if raw in (BASELINE_MODEL, AUTO_MODEL):
        return raw
    try:  # the model names the brain, a label the log and reports show
        check_label(raw, "")
    except BoundsError as exc:
        raise ValueError(f"must be a plain model name: {exc.reason}") from None
    provider, sep, name = raw.partition(":")
    if not sep or provider not in MODEL_PROVIDERS or not name:
        raise ValueError(
            f'must be "auto", "baseline" or "<{"|".join(MODEL_PROVIDERS)}>:<model>", got {raw!r}'
        )
    return raw


def _quantity(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValueError(f"must be a whole number, got {raw!r}")
    if not 1 <= raw <= MAX_QUANTITY:
        shown = raw if raw.bit_length() <= 128 else "a larger number"
        raise ValueError(f"must be between 1 and {MAX_QUANTITY}, got {shown}")
    return raw


def _price(raw: object) -> Decimal:
    value = parse_price(raw)
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    if value > MAX_PRICE:  # numeric(12,2), with room for a total (see domain.bounds)
        raise ValueError(f"must be at most {MAX_PRICE}, got {value}")
    return value


def _positive_price(raw: object) -> Decimal:
    value = _price(raw)
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {value}")
    return value


def _weight(raw: object) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, int | Decimal | str):
        raise ValueError(f"must be a number between 0 and 1, got {raw!r}")
    try:
        value = Decimal(str(raw))
    except ArithmeticError:
        raise ValueError(f"must be a number between 0 and 1, got {raw!r}") from None
    if not value.is_finite() or not 0 <= value <= 1:
        raise ValueError(f"must be between 0 and 1, got {raw}")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -3:
        raise ValueError(f"must have at most 3 decimal places, got {raw}")
    return value
