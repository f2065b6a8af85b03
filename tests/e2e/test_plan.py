"""A study's plan: the flags of `mams run` that shape its rooms, stored, and taken back by
`--resume` for every flag not given again (pure: the parser, the merge and the options the
flags make)."""

from __future__ import annotations

import msgspec
import pytest

from mams.actors.market import RunOptions
from mams.cli import RunCommand, UsageError, build_parser
from mams.domain.plan import LLM_ROOMS_AT_ONCE, LLM_ROUND_TIMEOUT, PlanOptions
from mams.study import StudyFlags, merge, run_options


def parse(*argv: str) -> RunCommand:
    return RunCommand.of(build_parser().parse_args(["run", *argv]))


def test_flags_not_given_are_none_and_take_the_plan_defaults() -> None:
    command = parse("--session", "00000000-0000-0000-0000-000000000001", "--resume")
    assert command.flags == StudyFlags()
    options = run_options(command.flags)
    defaults = PlanOptions()
    assert (options.max_rounds, options.round_timeout, options.runs, options.seed) == (
        defaults.max_rounds,
        defaults.round_timeout,
        defaults.runs,
        None,
    )
    assert options.rooms_at_once is None
    assert options.monitor is True
    # An LLM in the cast: a longer deadline and a cap on rooms, unless given.
    llm = run_options(command.flags, llm=True)
    assert (llm.round_timeout, llm.rooms_at_once) == (LLM_ROUND_TIMEOUT, LLM_ROOMS_AT_ONCE)
    given = run_options(StudyFlags(round_timeout=7.5, rooms_at_once=3), llm=True)
    assert (given.round_timeout, given.rooms_at_once) == (7.5, 3)


def test_resume_takes_the_stored_plan_for_each_flag_not_given_and_keeps_those_given() -> None:
    stored = StudyFlags(
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
    stored = msgspec.json.decode(msgspec.json.encode(stored), type=StudyFlags)
    command = parse(
        "--session", "00000000-0000-0000-0000-000000000001", "--resume",
        "--seed", "9", "--max-rounds", "3",
    )  # fmt: skip
    flags, taken = merge(command.flags, stored)
    assert flags == StudyFlags(
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
    assert run_options(flags) == RunOptions(
        runs=100,
        seed=9,
        max_rounds=3,
        round_timeout=12.5,
        seller_model="baseline",
        monitor=False,
        rooms_at_once=4,
    )


def test_an_empty_stored_plan_takes_nothing() -> None:
    command = parse("--session", "00000000-0000-0000-0000-000000000001", "--resume")
    assert merge(command.flags, StudyFlags()) == (StudyFlags(), [])


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (("--max-rounds", "1"), "--max-rounds must be from 2 to 100, got 1"),
        (("--runs", "0"), "--runs must be from 1 to 10000, got 0"),
        (("--rooms-at-once", "0"), "--rooms-at-once must be at least 1, got 0"),
        (("--round-timeout", "nan"), "--round-timeout must be from 0.1 to 86400 seconds"),
        (("--seller-model", "nonsense"), "--seller-model"),
    ],
)
def test_a_flag_out_of_range_is_named_before_anything_runs(
    argv: tuple[str, ...], said: str
) -> None:
    with pytest.raises(UsageError) as refused:
        parse("some.toml", *argv)
    assert said in str(refused.value)
