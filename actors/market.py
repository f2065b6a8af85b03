"""A market run: the whole cast of one scenario as actors on one bus, one log.

Starts the broker, the buyer and each seller as separate actors (each with its own bus
connection and private inbox), opens a room per item, follows the committed events on
the observers' subject until every room has ended, and returns the outcomes.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from uuid import UUID

import anyio
import structlog
from msgspec.structs import replace

from mams.actors.agent import AgentActor
from mams.actors.brains.base import BASELINE_LABEL, BuyerBrain, SellerBrain
from mams.actors.brains.baseline import BaselineBuyer, BaselineSeller
from mams.bus.base import Bus
from mams.bus.subjects import Subjects
from mams.domain.config import (
    AUTO_MODEL,
    BASELINE_MODEL,
    BuyerItem,
    Scenario,
    Stockists,
    item_key,
    stock_index,
)
from mams.domain.events import Event, NegotiationStarted
from mams.domain.messages import decode_committed
from mams.domain.negotiation import INITIAL, NegotiationState, evolve
from mams.domain.opening import opening
from mams.domain.plan import PlanOptions, Window, plan_rooms

if TYPE_CHECKING:  # the broker and the monitor are imported by the runs that start them
    from mams.actors.monitor import OnFlag
    from mams.actors.voice import VoiceOptions
    from mams.storage.eventstore import EventStore
    from mams.storage.leases import Leases

log = structlog.get_logger("mams.market")

JOIN_TIMEOUT = 30.0

Connect = Callable[[str], Awaitable[Bus]]
OnEvent = Callable[[UUID, int, Event, NegotiationState], None]


class RunOptions(PlanOptions, frozen=True, kw_only=True):
    """A run's plan (`PlanOptions`: round limit, deadline, seed, runs, rooms at once, with
    their defaults) and who plays it: model overrides for the buyer and for every seller
    ("baseline", "auto" or "provider:model"), and whether the quality monitor grades each
    room live (its flags land in the log)."""

    buyer_model: str | None = None
    seller_model: str | None = None
    monitor: bool = False

    def plan_options(self) -> PlanOptions:
        """The plan part alone (what an `open_rooms` carries)."""
        return PlanOptions(**{f: getattr(self, f) for f in PlanOptions.__struct_fields__})


@dataclass(slots=True)
class RoomResult:
    """One negotiation's final state, folded from its committed events."""

    negotiation_id: UUID
    item_name: str
    state: NegotiationState = field(default_factory=lambda: INITIAL)


def brain_label(model: str) -> str:
    """The label a resolved model string runs under."""
    return BASELINE_LABEL if model == BASELINE_MODEL else model


def resolve_model(model: str, env: Mapping[str, str] | None = None) -> str:
    """A concrete model string: "auto" becomes the configured LLM's default, or baseline."""
    if model != AUTO_MODEL:
        return model
    from mams.actors.brains.llm.models import DEFAULT_MODELS, available_llm

    provider = available_llm(os.environ if env is None else env)
    return f"{provider}:{DEFAULT_MODELS[provider]}" if provider else BASELINE_MODEL


def resolve_models(
    scenario: Scenario, options: RunOptions, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Each agent's concrete model: CLI override, else the scenario's, else auto."""
    models = {
        scenario.buyer.agent_id: resolve_model(options.buyer_model or scenario.buyer.model, env)
    }
    for seller in scenario.sellers:
        models[seller.agent_id] = resolve_model(options.seller_model or seller.model, env)
    return models


def make_buyer_brain(model: str, env: Mapping[str, str] | None = None) -> BuyerBrain:
    """The buyer brain for a concrete model string (raises ProviderConfigError if the
    provider is not configured)."""
    if model == BASELINE_MODEL:
        return BaselineBuyer()
    from mams.actors.brains.llm.brain import LLMBuyerBrain
    from mams.actors.brains.llm.providers import provider_for

    return LLMBuyerBrain(provider_for(model, os.environ if env is None else env))


def make_seller_brain(model: str, env: Mapping[str, str] | None = None) -> SellerBrain:
    """A seller brain for a concrete model string."""
    if model == BASELINE_MODEL:
        return BaselineSeller()
    from mams.actors.brains.llm.brain import LLMSellerBrain
    from mams.actors.brains.llm.providers import provider_for

    return LLMSellerBrain(provider_for(model, os.environ if env is None else env))


def build_started(
    scenario: Scenario,
    session_id: UUID,
    item: BuyerItem,
    options: RunOptions,
    negotiation_id: UUID | None = None,
    models: Mapping[str, str] | None = None,
    stockists: Stockists | None = None,
) -> NegotiationStarted:
    """The opening event of a room for one buyer item (see `domain.opening`).

    `models` maps agent ids to concrete model strings (default: resolved from options,
    scenario and environment); the log records each agent's brain by its label.
    """
    models = models if models is not None else resolve_models(scenario, options)
    if stockists is None:
        stockists = stock_index(scenario).get(item_key(item.item_name), ())
    labels = {agent: brain_label(model) for agent, model in models.items()}
    room = options.for_room(options.seed)
    return opening(scenario, session_id, item, room, labels, negotiation_id, stockists)


def prepare_brains(
    scenario: Scenario,
    items: Sequence[BuyerItem],
    options: RunOptions,
    given: Mapping[str, BuyerBrain | SellerBrain] | None = None,
) -> tuple[dict[str, str], dict[str, BuyerBrain | SellerBrain]]:
    """Resolve every agent's model and build its brain, but for the agents `given` one
    (a person as the buyer: `actors.human.HumanBuyer`), whose label is their brain's.
    Call it before writing anything: a provider that is not configured raises
    ProviderConfigError naming what to set."""
    given = given or {}
    models = resolve_models(scenario, options)
    buyer = scenario.buyer.agent_id
    brains: dict[str, BuyerBrain | SellerBrain] = dict(given)
    if buyer not in brains:
        brains[buyer] = make_buyer_brain(models[buyer])
    for agent_id in involved_ids(scenario, items):
        if agent_id not in brains:
            brains[agent_id] = make_seller_brain(models[agent_id])
    for agent_id, brain in given.items():
        models[agent_id] = brain.label
    return models, brains


def check_brains(
    scenario: Scenario, items: Sequence[BuyerItem], options: RunOptions
) -> dict[str, str]:
    """Resolve every agent's model and check its provider is configured, as
    `prepare_brains` would, but build nothing: no SDK imported, no HTTP client made (a
    check before a run, whose brains are built once, where they run). Raises
    ProviderConfigError naming what to set."""
    models = resolve_models(scenario, options)
    agents = [scenario.buyer.agent_id, *involved_ids(scenario, items)]
    specs = {models[a] for a in agents} - {BASELINE_MODEL}
    if specs:
        from mams.actors.brains.llm.providers import check_provider

        for spec in sorted(specs):
            check_provider(spec, os.environ)
    return models


async def close_brains(brains: Mapping[str, BuyerBrain | SellerBrain]) -> None:
    """Release what brains hold (LLM brains: their provider's HTTP client)."""
    for brain in brains.values():
        close = getattr(brain, "aclose", None)
        if close is not None:
            try:
                await close()
            except Exception as exc:  # closing on the way out; report, keep closing
                log.warning("market.brain_close_failed", error=repr(exc))


def involved_ids(scenario: Scenario, items: Sequence[BuyerItem]) -> list[str]:
    """Agent ids of the sellers stocking any of these items, in scenario order."""
    index = stock_index(scenario)
    stocking = {s.agent_id for i in items for s, _ in index.get(item_key(i.item_name), ())}
    return [s.agent_id for s in scenario.sellers if s.agent_id in stocking]


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
    on_flag: OnFlag | None = None,
    skip: Collection[tuple[str, int | None]] = (),
    leases: Leases | None = None,
    resume: Sequence[UUID] = (),
    brains: Mapping[str, BuyerBrain | SellerBrain] | None = None,
    voice: VoiceOptions | None = None,
) -> list[RoomResult]:
    """Run the rooms `domain.plan` plans for these items; return when all have ended.

    With `options.runs` > 1, each item is negotiated that many times, in rooms of their
    own; run r (from 0) has seed `options.seed + r` (0 + r without a seed), so the runs
    differ and each can be rerun alone. Rooms come back run by run, items in order. With
    `options.rooms_at_once`, at most that many rooms are open at once (`run_rooms`). Rooms
    whose (item name, seed) is in `skip` are left out (those a study already completed).
    `resume` and `leases`: see `run_rooms`. `brains` replace the brains of those agents
    (a person as the buyer). `voice`: see `run_rooms`. Raises PlanError for options out
    of range.

    Cancelling (Ctrl-C) records open rooms as aborted before returning the cancellation.
    """
    plan = plan_rooms([i.item_name for i in items], options, skip)
    models, cast = prepare_brains(scenario, items, options, brains)
    built = {a: b for a, b in cast.items() if brains is None or a not in brains}
    index = stock_index(scenario)
    try:
        starts = [
            build_started(
                scenario,
                session_id,
                scenario.buyer_item(room.item_name),
                replace(options, seed=room.seed, runs=1),
                None,
                models,
                index.get(item_key(room.item_name), ()),
            )
            for room in plan.rooms
        ]
        return await run_rooms(
            starts,
            cast,
            connect=connect,
            store=store,
            on_event=on_event,
            on_opened=on_opened,
            subjects=subjects,
            monitor=options.monitor,
            on_flag=on_flag,
            max_open=options.rooms_at_once,
            leases=leases,
            resume=resume,
            voice=voice,
        )
    finally:
        with anyio.CancelScope(shield=True):
            await close_brains(built)


async def run_rooms(
    starts: Sequence[NegotiationStarted],
    brains: Mapping[str, BuyerBrain | SellerBrain],
    *,
    connect: Connect,
    store: EventStore,
    on_event: OnEvent | None = None,
    on_opened: Callable[[list[RoomResult]], None] | None = None,
    subjects: Subjects | None = None,
    monitor: bool = False,
    on_flag: OnFlag | None = None,
    max_open: int | None = None,
    leases: Leases | None = None,
    resume: Sequence[UUID] = (),
    voice: VoiceOptions | None = None,
) -> list[RoomResult]:
    """Run these rooms with these brains (by agent id) until every room has ended.

    With `monitor`, a QualityMonitor grades them live (`on_flag` sees each finding as it
    fires); this returns once it has recorded its findings for every room. With
    `max_open`, at most that many rooms are open at once: the next opens as one ends
    (models serve a few calls at a time, and a round's deadline runs while its turns
    wait for them).

    `resume` names rooms of the log to go on with (those of an interrupted run): the broker
    takes over those that have not ended and whose broker is gone (`Broker.resume`; with
    `leases`, never a room a live broker serves), and they come first among the rooms
    returned, counted among the open ones. Their agents need brains here too. With
    `leases`, the broker claims every room it opens (`storage.leases`).

    With `voice`, a `VoiceObserver` (`actors/voice.py`) reads each seller's line aloud
    off the rounds' path; once the rooms have ended this waits up to `voice.drain`
    seconds for the lines still queued.
    """
    if max_open is not None and max_open < 1:
        raise ValueError(f"max_open must be at least 1, got {max_open}")
    if not starts and not resume:
        return []
    from mams.actors.broker import Broker
    from mams.actors.monitor import QualityMonitor, galileo_hook

    subjects = subjects or Subjects(prefix=market_prefix())
    buses: list[Bus] = []

    async def bus_for(name: str) -> Bus:
        bus = await connect(name)
        buses.append(bus)
        return bus

    try:
        broker = Broker(await bus_for("broker"), store, subjects, leases=leases)
        resumed: list[RoomResult] = []
        # Its agents start below, each with a full catch-up hello: no re-send before that.
        for nid in await broker.resume(resume, resync=False) if resume else []:
            state = broker.rooms[nid].state
            assert state.started is not None  # resume() takes only rooms that started
            resumed.append(RoomResult(nid, state.started.item_name, state))
        if not starts and not resumed:
            return []
        cast = [r.state.started for r in resumed if r.state.started is not None] + list(starts)
        rooms = resumed + [
            RoomResult(negotiation_id=st.negotiation_id, item_name=st.item_name) for st in starts
        ]
        by_id = {r.negotiation_id: r for r in rooms}
        buyers = {st.buyer.agent_id for st in cast}
        sellers = list(dict.fromkeys(s.agent_id for st in cast for s in st.sellers))
        async with anyio.create_task_group() as tg:
            observer = await bus_for("observer")
            events_sub = await observer.subscribe(subjects.all_events(), max_pending=1_000_000)
            grader = None
            if monitor:
                grader = QualityMonitor(
                    await bus_for("monitor"),
                    store,
                    subjects,
                    on_ended=galileo_hook(store),
                    on_flag=on_flag,
                )
                await tg.start(grader.run)
            speaker = None
            if voice is not None:
                from mams.actors.voice import VoiceObserver

                speaker = VoiceObserver(await bus_for("voice"), store, subjects, voice)
                await tg.start(speaker.run)
            await tg.start(broker.run)
            for agent_id in sorted(buyers):
                actor = AgentActor(
                    await bus_for(agent_id), subjects, agent_id, brains[agent_id], "buyer"
                )
                await tg.start(actor.run)
            for agent_id in sellers:
                actor = AgentActor(
                    await bus_for(agent_id), subjects, agent_id, brains[agent_id], "seller"
                )
                await tg.start(actor.run)
            # Open rooms only once every agent has said hello (and so is subscribed).
            with anyio.fail_after(JOIN_TIMEOUT):
                await broker.joined({*buyers, *sellers})
            window = Window(starts, max_open, already_open=len(resumed))
            for started in window.open_now():
                await broker.open(started)
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
                if result.state.phase == "ended" and result.negotiation_id in open_rooms:
                    open_rooms.discard(result.negotiation_id)
                    for started in window.ended():
                        await broker.open(started)
                    if not open_rooms:
                        break
            if grader is not None:
                await grader.settle(by_id)
            if speaker is not None and voice is not None:
                await speaker.settle(wait=voice.drain)
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            for bus in buses:
                try:
                    await bus.close()
                except Exception as exc:  # closing on the way out; report, keep closing
                    log.warning("market.bus_close_failed", error=repr(exc))
    return rooms
