"""A known negotiation whose every model call really went through the anthropic SDK to the
loopback fake, committed by the domain's own decide/evolve, and stored in PostgreSQL.

The room (tests/domain/helpers.started): @Buyer needs 2 cases, target $8.00, max $14.00;
@Alpha, @Beta, @Gamma each cost $5.00 with floor $9.00. Round 1: the buyer asks everyone;
@Alpha offers $12.00 and leaks its cost ("it costs me $5.00"), @Beta offers $13.00,
@Gamma makes no offer. Round 2: the buyer accepts @Alpha at $12.00. Alpha's reply first
tried $8.50 (below its floor), which its own guardrail repaired.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import msgspec

from mams.actors.brains.llm.brain import BUYER_TOOL, SELLER_TOOL, record
from mams.actors.brains.llm.providers import AnthropicProvider, ChatMessage, LLMRequest, ToolSpec
from mams.domain.events import (
    Event,
    LLMCall,
    NegotiationStarted,
    Offer,
    QualityFlagged,
    SellerReplied,
    encode_event,
    event_type,
)
from mams.domain.messages import Accept, BuyerAction, BuyerTurn, GuardrailNote, Say, SellerTurn
from mams.domain.negotiation import FromAgent
from mams.storage.eventstore import EventStore
from mams.storage.model import NewEvent
from tests.domain.helpers import BUYER, NID, Room, started
from tests.llm.fakes import FakeAnthropic, anthropic_tool_use

BRAIN = "anthropic:claude-fake"
LEAK = "Fine, $12.00 each, and that is generous: it costs me $5.00."
BUYER_REASONING_1 = "Open wide to get all three quoting; aim near $9."
ALPHA_REASONING = "Profit first; 12 keeps a good margin over my floor."


def opening() -> NegotiationStarted:
    """The test room with every agent's brain labelled as the fake Claude."""
    base = started()
    return msgspec.structs.replace(
        base,
        buyer=msgspec.structs.replace(base.buyer, brain=BRAIN),
        sellers=tuple(msgspec.structs.replace(s, brain=BRAIN) for s in base.sellers),
    )


class Caller:
    """Real SDK calls to the fake, recorded as the brains record them."""

    def __init__(self, fake: FakeAnthropic, provider: AnthropicProvider) -> None:
        self.fake = fake
        self.provider = provider

    async def __call__(self, tool: ToolSpec, answer: dict[str, Any], prompt: str) -> LLMCall:
        """The fake answers `answer` through `tool`; the call as the log keeps it."""
        self.fake.queue(anthropic_tool_use(tool.name, answer))
        request = LLMRequest(
            system="You negotiate.",
            messages=(ChatMessage(role="user", content=prompt),),
            tool=tool,
        )
        response = await self.provider.complete(request)
        return record(self.provider, request, "decide", response)


def _buyer(round_: int, action: BuyerAction, reasoning: str, calls: tuple[LLMCall, ...]) -> Any:
    turn = BuyerTurn(
        negotiation_id=NID,
        round=round_,
        message_id=uuid.uuid4(),
        action=action,
        reasoning=reasoning,
        llm_calls=calls,
    )
    return FromAgent(agent=BUYER, turn=turn)


def _seller(
    agent: str,
    text: str,
    price: str | None,
    calls: tuple[LLMCall, ...],
    reasoning: str = "",
    notes: tuple[GuardrailNote, ...] = (),
) -> Any:
    offer = None if price is None else Offer(unit_price=Decimal(price), quantity=2)
    turn = SellerTurn(
        negotiation_id=NID,
        round=1,
        message_id=uuid.uuid4(),
        text=text,
        offer=offer,
        reasoning=reasoning,
        guardrails=notes,
        llm_calls=calls,
    )
    return FromAgent(agent=agent, turn=turn)


async def negotiation(fake: FakeAnthropic) -> list[Event]:
    """The known negotiation's committed events."""
    async with AnthropicProvider("claude-fake", api_key="k", base_url=fake.url) as provider:
        return await _negotiate(Caller(fake, provider))


async def _negotiate(call: Caller) -> list[Event]:
    room = Room(opening())
    say = {"reasoning": BUYER_REASONING_1, "action": "message", "text": "Best price for 2?"}
    room.ok(
        _buyer(
            1,
            Say(text="Best price for 2?"),
            BUYER_REASONING_1,
            (await call(BUYER_TOOL, say, "round 1"),),
        )
    )
    alpha = {"reasoning": ALPHA_REASONING, "text": LEAK, "offer_unit_price": 12.0}
    repaired = GuardrailNote(
        rule="offer_below_floor",
        detail="8.50 is below your floor",
        attempted='{"offer": 8.5}',
        resolution="repaired",
    )
    alpha_calls = (await call(SELLER_TOOL, alpha, "alpha round 1"),)
    room.ok(_seller("alpha", LEAK, "12.00", alpha_calls, ALPHA_REASONING, (repaired,)))
    beta = {"reasoning": "match", "text": "$13.00 each.", "offer_unit_price": 13.0}
    beta_calls = (await call(SELLER_TOOL, beta, "beta round 1"),)
    room.ok(_seller("beta", "$13.00 each.", "13.00", beta_calls))
    gamma = {"reasoning": "wait", "text": "Let me check stock.", "offer_unit_price": None}
    gamma_calls = (await call(SELLER_TOOL, gamma, "gamma round 1"),)
    room.ok(_seller("gamma", "Let me check stock.", None, gamma_calls))
    accept = {"reasoning": "Alpha is cheapest", "action": "accept", "text": "Deal, @Alpha."}
    room.ok(
        _buyer(
            2,
            Accept(seller="alpha", unit_price=Decimal("12.00"), quantity=2, text="Deal, @Alpha."),
            "Alpha is cheapest",
            (await call(BUYER_TOOL, accept, "round 2"),),
        )
    )
    return room.events


def flags(events: list[Event]) -> list[QualityFlagged]:
    """The findings a grounded check would make here: Alpha leaked its cost."""
    reply = next(e for e in events if isinstance(e, SellerReplied) and e.seller == "alpha")
    return [
        QualityFlagged(
            negotiation_id=NID,
            kind="leakage",
            rule="leakage.seller_cost",
            severity="high",
            agent="alpha",
            round=1,
            evidence=(str(reply.message_id),),
            detail='@Alpha revealed its cost: "it costs me $5.00"',
            brain=BRAIN,
            style="neutral",
        )
    ]


async def store_events(store: EventStore, events: list[Event]) -> None:
    """Append the events as the negotiation's stream, as the broker would."""
    started_ = events[0]
    assert isinstance(started_, NegotiationStarted)
    nid = started_.negotiation_id
    await store.append(
        [
            NewEvent(nid, seq, uuid.uuid4(), event_type(e), encode_event(e))
            for seq, e in enumerate(events, 1)
        ]
    )
