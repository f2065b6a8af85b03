"""Rerun: re-execute a logged negotiation and check that it comes out the same.

The room is rebuilt from its `negotiation.started` event and run again through the real
broker, agents and brains, on an in-memory bus and log. LLM brains get their recorded
responses played back (`ReplayProvider`) instead of calling a model; baseline brains
replay from the seed. The new events are compared with the original ones, agent by agent
(sellers answer in parallel, so only each agent's own order is meaningful), ignoring
what is never reproducible (message ids, latencies).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import msgspec

from mams.actors.brains.base import BASELINE_LABEL, BuyerBrain, SellerBrain
from mams.actors.brains.baseline import BaselineBuyer, BaselineSeller
from mams.actors.brains.llm.brain import LLMBuyerBrain, LLMSellerBrain, prompt_digest
from mams.actors.brains.llm.providers import LLMCallError, LLMRequest, LLMResponse
from mams.actors.market import run_rooms
from mams.bus.base import Bus
from mams.bus.memory import InMemoryBus
from mams.bus.subjects import Subjects
from mams.domain.errors import MamsError
from mams.domain.events import (
    BuyerSaid,
    BuyerWalkedAway,
    DealClosed,
    Event,
    GuardrailTripped,
    LLMCall,
    LLMCalled,
    NegotiationStarted,
    ReasoningRecorded,
    RoundClosed,
    SellerReplied,
    decode_event,
)
from mams.storage.eventstore import InMemoryEventStore


class RerunError(MamsError):
    """A negotiation that cannot be rerun (no opening event, calls missing)."""


class ReplayProvider:
    """Plays back one agent's recorded model calls, in order, instead of calling a model.

    Notes any call whose prompt differs from the recorded one (the code built a different
    prompt) and any call beyond the recording.
    """

    def __init__(self, spec: str, calls: list[LLMCall]) -> None:
        self.name, _, self.model = spec.partition(":")
        self.calls = list(calls)
        self.used = 0
        self.prompt_mismatches: list[int] = []
        self.exhausted = False

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """The next recorded response (or the recorded failure)."""
        if self.used >= len(self.calls):
            self.exhausted = True
            raise LLMCallError(
                provider=self.name,
                model=self.model,
                retries=0,
                reason="the recording has no more calls for this agent",
                request_body="",
            )
        call = self.calls[self.used]
        self.used += 1
        if call.prompt_digest != prompt_digest(request):
            self.prompt_mismatches.append(self.used)
        if call.error:
            error = LLMCallError(
                provider=call.provider,
                model=call.model,
                retries=call.retries,
                reason=call.error,
                request_body=call.request,
                response_body=call.response or None,
            )
            # The recording holds the original error's whole message: replay it verbatim.
            error.args = (call.error,)
            raise error
        tool_input: dict[str, Any] | None = json.loads(call.tool_input) if call.tool_input else None
        return LLMResponse(
            provider=call.provider,
            model=call.model,
            tool_input=tool_input,
            text=call.text,
            request_body=call.request,
            response_body=call.response,
            input_tokens=call.input_tokens,
            output_tokens=call.output_tokens,
            cache_read_tokens=call.cache_read_tokens,
            cache_write_tokens=call.cache_write_tokens,
            latency_ms=call.latency_ms,
            retries=call.retries,
            cost_usd=call.cost_usd,
        )


@dataclass
class RerunReport:
    """What a rerun found: whether it matched, and where it first did not."""

    matches: bool
    original_events: int
    rerun_events: int
    llm_calls_replayed: int
    differences: list[str] = field(default_factory=list)
    prompt_mismatches: dict[str, list[int]] = field(default_factory=dict)


def _actor(event: Event, buyer: str) -> str:
    match event:
        case BuyerSaid() | DealClosed() | BuyerWalkedAway():
            return buyer
        case SellerReplied(seller=s):
            return s
        case LLMCalled(agent=a) | ReasoningRecorded(agent=a) | GuardrailTripped(agent=a):
            return a
        case _:
            return "(room)"


_VOLATILE = {"message_id", "latency_ms"}


def _canonical(event: Event) -> Any:
    def strip(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in _VOLATILE}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    return strip(msgspec.to_builtins(event))


def compare(original: list[Event], rerun: list[Event]) -> list[str]:
    """Differences between two event streams of one room, per acting agent."""
    started = original[0]
    assert isinstance(started, NegotiationStarted)
    buyer = started.buyer.agent_id
    streams: dict[str, list[list[Any]]] = defaultdict(lambda: [[], []])
    for side, events in enumerate((original, rerun)):
        for event in events:
            streams[_actor(event, buyer)][side].append(_canonical(event))
    out: list[str] = []
    for actor, (a, b) in sorted(streams.items()):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            if x != y:
                out.append(
                    f"{actor}: event {i + 1} differs: original {json.dumps(x)[:300]} "
                    f"!= rerun {json.dumps(y)[:300]}"
                )
                break
        else:
            if len(a) != len(b):
                out.append(f"{actor}: {len(a)} events originally, {len(b)} in the rerun")
    return out


def _check_rerunnable(events: list[Event], calls: dict[str, list[LLMCall]]) -> None:
    """Raise RerunError, naming the agent and why, if the room had an agent a rerun cannot
    re-execute: one that is neither a baseline brain nor a MAMS LLM brain with recorded
    model calls, yet took part (it answered, or was waited for and never answered). Such
    an agent ran outside MAMS (an external program on the bus, announcing any brain
    label) or never joined the market, and nothing of it can be played back."""
    started = events[0]
    assert isinstance(started, NegotiationStarted)
    acted: set[str] = set()
    silent: set[str] = set()
    for event in events:
        match event:
            case SellerReplied(seller=s):
                acted.add(s)
            case BuyerSaid() | DealClosed() | BuyerWalkedAway():
                acted.add(started.buyer.agent_id)
            case RoundClosed(unanswered=unanswered):
                silent.update(unanswered)
    agents = [(started.buyer.handle, started.buyer.agent_id, started.buyer.brain)]
    agents += [(s.handle, s.agent_id, s.brain) for s in started.sellers]
    for handle, agent, label in agents:
        if label == BASELINE_LABEL or calls.get(agent):
            continue
        if agent in acted:
            raise RerunError(
                f"{handle} cannot be re-executed: its brain {label!r} is not one of MAMS's "
                "(it was an agent outside MAMS on the bus, such as "
                "examples/external_seller.py) and the log records no model calls of it to "
                "play back. A rerun re-executes baseline and LLM brains only; `mams replay` "
                "shows what it said"
            )
        if agent in silent:
            raise RerunError(
                f"{handle} cannot be re-executed: it never answered (brain {label!r}: it "
                "never joined the market, or said nothing), so a rerun has nothing to play "
                "back for it. A rerun re-executes baseline and LLM brains only; `mams "
                "replay` shows the room"
            )


async def rerun(events: list[Event]) -> RerunReport:
    """Re-execute a logged negotiation with recorded responses; compare the events."""
    if not events or not isinstance(events[0], NegotiationStarted):
        raise RerunError("the log of this negotiation does not start with negotiation.started")
    started = events[0]
    calls: dict[str, list[LLMCall]] = defaultdict(list)
    for event in events:
        if isinstance(event, LLMCalled):
            calls[event.agent].append(event.call)
    _check_rerunnable(events, calls)
    providers: dict[str, ReplayProvider] = {}

    def provider(agent: str, label: str) -> ReplayProvider:
        providers[agent] = ReplayProvider(label, calls[agent])
        return providers[agent]

    b = started.buyer
    brains: dict[str, BuyerBrain | SellerBrain] = {
        b.agent_id: BaselineBuyer()
        if b.brain == BASELINE_LABEL
        else LLMBuyerBrain(provider(b.agent_id, b.brain))
    }
    for s in started.sellers:
        brains[s.agent_id] = (
            BaselineSeller()
            if s.brain == BASELINE_LABEL
            else LLMSellerBrain(provider(s.agent_id, s.brain))
        )
    bus = InMemoryBus()

    async def connect(_name: str) -> Bus:
        return bus

    store = InMemoryEventStore()
    await run_rooms(
        [started], brains, connect=connect, store=store, subjects=Subjects(prefix="rerun")
    )
    new = [decode_event(e.data) for e in await store.read(started.negotiation_id)]
    differences = compare(events, new)
    mismatches = {a: p.prompt_mismatches for a, p in providers.items() if p.prompt_mismatches}
    for agent, p in providers.items():
        if p.used != len(p.calls):
            differences.append(
                f"{agent}: {len(p.calls)} recorded model calls, {p.used} made in the rerun"
            )
    for agent, where in mismatches.items():
        differences.append(f"{agent}: prompt differs from the recording at call(s) {where}")
    return RerunReport(
        matches=not differences,
        original_events=len(events),
        rerun_events=len(new),
        llm_calls_replayed=sum(p.used for p in providers.values()),
        differences=differences,
        prompt_mismatches=mismatches,
    )
