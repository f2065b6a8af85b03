"""Strategies played by the baseline brains, in rooms run by `run_market` (in-memory bus
and log): each built-in runs a room to its end and the log says what each agent played;
the rule variants differ as their definitions say; `accept_first`, the known effect,
closes sooner and pays more than `default` on the same seeds."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from statistics import mean

import pytest

from mams.actors.market import RoomResult
from mams.domain.events import BuyerSaid, DealClosed
from mams.domain.strategies import builtin_names, find
from mams.storage.eventstore import InMemoryEventStore
from tests.strategies.helpers import events, play, started, with_strategies


@pytest.mark.parametrize("name", builtin_names("buyer"))
async def test_every_buyer_strategy_plays_a_room_to_its_end_and_the_log_names_it(
    name: str,
) -> None:
    [room], store = await play(with_strategies(buyer=name), seed=3)
    assert room.state.ended is not None
    assert room.state.ended.status == "completed"
    opened = await started(store, room)
    strategy = find("buyer", name)
    assert strategy is not None
    label = "default" if name == "default" else f"{name}@1"
    assert opened.buyer.strategy == strategy.label == label
    assert {s.strategy for s in opened.sellers} == {"default"}


@pytest.mark.parametrize("name", builtin_names("seller"))
async def test_every_seller_strategy_plays_a_room_to_its_end_and_the_log_names_it(
    name: str,
) -> None:
    [room], store = await play(with_strategies(sellers=name), seed=3)
    assert room.state.ended is not None
    assert room.state.ended.status == "completed"
    opened = await started(store, room)
    assert {s.strategy for s in opened.sellers} == {"default" if name == "default" else f"{name}@1"}


async def said(name: str, seed: int = 2, max_rounds: int = 10) -> list[BuyerSaid]:
    [room], store = await play(with_strategies(buyer=name), seed=seed, max_rounds=max_rounds)
    return [e for e in await events(store, room) if isinstance(e, BuyerSaid)]


async def test_the_buyer_rule_variants_play_as_their_definitions_say() -> None:
    default = await said("default")
    # anchor_low: its first counter is below the ideal price, where default's never is.
    first = [s.counter_price for s in await said("anchor_low") if s.counter_price is not None]
    assert first[0] is not None
    assert first[0] < Decimal("8.00")
    assert all(s.counter_price is None or s.counter_price >= Decimal("8.00") for s in default)

    # patient: its target rises more slowly, so its first counter is lower than default's.
    def first_counter(lines: list[BuyerSaid]) -> Decimal:
        return next(s.counter_price for s in lines if s.counter_price is not None)

    assert first_counter(await said("patient")) < first_counter(default)
    # cite_offers cites the best standing offer and asks to beat it.
    assert any("Beat it" in s.text for s in await said("cite_offers"))
    # split_difference proposes the midpoint.
    assert any("meet halfway" in s.text for s in await said("split_difference"))
    # walk_away_threat threatens in its last rounds before the final one; default never.
    threatened = await said("walk_away_threat", max_rounds=4)
    threats = [s.round for s in threatened if "walk away" in s.text]
    assert threats
    assert min(threats) >= 2
    assert not any("walk away" in s.text for s in await said("default", max_rounds=4))


async def test_the_seller_rule_variants_differ_from_default() -> None:
    """Each seller strategy changes what the sellers offer on the same seed."""

    async def offers(name: str) -> list[Decimal]:
        [room], store = await play(with_strategies(sellers=name), seed=4)
        return [
            e.offer.unit_price
            for e in await events(store, room)
            if hasattr(e, "offer") and e.offer is not None
        ]

    default = await offers("default")
    for name in ("firm", "flexible", "quick_close"):
        assert await offers(name) != default, name


async def test_default_plays_as_before_strategies_existed() -> None:
    """A scenario without a strategy and one naming `default` play the same rooms, and
    their opening events leave the strategy out (as logs did before it existed)."""
    [plain], store_a = await play(with_strategies(), seed=5)
    [named], store_b = await play(with_strategies(buyer="default", sellers="default"), seed=5)

    def words(evs: Sequence[object]) -> list[tuple[str, str]]:
        return [(type(e).__name__, getattr(e, "text", "")) for e in evs]

    assert words(await events(store_a, plain)) == words(await events(store_b, named))
    raw = (await store_b.read(named.negotiation_id))[0].data
    assert b"strategy" not in raw


async def test_accept_first_closes_sooner_and_pays_more_than_default() -> None:
    """The known effect of issue 20's validity test, over 30 fixed seeds (no flakiness:
    the baseline brains are deterministic by seed)."""
    runs = 30
    control, store_c = await play(with_strategies(buyer="default"), seed=100, runs=runs)
    treated, store_t = await play(with_strategies(buyer="accept_first"), seed=100, runs=runs)

    async def deals(rooms: list[RoomResult], store: InMemoryEventStore) -> list[DealClosed]:
        found: list[DealClosed] = []
        for room in rooms:
            found += [e for e in await events(store, room) if isinstance(e, DealClosed)]
        return found

    c_deals, t_deals = await deals(control, store_c), await deals(treated, store_t)
    assert len(t_deals) == runs  # every room closes, at the first offer within max
    c_rounds = [r.state.ended.outcome.rounds for r in control if r.state.ended]
    t_rounds = [r.state.ended.outcome.rounds for r in treated if r.state.ended]
    assert len(c_rounds) == len(t_rounds) == runs
    assert mean(t_rounds) < mean(c_rounds)
    t_price = mean(d.unit_price for d in t_deals)
    c_price = mean(d.unit_price for d in c_deals)
    print(
        f"accept_first: {len(t_deals)}/{runs} deals, rounds {mean(t_rounds):.2f}, "
        f"price {t_price:.2f}; default: {len(c_deals)}/{runs} deals, rounds "
        f"{mean(c_rounds):.2f}, price {c_price:.2f}"
    )
    assert t_price > c_price
