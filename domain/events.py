"""Events: the facts of a negotiation, past tense, frozen, with stable type tags.

The tag (`"buyer.said"`) is what the log stores; renaming a class never breaks a stored
log. New fields get defaults and types never change, so old logs keep decoding.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal
from uuid import UUID, uuid5

import msgspec

OutcomeType = Literal["deal", "no_deal", "max_rounds"]
Status = Literal["completed", "aborted"]


class Offer(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A seller's committed offer: unit price for a quantity."""

    unit_price: Decimal
    quantity: int


class BuyerTerms(msgspec.Struct, frozen=True, gc=False, kw_only=True, omit_defaults=True):
    """The buyer's private facts for one item (only the buyer and the log see them).

    `strategy` is the label of the strategy it plays (`domain.strategies`); for one a
    scenario defined, `strategy_prompt` and `strategy_base` (its rules' built-in) too.
    Left out of the encoding when default, so a default room's event is as before."""

    agent_id: str
    handle: str
    quantity: int
    min_price: Decimal
    max_price: Decimal
    brain: str
    strategy: str = "default"
    strategy_prompt: str = ""
    strategy_base: str = ""


class SellerTerms(msgspec.Struct, frozen=True, gc=False, kw_only=True, omit_defaults=True):
    """One seller's private facts for one item (only that seller and the log see them);
    `strategy*` as in BuyerTerms."""

    agent_id: str
    handle: str
    style: str
    customer_retention_weight: Decimal
    profit_maximization_weight: Decimal
    cost_price: Decimal
    selling_price: Decimal
    least_price: Decimal
    brain: str
    strategy: str = "default"
    strategy_prompt: str = ""
    strategy_base: str = ""


class Outcome(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """How a negotiation ended. `seller`, prices and quantity are set for a deal only."""

    type: OutcomeType
    rounds: int
    seller: str | None = None
    unit_price: Decimal | None = None
    quantity: int | None = None

    @property
    def total(self) -> Decimal | None:
        """Unit price times quantity for a deal, else None."""
        if self.unit_price is None or self.quantity is None:
            return None
        return self.unit_price * self.quantity


class NegotiationStarted(
    msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="negotiation.started"
):
    """A room opened for one item: who is in it and every private fact the log keeps."""

    negotiation_id: UUID
    session_id: UUID
    item_name: str
    buyer: BuyerTerms
    sellers: tuple[SellerTerms, ...]
    max_rounds: int
    round_timeout: float
    seed: int | None = None
    # The buyer's turn's own deadline, when it is not round_timeout: a person playing the
    # buyer (`mams serve`, `mams play`) has no short deadline; the sellers keep theirs.
    buyer_timeout: float | None = None


class RoundOpened(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="round.opened"):
    """The buyer's turn in `round`; on the final round only accept or walk away remain."""

    round: int
    final: bool = False


class BuyerSaid(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="buyer.said"):
    """The buyer wrote to sellers (`to` are agent ids), optionally with a counter price."""

    round: int
    message_id: UUID
    to: tuple[str, ...]
    text: str
    counter_price: Decimal | None = None


class SellerReplied(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="seller.replied"):
    """A seller answered the buyer, optionally with a committed offer."""

    round: int
    message_id: UUID
    seller: str
    text: str
    offer: Offer | None = None


class RoundClosed(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="round.closed"):
    """Every addressed seller answered, or the deadline passed for those who did not."""

    round: int
    reason: Literal["all_answered", "deadline", "buyer_timeout"]
    unanswered: tuple[str, ...] = ()


class DealClosed(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="deal.closed"):
    """The buyer accepted a seller's standing offer."""

    round: int
    message_id: UUID
    seller: str
    unit_price: Decimal
    quantity: int
    text: str


class BuyerWalkedAway(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="buyer.walked_away"):
    """The buyer left the room without a deal."""

    round: int
    message_id: UUID
    text: str


class NegotiationEnded(
    msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="negotiation.ended"
):
    """Terminal: the outcome, and whether the run completed or was aborted."""

    status: Status
    outcome: Outcome
    reason: str = ""


class GuardrailTripped(
    msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="guardrail.tripped"
):
    """A brain proposed an action that breaks a constraint; what happened instead.

    `resolution`: "repaired" (the brain fixed it when asked once), "fallback" (a safe
    action replaced it) or "overridden" (the broker, the last line of defence, replaced it).
    """

    agent: str
    round: int
    rule: str
    detail: str
    attempted: str
    resolution: Literal["repaired", "fallback", "overridden"]
    brain: str = ""


class ReasoningRecorded(
    msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="reasoning.recorded"
):
    """An agent's private reasoning for its action; never shown to the other side."""

    agent: str
    round: int
    text: str


class LLMCall(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """One call an agent's brain made to a language model, as the log keeps it.

    `request` and `response` are the exact HTTP bodies; `tool_input`/`text` what the
    brain parsed from them (so a rerun can play the response back); `prompt_digest`
    fingerprints the provider-neutral prompt, so a rerun can tell whether the same
    prompt was built. Cost is an estimate.
    """

    provider: str
    model: str
    purpose: str
    prompt_digest: str
    request: str
    response: str = ""
    tool_input: str = ""
    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    latency_ms: float = 0.0
    retries: int = 0
    cost_usd: float | None = None
    error: str = ""


class LLMCalled(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="llm.called"):
    """An agent's brain called a model for its turn in `round` (private to the log)."""

    agent: str
    round: int
    call: LLMCall


Event = (
    NegotiationStarted
    | RoundOpened
    | BuyerSaid
    | SellerReplied
    | RoundClosed
    | DealClosed
    | BuyerWalkedAway
    | NegotiationEnded
    | GuardrailTripped
    | ReasoningRecorded
    | LLMCalled
)

EVENT_TYPES: tuple[type[Event], ...] = (
    NegotiationStarted,
    RoundOpened,
    BuyerSaid,
    SellerReplied,
    RoundClosed,
    DealClosed,
    BuyerWalkedAway,
    NegotiationEnded,
    GuardrailTripped,
    ReasoningRecorded,
    LLMCalled,
)

# -- observations: what observers concluded about a negotiation ------------------------------
# They live in a companion stream per negotiation (`observation_stream_id`), never in the
# negotiation's own stream, so replaying a negotiation is untouched by later analysis.
FlagKind = Literal["price_hallucination", "leakage", "constraint", "coherence"]
Severity = Literal["low", "medium", "high"]


class QualityFlagged(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="quality.flagged"):
    """A grounded quality check fired on a negotiation's log.

    `rule` is the stable name of the check (e.g. `"hallucination.misattributed_offer"`),
    `agent` the agent id the finding is about (with its `brain` label and, for a seller,
    its `style`, so findings aggregate per model and style), `evidence` the message ids
    (or `"seq:N"` for events without one) the finding rests on, and `detail` a sentence
    quoting the evidence.
    """

    negotiation_id: UUID
    kind: FlagKind
    rule: str
    severity: Severity
    agent: str
    round: int
    evidence: tuple[str, ...]
    detail: str
    brain: str = ""
    style: str = ""


class AnalystReviewed(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="analysis.reviewed"):
    """An LLM analyst's short qualitative review of a whole negotiation."""

    negotiation_id: UUID
    model: str
    text: str
    call: LLMCall | None = None


class VoiceSynthesized(
    msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="voice.synthesized"
):
    """A line of a negotiation read aloud (`actors/voice.py`), or the attempt that failed.

    `message_id` is the message's (a seller's reply), `agent` who wrote it, `voice` its
    name in `domain.voices.VOICES`, `engine` and `model` what rendered it (`"espeak-ng"`
    is the local engine, no network). `audio` is the content hash the audio is stored
    under (voice, model and text hashed; `storage/audio.py`) and `seconds` its length;
    with `status` "failed", `audio` is empty and `error` says why.
    """

    negotiation_id: UUID
    message_id: UUID
    agent: str
    voice: str
    engine: str
    model: str
    audio: str = ""
    seconds: float = 0.0
    status: Literal["ok", "failed"] = "ok"
    error: str = ""


Observation = QualityFlagged | AnalystReviewed | VoiceSynthesized
OBSERVATION_TYPES: tuple[type[Observation], ...] = (
    QualityFlagged,
    AnalystReviewed,
    VoiceSynthesized,
)
OBSERVATION_TAGS = frozenset(str(t.__struct_config__.tag) for t in OBSERVATION_TYPES)

_OBSERVATION_NS = UUID("6d616d73-6f62-7365-7276-6174696f6e73")


def observation_stream_id(negotiation_id: UUID) -> UUID:
    """The companion stream holding observations of `negotiation_id` (deterministic)."""
    return uuid5(_OBSERVATION_NS, f"observations:{negotiation_id}")


_obs_decoder = msgspec.json.Decoder(Observation)


def decode_observation(data: bytes | str) -> Observation:
    """Decode a stored observation; raises msgspec.ValidationError if malformed."""
    obs: Observation = _obs_decoder.decode(data)
    return obs


_encoder = msgspec.json.Encoder(decimal_format="string")
_decoder = msgspec.json.Decoder(Event)


def encode_event(event: Event | Observation) -> bytes:
    """The event as JSON bytes, its tag in field `type`; what the log stores."""
    return _encoder.encode(event)


def decode_event(data: bytes | str) -> Event:
    """Decode stored JSON back into its event; raises msgspec.ValidationError if malformed."""
    event: Event = _decoder.decode(data)
    return event


def event_type(event: Event | Observation) -> str:
    """The stable tag of an event, e.g. `"buyer.said"`."""
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    return tag
