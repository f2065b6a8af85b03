"""The benchmark set (domain.benchset): fixed per version and seed, valid, covering what
it promises, built from the data it pins; and the leaderboard row's figures."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from pathlib import Path

import pytest

from mams.domain.analysis import analyze
from mams.domain.benchset import (
    BENCHSET_VERSION,
    DATA_SHA256,
    MAX_ROOMS,
    BenchsetError,
    build_benchset,
    encode_benchset,
    leaderboard_row,
    target_ratios,
)
from mams.domain.bounds import MAX_SCENARIO_SELLERS
from mams.domain.config import STYLES, item_key, stock_index
from mams.domain.craigslist import dialogues_to_events
from mams.domain.quality import check

DATA = Path(__file__).resolve().parents[2] / "examples" / "craigslist"
LISTINGS = (DATA / "listings.jsonl").read_text(encoding="utf-8").splitlines()
DIALOGUES = (DATA / "dialogues-valid.jsonl").read_text(encoding="utf-8").splitlines()

# Version 1, seed 0, the default 30 rooms: if this changes, the set changed; bump
# BENCHSET_VERSION (old leaderboards were measured on the old set) and pin the new digest.
V1_SEED0_SHA256 = "8272f7b34d724efebca2eef6dac98a0c612fa99bef16cb64dfc1fd1366e47311"


def test_same_version_and_seed_give_the_same_set_byte_for_byte() -> None:
    first = encode_benchset(build_benchset(LISTINGS, DIALOGUES, seed=0))
    again = encode_benchset(build_benchset(list(LISTINGS), list(DIALOGUES), seed=0))
    assert first == again
    assert BENCHSET_VERSION == 1
    assert hashlib.sha256(first).hexdigest() == V1_SEED0_SHA256
    other = encode_benchset(build_benchset(LISTINGS, DIALOGUES, seed=1))
    assert other != first


def test_fewer_rooms_are_the_first_rooms_of_the_set() -> None:
    whole = build_benchset(LISTINGS, DIALOGUES, seed=5, rooms=30)
    part = build_benchset(LISTINGS, DIALOGUES, seed=5, rooms=7)
    assert part.rooms == whole.rooms[:7]
    assert part.scenario.buyer.items == whole.scenario.buyer.items[:7]
    assert part.scenario.sellers == whole.scenario.sellers[: sum(r.sellers for r in part.rooms)]


def test_the_set_covers_one_to_ten_sellers_and_the_three_styles() -> None:
    bench = build_benchset(LISTINGS, DIALOGUES, seed=3)
    assert sorted({r.sellers for r in bench.rooms}) == list(range(1, 11))
    singles = {r.styles[0] for r in bench.rooms if r.sellers == 1}
    assert singles == set(STYLES)
    index = stock_index(bench.scenario)
    for room, item in zip(bench.rooms, bench.scenario.buyer.items, strict=True):
        stockists = index[item_key(item.item_name)]
        assert len(stockists) == room.sellers
        assert tuple(s.style for s, _ in stockists) == room.styles
    handles = [s.handle.casefold() for s in bench.scenario.sellers]
    assert len(handles) == len(set(handles))


def test_prices_come_from_the_listing_and_the_documented_ranges() -> None:
    bench = build_benchset(LISTINGS, DIALOGUES, seed=11)
    ratios = target_ratios(DIALOGUES)
    index = stock_index(bench.scenario)
    for room, item in zip(bench.rooms, bench.scenario.buyer.items, strict=True):
        assert room.target_ratio in ratios[room.category]
        assert item.max_price == (room.listed * room.target_ratio).quantize(Decimal("0.01"))
        assert item.max_price * Decimal("0.59") <= item.min_price <= item.max_price
        for _, entry in index[item_key(item.item_name)]:
            assert room.listed * Decimal("0.94") <= entry.selling_price
            assert entry.selling_price <= room.listed * Decimal("1.09")
            assert entry.selling_price * Decimal("0.54") <= entry.least_price
            assert entry.least_price <= entry.selling_price * Decimal("0.91")
            assert 0 < entry.cost_price < entry.least_price


def test_other_data_is_refused_under_the_same_version() -> None:
    with pytest.raises(BenchsetError, match="not those of benchmark set version 1"):
        build_benchset(LISTINGS[:-1], DIALOGUES, seed=0)
    bench = build_benchset(LISTINGS, DIALOGUES, seed=0)
    assert bench.data_sha256 == DATA_SHA256
    with pytest.raises(BenchsetError, match="rooms must be between"):
        build_benchset(LISTINGS, DIALOGUES, seed=0, rooms=0)


def test_more_rooms_than_listings_repeat_titles_under_distinct_names() -> None:
    bench = build_benchset(LISTINGS, DIALOGUES, seed=0, rooms=len(LISTINGS) + 2)
    names = [item_key(i.item_name) for i in bench.scenario.buyer.items]
    assert len(names) == len(set(names))
    assert bench.rooms[-1].item_name.endswith(" (2)")


def test_the_largest_set_is_a_valid_scenario() -> None:
    bench = build_benchset(LISTINGS, DIALOGUES, seed=0, rooms=MAX_ROOMS)
    assert len(bench.rooms) == MAX_ROOMS
    assert len(bench.scenario.sellers) <= MAX_SCENARIO_SELLERS
    with pytest.raises(BenchsetError, match="rooms must be between"):
        build_benchset(LISTINGS, DIALOGUES, seed=0, rooms=MAX_ROOMS + 1)


def test_the_human_row_scores_the_dialogues_with_the_report_figures() -> None:
    logs = dialogues_to_events(DIALOGUES)
    row = leaderboard_row("human", [analyze(e, check(e)) for e in logs])
    # examples/craigslist/README.md: 188 dialogues, 100 deals inferred, 19 flags.
    assert (row.rooms, row.deals, row.flags) == (188, 100, 19)
    assert row.deal_rate == round(100 / 188, 4)
    assert row.cost_usd == 0.0
    assert row.cost_per_deal_usd == 0.0
    assert row.mean_buyer_share is not None
