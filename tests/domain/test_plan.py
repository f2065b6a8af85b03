"""The one room-opening plan (`domain.plan`): which rooms a study opens, in what order,
with what options, and which open when at most N may be open."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mams.domain.config import item_key
from mams.domain.messages import OpenRooms
from mams.domain.plan import (
    DEFAULT_MAX_ROUNDS,
    DEFAULT_ROUND_TIMEOUT,
    PlanError,
    PlannedRoom,
    PlanOptions,
    Window,
    pick_items,
    plan_rooms,
)
from tests.integration.scenarios import phone

NAMES = ["USB-C cable", "iPhone 15 case", "Screen protector"]


def test_the_defaults_are_stated_once_and_the_wire_request_uses_them() -> None:
    assert PlanOptions() == PlanOptions(
        max_rounds=DEFAULT_MAX_ROUNDS, round_timeout=DEFAULT_ROUND_TIMEOUT, runs=1
    )
    request = OpenRooms(request_id=uuid.uuid4())
    assert request.options() == PlanOptions()


def test_run_r_has_seed_plus_r() -> None:
    assert PlanOptions(seed=7).seeds() == [7]
    assert PlanOptions(seed=7, runs=3).seeds() == [7, 8, 9]
    assert PlanOptions(runs=2).seeds() == [0, 1]
    assert PlanOptions().seeds() == [None]  # one run without a seed stays unseeded


def test_rooms_come_run_by_run_items_in_order_minus_the_skipped() -> None:
    plan = plan_rooms(NAMES[:2], PlanOptions(seed=4, runs=3), skip={("usb-c  CABLE", 5)})
    assert plan.planned == tuple(
        PlannedRoom(name, seed) for seed in (4, 5, 6) for name in NAMES[:2]
    )
    assert [tuple(r) for r in plan.rooms] == [
        ("USB-C cable", 4),
        ("iPhone 15 case", 4),
        ("iPhone 15 case", 5),
        ("USB-C cable", 6),
        ("iPhone 15 case", 6),
    ]
    assert plan.skipped == 1
    # A name given twice (in any case) is one item.
    assert plan_rooms(["A", "a ", "B"], PlanOptions()).items == ("A", "B")


@pytest.mark.parametrize(
    ("options", "path", "said"),
    [
        (PlanOptions(max_rounds=1), "max_rounds", "must be from 2 to 100, got 1"),
        (PlanOptions(round_timeout=float("nan")), "round_timeout", "must be from 0.1"),
        (PlanOptions(runs=0), "runs", "must be from 1 to 10000, got 0"),
        (PlanOptions(seed=2**62, runs=2), "seed", "the last run's would be"),
        (PlanOptions(rooms_at_once=0), "rooms_at_once", "must be at least 1, got 0"),
        (PlanOptions(runs=5001), "runs", "5001 run(s) x 2 item(s) is more than 10000 rooms"),
    ],
)
def test_options_out_of_range_are_refused_by_name(
    options: PlanOptions, path: str, said: str
) -> None:
    with pytest.raises(PlanError) as refused:
        plan_rooms(NAMES[:2], options)
    [problem] = refused.value.problems
    assert problem.path == path
    assert said in problem.message


def test_items_are_picked_by_name_and_an_unknown_one_is_named_with_the_known() -> None:
    scenario = phone()
    first, second = (i.item_name for i in scenario.buyer.items)
    assert pick_items(scenario, []) == list(scenario.buyer.items)
    assert [i.item_name for i in pick_items(scenario, [second.upper(), first])] == [first, second]
    with pytest.raises(PlanError) as refused:
        pick_items(scenario, ["Toaster"])
    assert "'Toaster' not in this scenario" in str(refused.value)
    assert repr(first) in str(refused.value)
    with pytest.raises(PlanError, match="no item"):
        plan_rooms([], PlanOptions())


names = st.lists(st.sampled_from([*NAMES, "usb-c cable", "Mouse"]), min_size=1, max_size=5)
seeds = st.none() | st.integers(-5, 5)


@given(names, seeds, st.integers(1, 6), st.lists(st.tuples(st.sampled_from(NAMES), seeds)))
def test_a_plan_is_every_item_times_every_seed_minus_skip(
    items: list[str], seed: int | None, runs: int, skip: list[tuple[str, int | None]]
) -> None:
    plan = plan_rooms(items, PlanOptions(seed=seed, runs=runs), skip)
    keys = {item_key(n) for n in items}
    assert len(plan.items) == len(keys)
    assert len(plan.planned) == runs * len(keys)
    assert len(set(plan.planned)) == len(plan.planned)  # no room twice
    skipped = {(item_key(n), s) for n, s in skip}
    assert [r for r in plan.planned if r.key not in skipped] == list(plan.rooms)
    assert all(r.key not in skipped for r in plan.rooms)
    # Run by run: seeds never go back.
    order = PlanOptions(seed=seed, runs=runs).seeds()
    assert [order.index(r.seed) for r in plan.planned] == sorted(
        order.index(r.seed) for r in plan.planned
    )


@given(st.integers(0, 30), st.none() | st.integers(1, 8), st.integers(0, 5))
def test_a_window_keeps_at_most_at_once_open_and_no_slot_idle_while_rooms_wait(
    n: int, at_once: int | None, already: int
) -> None:
    window = Window(list(range(n)), at_once, already_open=already)
    opened: list[int] = []
    open_now = already
    due = window.open_now()
    while True:
        opened += due
        open_now += len(due)
        assert window.open == open_now
        if at_once is None:
            assert window.waiting == 0  # every room at the start
        else:
            assert open_now <= max(at_once, already)  # taken-over rooms may exceed it
            if window.waiting:
                assert open_now >= at_once  # no slot left idle while rooms wait
        if open_now == 0:
            break
        open_now -= 1  # some open room ends
        due = window.ended()
    assert opened == list(range(n))  # every room, once, in order


def test_a_window_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Window([1], 0)


def test_given_options_take_the_defaults_only_where_nothing_was_given() -> None:
    assert PlanOptions.given(max_rounds=None, runs=None) == PlanOptions()
    llm = PlanOptions.given(llm=True, seed=3)
    assert (llm.round_timeout, llm.rooms_at_once, llm.seed) == (120.0, 20, 3)
    given = PlanOptions.given(llm=True, round_timeout=5.0, rooms_at_once=2, max_rounds=0)
    assert (given.round_timeout, given.rooms_at_once) == (5.0, 2)
    # A zero is a value given, not "not given": it stays, for problems() to refuse.
    assert [p.path for p in given.problems()] == ["max_rounds"]
