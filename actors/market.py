"""A market run: the whole cast of one scenario as actors on one bus, one log.

Starts the broker, the buyer and each seller as separate actors (each with its own bus
connection and private inbox), opens a room per item, follows the committed events on
the observers' subject until every room has ended, and returns the outcomes.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

import anyio
import structlog

from mams.actors.agent import AgentActor
from mams.actors.brains.base import BASELINE_LABEL, BuyerBrain, SellerBrain
from mams.actors.brains.baseline import BaselineBuyer, BaselineSeller
from mams.actors.broker import Broker
from mams.bus.base import Bus
from mams.bus.subjects import Subjects
from mams.domain.config import BASELINE_MODEL, BuyerItem, Scenario, SellerConfig
from mams.domain.errors import MamsError
from mams.domain.events import BuyerTerms, Event, NegotiationStarted, SellerTerms
from mams.domain.messages import decode_committed
from mams.domain.negotiation import INITIAL, NegotiationState, evolve
from mams.storage.eventstore import EventStore

log = structlog.get_logger("mams.market")

Connect = Callable[[str], Awaitable[Bus]]
OnEvent = Callable[[UUID, int, Event, NegotiationState], None]


class BrainUnavailableError(MamsError):
    """A scenario asks for a brain this installation cannot run."""


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Knobs of a run: round limit, seed for baseline brains, per-round deadline."""

    max_rounds: int = 8
    seed: int | None = None
    round_timeout: float = 30.0


@dataclass(slots=True)
class RoomResult:
    """One negotiation's final state, folded from its committed events."""

    negotiation_id: UUID
    item_name: str
    state: NegotiationState = field(default_factory=lambda: INITIAL)


def brain_label(model: str) -> str:
    """The label a model string runs under."""
    return BASELINE_LABEL if model == BASELINE_MODEL else model


def _check_models(scenario: Scenario) -> None:
    wanted = [scenario.buyer.model, *(s.model for s in scenario.sellers)]
    llm = sorted({m for m in wanted if m != BASELINE_MODEL})
    if llm:
        raise BrainUnavailableError(
            f"this version runs only the baseline (no LLM) brains, but the scenario asks for "
            f'{", ".join(llm)}; remove the `model` fields (or set them to "baseline")'
        )


def make_buyer_brain(model: str) -> BuyerBrain:
    """The buyer brain for a model string."""
    return BaselineBuyer()


def make_seller_brain(model: str) -> SellerBrain:
    """A seller brain for a model string."""
    return BaselineSeller()


def build_started(
    scenario: Scenario,
    session_id: UUID,
    item: BuyerItem,
    options: RunOptions,
    negotiation_id: UUID | None = None,
) -> NegotiationStarted:
    """The opening event of a room for one buyer item, with every private fact in it."""
    buyer = scenario.buyer
    sellers: list[SellerTerms] = []
    for s in scenario.sellers_of(item.item_name):
        stock = s.stock(item.item_name)
        assert stock is not None
        sellers.append(
            SellerTerms(
                agent_id=s.agent_id,
                handle=s.handle,
                style=s.style,
                customer_retention_weight=s.customer_retention_weight,
                profit_maximization_weight=s.profit_maximization_weight,
                cost_price=stock.cost_price,
                selling_price=stock.selling_price,
                least_price=stock.least_price,
                brain=brain_label(s.model),
            )
        )
    return NegotiationStarted(
        negotiation_id=negotiation_id or uuid.uuid4(),
        session_id=session_id,
        item_name=item.item_name,
        buyer=BuyerTerms(
            agent_id=buyer.agent_id,
            handle=buyer.handle,
            quantity=item.quantity,
            min_price=item.min_price,
            max_price=item.max_price,
            brain=brain_label(buyer.model),
        ),
        sellers=tuple(sellers),
        max_rounds=options.max_rounds,
        round_timeout=options.round_timeout,
        seed=options.seed,
    )


def market_prefix() -> str:
    """A subject prefix of its own for one in-process run, so runs sharing a server never
    see each other's traffic."""
    return f"mams-{secrets.token_hex(4)}"


async def run_market(
    scenario: Scenario,
    session_id: UUID,
    items: Sequence[BuyerItem],
    *,
    connect: Connect,
    store: EventStore,
    options: RunOptions,
    on_event: OnEvent | None = None,
    on_opened: Callable[[list[RoomResult]], None] | None = None,
    subjects: Subjects | None = None,
) -> list[RoomResult]:
    """Run every item's negotiation concurrently; return when all have ended.

    Cancelling (Ctrl-C) records open rooms as aborted before returning the cancellation.
    """
    _check_models(scenario)
    subjects = subjects or Subjects(prefix=market_prefix())
    rooms = [RoomResult(negotiation_id=uuid.uuid4(), item_name=i.item_name) for i in items]
    by_id = {r.negotiation_id: r for r in rooms}
    involved: dict[str, SellerConfig] = {}
    for item in items:
        for s in scenario.sellers_of(item.item_name):
            involved[s.agent_id] = s
    buses: list[Bus] = []

    async def bus_for(name: str) -> Bus:
        bus = await connect(name)
        buses.append(bus)
        return bus

    try:
        async with anyio.create_task_group() as tg:
            observer = await bus_for("observer")
            events_sub = await observer.subscribe(subjects.all_events(), max_pending=1_000_000)
            broker = Broker(await bus_for("broker"), store, subjects)
            await tg.start(broker.run)
            buyer = scenario.buyer
            await tg.start(
                AgentActor(
                    await bus_for(buyer.agent_id),
                    subjects,
                    buyer.agent_id,
                    make_buyer_brain(buyer.model),
                    "buyer",
                ).run
            )
            for agent_id, seller in involved.items():
                await tg.start(
                    AgentActor(
                        await bus_for(agent_id),
                        subjects,
                        agent_id,
                        make_seller_brain(seller.model),
                        "seller",
                    ).run
                )
            for room, item in zip(rooms, items, strict=True):
                await broker.open(
                    build_started(scenario, session_id, item, options, room.negotiation_id)
                )
            if on_opened is not None:
                on_opened(rooms)
            open_rooms = set(by_id)
            async for msg in events_sub:
                committed = decode_committed(msg.data)
                result = by_id.get(committed.negotiation_id)
                if result is None:
                    continue
                result.state = evolve(result.state, committed.event)
                if on_event is not None:
                    on_event(result.negotiation_id, committed.seq, committed.event, result.state)
                if result.state.phase == "ended":
                    open_rooms.discard(result.negotiation_id)
                    if not open_rooms:
                        break
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            for bus in buses:
                try:
                    await bus.close()
                except Exception as exc:  # closing on the way out; report, keep closing
                    log.warning("market.bus_close_failed", error=repr(exc))
    return rooms
