"""A study's plan: the flags of `mams run` that shape its rooms, stored, and taken back by
`--resume` for every flag not given again (pure: the parser and the merge)."""

from __future__ import annotations

import argparse

import msgspec

from mams.cli import build_parser
from mams.study import Plan, fill_defaults, plan_of, take_plan


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["run", *argv])


def test_flags_not_given_are_none_until_the_defaults() -> None:
    args = parse("--session", "x", "--resume")
    assert plan_of(args) == Plan()
    fill_defaults(args)
    assert plan_of(args) == Plan(runs=1, max_rounds=8, item=[], no_monitor=False)


def test_resume_takes_the_stored_plan_for_each_flag_not_given_and_keeps_those_given() -> None:
    stored = Plan(
        runs=100,
        seed=5,
        max_rounds=6,
        round_timeout=12.5,
        seller_model="baseline",
        item=["USB-C cable", "iPhone 15 case"],
        no_monitor=True,
        rooms_at_once=4,
    )
    # Survives the trip through the table's jsonb.
    stored = msgspec.json.decode(msgspec.json.encode(stored), type=Plan)
    args = parse("--session", "x", "--resume", "--seed", "9", "--max-rounds", "3")
    taken = take_plan(args, stored)
    fill_defaults(args)
    assert plan_of(args) == Plan(
        runs=100,
        seed=9,  # given
        max_rounds=3,  # given
        round_timeout=12.5,
        seller_model="baseline",
        item=["USB-C cable", "iPhone 15 case"],
        no_monitor=True,
        rooms_at_once=4,
    )
    assert taken == [
        "--runs 100",
        "--round-timeout 12.5",
        "--seller-model baseline",
        "--item 'USB-C cable'",
        "--item 'iPhone 15 case'",
        "--no-monitor",
        "--rooms-at-once 4",
    ]


def test_an_empty_stored_plan_takes_nothing() -> None:
    args = parse("--session", "x", "--resume")
    assert take_plan(args, Plan()) == []
    fill_defaults(args)
    assert plan_of(args) == Plan(runs=1, max_rounds=8, item=[], no_monitor=False)
