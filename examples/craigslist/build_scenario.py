#!/usr/bin/env python3
"""Build a MAMS scenario from real Craigslist listings (CraigslistBargain, He et al. 2018).

Reads `listings.jsonl` next to this script (a small copy of the real data; see README.md)
and writes a scenario TOML: the buyer wants N listed items, one unit each; for each item
3-5 sellers ask around the real listing price, with private floors and costs derived
below it. Deterministic for a given --seed; uses only the standard library.

    python examples/craigslist/build_scenario.py --seed 2018 --items 3 \\
        --out examples/craigslist-market.toml
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent
LISTINGS = HERE / "listings.jsonl"
CENT = Decimal("0.01")
STYLES = ("rude", "neutral", "sweet")
PLACES = (
    "Bay", "Mission", "Sunset", "Marina", "Castro", "NobHill", "Peninsula", "Valley",
    "Harbor", "GoldenGate", "Fog", "CableCar", "Presidio", "Dogpatch", "Richmond", "Noe",
)  # fmt: skip
TRADES = ("Trader", "Deals", "Resale", "Gadgets", "Swap", "Finds", "Market", "Tech", "Goods")


def money(value: Decimal) -> Decimal:
    """Round to cents."""
    return value.quantize(CENT, rounding=ROUND_HALF_EVEN)


def share(rng: random.Random, low: str, high: str) -> Decimal:
    """A random fraction in [low, high] with three decimals, reproducible across platforms."""
    lo, hi = int(Decimal(low) * 1000), int(Decimal(high) * 1000)
    return Decimal(rng.randint(lo, hi)) / 1000


def load_listings(path: Path) -> list[dict[str, object]]:
    """The listings, one JSON object a line."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def pick_items(
    rng: random.Random, listings: list[dict[str, object]], n: int
) -> list[dict[str, object]]:
    """N listings with distinct titles (as the scenario matches names, ignoring case)."""
    order = sorted(listings, key=lambda r: str(r["post_id"]))
    rng.shuffle(order)
    chosen: list[dict[str, object]] = []
    keys: set[str] = set()
    for row in order:
        key = " ".join(str(row["title"]).casefold().split())
        if key in keys:
            continue
        keys.add(key)
        chosen.append(row)
        if len(chosen) == n:
            return chosen
    raise SystemExit(f"only {len(chosen)} distinct listings available, {n} asked for")


def handles(rng: random.Random, count: int) -> list[str]:
    """Distinct seller handles like @BayTrader (unique ignoring case)."""
    names = [f"@{p}{t}" for p in PLACES for t in TRADES]
    rng.shuffle(names)
    if count > len(names):
        raise SystemExit(f"at most {len(names)} sellers")
    return names[:count]


def build(seed: int, n_items: int, listings: list[dict[str, object]]) -> dict[str, object]:
    """The scenario as plain data: buyer items and sellers, every price in cents."""
    rng = random.Random(seed)
    items = pick_items(rng, listings, n_items)
    counts = [rng.randint(3, 5) for _ in items]
    names = handles(rng, sum(counts))
    buyer_items: list[dict[str, object]] = []
    sellers: list[dict[str, object]] = []
    for row, count in zip(items, counts, strict=True):
        price = Decimal(str(row["price"]))
        buyer_items.append(
            {
                "item_name": str(row["title"]),
                "quantity": 1,
                "min_price": money(price * share(rng, "0.55", "0.65")),
                "max_price": money(price * share(rng, "0.80", "0.95")),
                "post_id": str(row["post_id"]),
                "listed": price,
            }
        )
        for _ in range(count):
            selling = money(price * share(rng, "0.95", "1.08"))
            least = money(selling * share(rng, "0.70", "0.92"))
            cost = money(least * share(rng, "0.45", "0.85"))
            assert Decimal(0) <= cost < least <= selling, (cost, least, selling)
            retention = Decimal(rng.randint(1, 9)) / 10
            sellers.append(
                {
                    "handle": names.pop(0),
                    "style": rng.choice(STYLES),
                    "customer_retention_weight": retention,
                    "profit_maximization_weight": 1 - retention,
                    "inventory": [
                        {
                            "item_name": str(row["title"]),
                            "cost_price": cost,
                            "selling_price": selling,
                            "least_price": least,
                        }
                    ],
                }
            )
    return {"seed": seed, "buyer_items": buyer_items, "sellers": sellers}


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def render(scenario: dict[str, object]) -> str:
    """The scenario as commented TOML, written by hand (the stdlib has no TOML writer)."""
    seed = scenario["seed"]
    buyer_items = scenario["buyer_items"]
    sellers = scenario["sellers"]
    assert isinstance(buyer_items, list)
    assert isinstance(sellers, list)
    lines = [
        "# GENERATED by examples/craigslist/build_scenario.py -- do not edit by hand.",
        f"#     python examples/craigslist/build_scenario.py --seed {seed} "
        f"--items {len(buyer_items)} --out examples/craigslist-market.toml",
        "#",
        "# Items and asking prices are real Craigslist listings from CraigslistBargain",
        '# (He et al., 2018, "Decoupling Strategy and Generation in Negotiation Dialogues";',
        "# stanfordnlp/cocoa, MIT licence); see examples/craigslist/README.md. Each seller asks",
        "# around the listing price; floors, costs, styles and weights are derived from the",
        "# seed. The buyer's range is 55-65% (min) to 80-95% (max) of the listing price.",
        "",
        'name = "craigslist-market"',
        'description = "Used goods from real Craigslist listings; one unit of each."',
        "",
        "[buyer]",
        'handle = "@Buyer"',
        "",
    ]
    for item in buyer_items:
        lines += [
            f"# listing {item['post_id']}, listed at ${item['listed']}",
            "[[buyer.items]]",
            f"item_name = {toml_string(item['item_name'])}",
            f"quantity = {item['quantity']}",
            f"min_price = {item['min_price']}",
            f"max_price = {item['max_price']}",
            "",
        ]
    for seller in sellers:
        lines += [
            "[[sellers]]",
            f"handle = {toml_string(seller['handle'])}",
            f"style = {toml_string(seller['style'])}",
            f"customer_retention_weight = {seller['customer_retention_weight']}",
            f"profit_maximization_weight = {seller['profit_maximization_weight']}",
            "",
        ]
        for entry in seller["inventory"]:
            lines += [
                "[[sellers.inventory]]",
                f"item_name = {toml_string(entry['item_name'])}",
                f"cost_price = {entry['cost_price']}",
                f"selling_price = {entry['selling_price']}",
                f"least_price = {entry['least_price']}",
                "",
            ]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line: --seed, --items, --out (stdout if omitted)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2018, help="random seed (default 2018)")
    parser.add_argument("--items", type=int, default=3, help="items the buyer wants (default 3)")
    parser.add_argument("--out", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    if not 1 <= args.items <= 20:
        parser.error("--items must be between 1 and 20")
    text = render(build(args.seed, args.items, load_listings(LISTINGS)))
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
