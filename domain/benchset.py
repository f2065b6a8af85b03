"""The benchmark set: a fixed, versioned scenario set built from real Craigslist listings,
and the leaderboard row `mams bench-models` prints for each model (and for the humans).

`build_benchset(listing_lines, dialogue_lines, seed, rooms)` turns the CraigslistBargain
listings the project carries (`examples/craigslist/listings.jsonl`, 56 phone and
electronics listings) and the human dialogues (`dialogues-valid.jsonl`, for the buyers'
targets) into one `Scenario` with a buyer item per room. Version `BENCHSET_VERSION` with
the same seed gives the same scenario byte for byte (`encode_benchset`: every draw); the
version pins the data too (`DATA_SHA256`): other listing or dialogue files are refused
rather than quietly giving another set under the same name.

How a room is drawn (version 1), each room from its own generator (`random.Random` seeded
with the text `mams-benchset:1:<seed>:<room>`), so the first N rooms of a set are the same
whatever N:

- **The item.** The listings are shuffled once per seed (sorted by post id, then a
  generator seeded `mams-benchset:1:<seed>:order`); room i takes the i-th (cycling past
  56; a repeated title gets ` (2)`, ` (3)`, ...). One unit.
- **Sellers.** Room i has `1 + i % 10` sellers, so every ten rooms cover 1 to 10 sellers;
  seller j of room i has style `STYLES[(i + j) % 3]` (rude, neutral, sweet), so the
  single-seller rooms 0, 10, 20 cover the three styles too. Handles are
  `@<Place><Trade><i+1>`, distinct within the set.
- **Asking price.** Each seller asks the listing price times U[0.95, 1.08].
- **Floor and cost.** A seller's floor (`least_price`) is its ask times U[0.55, 0.90]; its
  cost its floor times U[0.45, 0.85]. Retention weight k/10 with k uniform in 1..9, the
  profit weight the rest.
- **The buyer's range.** The listings carry no targets; the dialogues do: each dialogue's
  `buyer_price / seller_price` (the target the data set gave the person, over the listing
  price) is a ratio. The buyer's `max_price` is the listing price times a ratio drawn
  uniformly from the dialogues of the same category (20 electronics, 22 phone; a category
  without dialogues draws from all 188), and its `min_price` is that times U[0.60, 0.80].
  Whether a deal is possible depends on the draw: with many sellers the lowest floor is
  usually below the buyer's max, with one often not (walking away is then right).

Every fraction is drawn with three decimals (`randint` over thousandths) and every price is
rounded half-even to cents, so nothing depends on the platform's floats.

`leaderboard_row(label, analyses)` is one leaderboard row over analysed rooms: the figures
of `domain.report`'s overall row (deal rate, mean buyer savings against the deal seller's
first ask, mean buyer share of the surplus, flags per 100 messages), plus the models'
spend and the spend per deal. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from decimal import ROUND_HALF_EVEN, Decimal

import msgspec

from mams.domain.analysis import NegotiationAnalysis
from mams.domain.config import STYLES, Scenario, item_key, parse_scenario, stock_index
from mams.domain.craigslist import parse_dialogue
from mams.domain.report import build_report

BENCHSET_VERSION = 1
DEFAULT_ROOMS = 30  # three rooms of each seller count, 1 to 10
# Rooms have 1 to 10 sellers, 5.5 on average: 180 rooms seat 990, within a scenario's
# 1000 (domain.bounds.MAX_SCENARIO_SELLERS); every seller sits in one room.
MAX_ROOMS = 180
MAX_SELLERS = 10
# sha256 over the listing lines then the dialogue lines the version-1 set is built from
# (each line as given, stripped of its line end, followed by "\n"; blank lines skipped).
DATA_SHA256 = "6941217b796de7e8c6d884064dc9bd83fa1f0befbac12c0a9ede4ebbe0222ea8"
CENT = Decimal("0.01")
PLACES = (
    "Bay", "Mission", "Sunset", "Marina", "Castro", "NobHill", "Peninsula", "Valley",
    "Harbor", "GoldenGate", "Fog", "CableCar", "Presidio", "Dogpatch", "Richmond", "Noe",
)  # fmt: skip
TRADES = ("Trader", "Deals", "Resale", "Gadgets", "Swap", "Finds", "Market", "Tech", "Goods")


class BenchsetError(ValueError):
    """The data or the arguments cannot make this version of the set."""


class Listing(msgspec.Struct, frozen=True):
    """One Craigslist listing as `listings.jsonl` holds it."""

    post_id: str
    category: str
    title: str
    price: Decimal
    description: str = ""


class BenchRoom(msgspec.Struct, frozen=True, kw_only=True):
    """Where one room of the set came from: its listing and the draws that matter."""

    index: int
    item_name: str
    post_id: str
    category: str
    listed: Decimal
    target_ratio: Decimal
    sellers: int
    styles: tuple[str, ...]


class BenchSet(msgspec.Struct, frozen=True, kw_only=True):
    """The set: its version, seed and data digest, each room's origin, and the scenario
    (one buyer item per room, every agent's model left to the run: `auto`)."""

    version: int
    seed: int
    data_sha256: str
    rooms: tuple[BenchRoom, ...]
    scenario: Scenario


class LeaderRow(msgspec.Struct, frozen=True, kw_only=True):
    """One leaderboard row. Savings in percent, shares 0..1, cost in USD; None where there
    is nothing to average (or, for cost, where a call's cost was unknown)."""

    label: str
    rooms: int
    deals: int
    deal_rate: float | None
    mean_saving_pct: float | None
    mean_buyer_share: float | None
    messages: int
    flags: int
    flags_per_100: float | None
    cost_usd: float | None
    cost_per_deal_usd: float | None


_listing = msgspec.json.Decoder(Listing, float_hook=lambda f: Decimal(repr(f)))


def _lines(lines: Iterable[str | bytes]) -> list[str]:
    out = []
    for line in lines:
        text = line.decode() if isinstance(line, bytes) else line
        text = text.rstrip("\r\n")
        if text.strip():
            out.append(text)
    return out


def data_digest(listing_lines: Sequence[str], dialogue_lines: Sequence[str]) -> str:
    """The sha256 of the data a set is built from (see `DATA_SHA256`)."""
    h = hashlib.sha256()
    for line in [*listing_lines, *dialogue_lines]:
        h.update(line.encode() + b"\n")
    return h.hexdigest()


def _money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_EVEN)


def _share(rng: random.Random, low: str, high: str) -> Decimal:
    lo, hi = int(Decimal(low) * 1000), int(Decimal(high) * 1000)
    return Decimal(rng.randint(lo, hi)) / 1000


def target_ratios(dialogue_lines: Iterable[str | bytes]) -> dict[str, tuple[Decimal, ...]]:
    """Each category's buyer target over listing price, one per dialogue (three decimals),
    sorted; key "" holds every dialogue's."""
    out: dict[str, list[Decimal]] = {"": []}
    for line in dialogue_lines:
        d = parse_dialogue(line)
        if d.seller_price <= 0:
            continue
        ratio = (d.buyer_price / d.seller_price).quantize(Decimal("0.001"), ROUND_HALF_EVEN)
        out.setdefault(d.item_name, []).append(ratio)
        out[""].append(ratio)
    return {k: tuple(sorted(v)) for k, v in out.items()}


def build_benchset(
    listing_lines: Iterable[str | bytes],
    dialogue_lines: Iterable[str | bytes],
    seed: int = 0,
    rooms: int = DEFAULT_ROOMS,
    *,
    check_data: bool = True,
) -> BenchSet:
    """The first `rooms` rooms of version `BENCHSET_VERSION` of the set for `seed` (see the
    module docstring for every draw). Raises BenchsetError for rooms out of 1..MAX_ROOMS,
    or data whose digest is not `DATA_SHA256` (unless `check_data` is False: tests of
    other data)."""
    if not 1 <= rooms <= MAX_ROOMS:
        raise BenchsetError(f"rooms must be between 1 and {MAX_ROOMS}, got {rooms}")
    listing_text = _lines(listing_lines)
    dialogue_text = _lines(dialogue_lines)
    digest = data_digest(listing_text, dialogue_text)
    if check_data and digest != DATA_SHA256:
        raise BenchsetError(
            f"the listings and dialogues are not those of benchmark set version "
            f"{BENCHSET_VERSION} (sha256 {digest}, expected {DATA_SHA256}); use the files "
            "of examples/craigslist/"
        )
    listings = sorted((_listing.decode(line) for line in listing_text), key=lambda r: r.post_id)
    if not listings:
        raise BenchsetError("no listings")
    ratios = target_ratios(dialogue_text)
    if not ratios[""]:
        raise BenchsetError("no dialogues with a listing price: no buyer targets to draw from")
    prefix = f"mams-benchset:{BENCHSET_VERSION}:{seed}"
    random.Random(f"{prefix}:order").shuffle(listings)
    names: dict[str, int] = {}
    origin: list[BenchRoom] = []
    buyer_items: list[dict[str, object]] = []
    sellers: list[dict[str, object]] = []
    for i in range(rooms):
        rng = random.Random(f"{prefix}:{i}")
        row = listings[i % len(listings)]
        key = " ".join(row.title.casefold().split())
        names[key] = names.get(key, 0) + 1
        item = row.title if names[key] == 1 else f"{row.title} ({names[key]})"
        ratio = rng.choice(ratios.get(row.category) or ratios[""])
        max_price = _money(row.price * ratio)
        min_price = _money(max_price * _share(rng, "0.60", "0.80"))
        buyer_items.append(
            {"item_name": item, "quantity": 1, "min_price": min_price, "max_price": max_price}
        )
        count = 1 + i % MAX_SELLERS
        pool = [f"@{p}{t}{i + 1}" for p in PLACES for t in TRADES]
        handles = rng.sample(pool, count)
        styles = tuple(STYLES[(i + j) % len(STYLES)] for j in range(count))
        for handle, style in zip(handles, styles, strict=True):
            ask = _money(row.price * _share(rng, "0.95", "1.08"))
            least = _money(ask * _share(rng, "0.55", "0.90"))
            cost = _money(least * _share(rng, "0.45", "0.85"))
            retention = Decimal(rng.randint(1, 9)) / 10
            sellers.append(
                {
                    "handle": handle,
                    "style": style,
                    "customer_retention_weight": retention,
                    "profit_maximization_weight": 1 - retention,
                    "inventory": [
                        {
                            "item_name": item,
                            "cost_price": cost,
                            "selling_price": ask,
                            "least_price": least,
                        }
                    ],
                }
            )
        origin.append(
            BenchRoom(
                index=i,
                item_name=item,
                post_id=row.post_id,
                category=row.category,
                listed=row.price,
                target_ratio=ratio,
                sellers=count,
                styles=styles,
            )
        )
    name = f"benchset-v{BENCHSET_VERSION}-seed{seed}"
    raw = {
        "name": name,
        "description": (
            f"MAMS benchmark set version {BENCHSET_VERSION}, seed {seed}, {rooms} rooms: "
            "real Craigslist listings (CraigslistBargain, He et al. 2018)"
        ),
        "buyer": {"handle": "@Buyer", "items": buyer_items},
        "sellers": sellers,
    }
    scenario = parse_scenario(raw, source=name)
    return BenchSet(
        version=BENCHSET_VERSION,
        seed=seed,
        data_sha256=digest,
        rooms=tuple(origin),
        scenario=scenario,
    )


def encode_benchset(benchset: BenchSet) -> bytes:
    """What the set drew, as canonical JSON (sorted keys, prices as strings): each room's
    origin, the buyer's range and each seller's handle, style, weights and prices. Equal
    draws, equal bytes; fields the scenario gains later (with their defaults) leave it
    unchanged, so a digest of it pins the version's draws."""
    items = {item_key(i.item_name): i for i in benchset.scenario.buyer.items}
    index = stock_index(benchset.scenario)
    rooms = []
    for room in benchset.rooms:
        item = items[item_key(room.item_name)]
        rooms.append(
            {
                **msgspec.to_builtins(room),
                "min_price": str(item.min_price),
                "max_price": str(item.max_price),
                "stock": [
                    {
                        "handle": seller.handle,
                        "style": seller.style,
                        "customer_retention_weight": str(seller.customer_retention_weight),
                        "profit_maximization_weight": str(seller.profit_maximization_weight),
                        "cost_price": str(entry.cost_price),
                        "selling_price": str(entry.selling_price),
                        "least_price": str(entry.least_price),
                    }
                    for seller, entry in index[item_key(room.item_name)]
                ],
            }
        )
    document = {
        "version": benchset.version,
        "seed": benchset.seed,
        "data_sha256": benchset.data_sha256,
        "rooms": rooms,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def leaderboard_row(label: str, analyses: Iterable[NegotiationAnalysis]) -> LeaderRow:
    """One row over these rooms' analyses (ended rooms only, as `domain.report` counts):
    deal rate, mean buyer savings against the deal seller's first ask (percent), mean buyer
    share of the surplus, flags per 100 messages (every agent's flags over every message
    of the rooms), and what the models cost, in total and per deal (None when some call's
    cost was unknown; 0.0 without model calls)."""
    chosen = [a for a in analyses if a.status == "completed"]
    report = build_report(chosen)
    overall = report.overall
    costs = [a.llm.cost_usd for a in chosen]
    cost = None if any(c is None for c in costs) else round(sum(c or 0.0 for c in costs), 6)
    per_deal = round(cost / overall.deals, 6) if cost is not None and overall.deals else None
    return LeaderRow(
        label=label,
        rooms=overall.rooms,
        deals=overall.deals,
        deal_rate=overall.deal_rate,
        mean_saving_pct=overall.mean_saving_pct,
        mean_buyer_share=overall.mean_buyer_share,
        messages=overall.messages,
        flags=overall.flags,
        flags_per_100=overall.flags_per_100,
        cost_usd=cost,
        cost_per_deal_usd=per_deal,
    )
