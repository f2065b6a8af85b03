"""Wire messages between the broker and agents.

Inbox messages (broker -> one agent) are that agent's *view*: built by the visibility
policy from events, they carry only what the agent may know. Outbox messages (agent ->
broker) carry an agent's turn; they have no sender field, because the broker takes the
sender from the subject the message arrived on.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

import msgspec

# MAX_TEXT and MAX_PAYLOAD are stated in domain.bounds with every other limit, and named
# here too, where they were first defined (and are imported from).
from mams.domain.bounds import MAX_PAYLOAD as MAX_PAYLOAD
from mams.domain.bounds import MAX_TEXT as MAX_TEXT
from mams.domain.bounds import BoundsError, check_committed, check_outbox
from mams.domain.events import Event, LLMCall, Offer, Outcome, Status
from mams.domain.plan import DEFAULT_MAX_ROUNDS, DEFAULT_ROUND_TIMEOUT, DEFAULT_RUNS, PlanOptions


class Peer(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """Another participant as the agent may know it: its handle and bus identity."""

    agent_id: str
    handle: str


class OwnSellerTerms(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A seller's own private facts, delivered to that seller only."""

    style: str
    customer_retention_weight: Decimal
    profit_maximization_weight: Decimal
    cost_price: Decimal
    selling_price: Decimal
    least_price: Decimal
    # The strategy it plays: its label, and a scenario-defined one's prompt and base
    # (`domain.strategies.resolve`).
    strategy: str = "default"
    strategy_prompt: str = ""
    strategy_base: str = ""


# -- broker -> agent -----------------------------------------------------------------------
class BuyerRoomOpened(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="room.opened.buyer"):
    """To the buyer: a room for one item, its own price range, the sellers' handles."""

    negotiation_id: UUID
    item_name: str
    quantity: int
    min_price: Decimal
    max_price: Decimal
    sellers: tuple[Peer, ...]
    max_rounds: int
    round_timeout: float
    seed: int | None = None
    strategy: str = "default"  # the strategy the buyer plays, as OwnSellerTerms'
    strategy_prompt: str = ""
    strategy_base: str = ""


class SellerRoomOpened(
    msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="room.opened.seller"
):
    """To one seller: the buyer wants an item; the seller's own terms for it."""

    negotiation_id: UUID
    item_name: str
    quantity: int
    buyer: Peer
    terms: OwnSellerTerms
    max_rounds: int
    round_timeout: float
    seed: int | None = None
    handle: str = ""


class TurnStarted(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="turn.started"):
    """To the buyer: its turn in `round`. On the final turn only accept or walk away."""

    negotiation_id: UUID
    round: int
    final: bool = False
    unanswered: tuple[str, ...] = ()


class BuyerMessage(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="buyer.message"):
    """To one addressed seller: what the buyer wrote, and a counter price if any."""

    negotiation_id: UUID
    round: int
    message_id: UUID
    text: str
    counter_price: Decimal | None = None


class SellerMessage(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="seller.message"):
    """To the buyer: one seller's reply and offer."""

    negotiation_id: UUID
    round: int
    message_id: UUID
    seller: Peer
    text: str
    offer: Offer | None = None


class RoomClosed(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="room.closed"):
    """To each participant: the room ended. A seller learns only whether it got the deal."""

    negotiation_id: UUID
    status: Status
    deal: bool
    text: str = ""
    outcome: Outcome | None = None


class Recap(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="recap"):
    """To an agent that (re)joins an open room: one line of that room it said or was told
    before, as committed, oldest first, ahead of the room's catch-up (a process that
    restarted has lost its conversation). Fold it into the view; it calls for no turn.

    `message` is the line as it was delivered, or would have been (a seller's reply is a
    SellerMessage under its handle; a buyer's words, a BuyerMessage). `mine` marks the
    agent's own lines: for the buyer, `to` is whom it wrote to (agent ids); for a seller,
    `replying_to` is the buyer message it answered.
    """

    negotiation_id: UUID
    message: BuyerMessage | SellerMessage
    mine: bool
    to: tuple[str, ...] = ()
    replying_to: UUID | None = None


class Welcome(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="welcome"):
    """To an agent that said hello: who the broker takes it to be, and the open rooms it is
    in (their views follow, so an agent that (re)joins late can catch up)."""

    agent_id: str
    protocol: int = 1
    rooms: tuple[UUID, ...] = ()


class RoomsOpened(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="rooms.opened"):
    """To the buyer: the rooms its `open_rooms` request opened, one per item and run;
    `items[i]` is the item of `negotiation_ids[i]`."""

    request_id: UUID
    session_id: UUID
    negotiation_ids: tuple[UUID, ...]
    items: tuple[str, ...]


class Rejected(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="rejected"):
    """To an agent: a control request of its was refused, and why (what to fix)."""

    request_id: UUID
    reason: str


# The messages about one room (they carry its negotiation_id); the others are control.
RoomMessage = (
    BuyerRoomOpened
    | SellerRoomOpened
    | TurnStarted
    | BuyerMessage
    | SellerMessage
    | RoomClosed
    | Recap
)
InboxMessage = RoomMessage | Welcome | RoomsOpened | Rejected
ROOM_MESSAGES = (  # for isinstance (spelled out: mypy narrows on it)
    BuyerRoomOpened,
    SellerRoomOpened,
    TurnStarted,
    BuyerMessage,
    SellerMessage,
    RoomClosed,
    Recap,
)


# -- agent -> broker -----------------------------------------------------------------------
class Say(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="say"):
    """Buyer writes to sellers (`to` empty means all), optionally countering a price."""

    text: str
    to: tuple[str, ...] = ()
    counter_price: Decimal | None = None


class Accept(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="accept"):
    """Buyer accepts one seller's standing offer, at its unit price and quantity."""

    seller: str
    unit_price: Decimal
    quantity: int
    text: str = ""


class WalkAway(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="walk_away"):
    """Buyer leaves without a deal."""

    text: str = ""


BuyerAction = Say | Accept | WalkAway


class GuardrailNote(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """What an agent's own guardrail caught before sending (logged by the broker)."""

    rule: str
    detail: str
    attempted: str
    resolution: str


class BuyerTurn(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="buyer.turn"):
    """The buyer's action for a round, with its private reasoning."""

    negotiation_id: UUID
    round: int
    message_id: UUID
    action: BuyerAction
    reasoning: str = ""
    guardrails: tuple[GuardrailNote, ...] = ()
    llm_calls: tuple[LLMCall, ...] = ()


class SellerTurn(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="seller.turn"):
    """A seller's reply for a round: text, optional offer, private reasoning."""

    negotiation_id: UUID
    round: int
    message_id: UUID
    text: str
    offer: Offer | None = None
    reasoning: str = ""
    guardrails: tuple[GuardrailNote, ...] = ()
    llm_calls: tuple[LLMCall, ...] = ()


class Hello(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="hello"):
    """An agent joins (or rejoins) the market: its role and the brain it runs, as a label
    for the log. The broker answers with `Welcome` and re-sends the agent's open rooms.

    `catch_up=False` marks a keepalive from an agent that has kept its state: a broker
    that already knows the agent then re-sends only the turns it owes, not whole rooms.
    `recap=False` (with `catch_up`) asks for whole rooms without their recaps: the agent
    kept its conversation (its connection came back after an outage).
    """

    role: Literal["buyer", "seller"]
    brain: str = ""
    protocol: int = 1
    catch_up: bool = True
    recap: bool = True


class OpenRooms(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag="open_rooms"):
    """The buyer asks the broker to open one room per item of a session.

    Either `session_id` names a stored session, or `scenario` carries the whole scenario
    (as its TOML/JSON mapping) to be stored as a new session. `items` empty means all.
    With `runs` > 1, every item gets that many rooms, run r (from 0) seeded `seed` + r
    (0 + r without a seed), as `mams run --runs` does. Rooms whose (item name, seed) pair
    is in `skip` are left out: those a study already has (`mams run --resume`).
    """

    request_id: UUID
    session_id: UUID | None = None
    scenario: dict[str, Any] | None = None
    items: tuple[str, ...] = ()
    max_rounds: int = DEFAULT_MAX_ROUNDS
    round_timeout: float = DEFAULT_ROUND_TIMEOUT
    seed: int | None = None
    runs: int = DEFAULT_RUNS
    skip: tuple[tuple[str, int | None], ...] = ()

    def options(self) -> PlanOptions:
        """The plan options it asks for (checked by `PlanOptions.problems`)."""
        return PlanOptions(
            max_rounds=self.max_rounds,
            round_timeout=self.round_timeout,
            seed=self.seed,
            runs=self.runs,
        )


OutboxMessage = BuyerTurn | SellerTurn | Hello | OpenRooms

_encoder = msgspec.json.Encoder(decimal_format="string")
_inbox_decoder = msgspec.json.Decoder(InboxMessage)
_outbox_decoder = msgspec.json.Decoder(OutboxMessage)


def encode(message: InboxMessage | OutboxMessage) -> bytes:
    """A wire message as JSON bytes (tag in field `type`, decimals as strings)."""
    return _encoder.encode(message)


def decode_inbox(data: bytes) -> InboxMessage:
    """Decode a message an agent received; raises msgspec.DecodeError or ValidationError
    if malformed (nesting too deep to decode included)."""
    try:
        message: InboxMessage = _inbox_decoder.decode(data)
    except RecursionError:
        raise msgspec.DecodeError(_TOO_DEEP) from None
    return message


def decode_outbox(data: bytes) -> OutboxMessage:
    """Decode a message the broker received and check it against the market's bounds
    (`domain.bounds.check_outbox`); raises msgspec.DecodeError or ValidationError if
    malformed, nested too deep to decode, or outside a bound (naming the field and limit).
    """
    try:
        message: OutboxMessage = _outbox_decoder.decode(data)
        check_outbox(message)
    except RecursionError:
        raise msgspec.DecodeError(_TOO_DEEP) from None
    except BoundsError as exc:
        raise msgspec.ValidationError(f"out of bounds: {exc}") from None
    return message


# msgspec decodes nested values with the interpreter's recursion limit; a message nested
# deeper than that raises RecursionError, which callers must not have to know about.
_TOO_DEEP = "nested too deeply to decode"


# -- broker -> observers -------------------------------------------------------------------
class CommittedEvent(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """An event the log has committed, as published to observers on the events subject."""

    negotiation_id: UUID
    seq: int
    event: Event


_committed_decoder = msgspec.json.Decoder(CommittedEvent)


def encode_committed(message: CommittedEvent) -> bytes:
    """A committed event as JSON bytes for observers."""
    return _encoder.encode(message)


def committed_prefix(negotiation_id: UUID) -> bytes:
    """The bytes every committed event of one negotiation starts with, for
    `encode_committed_json` (computed once per room, not per event)."""
    return b'{"negotiation_id":"%s","seq":' % str(negotiation_id).encode()


def encode_committed_json(prefix: bytes, seq: int, event_json: bytes) -> bytes:
    """`encode_committed` for an event already encoded by `encode_event` (as the log
    stores it), given its room's `committed_prefix`: the same bytes, without encoding the
    event a second time."""
    return b'%s%d,"event":%s}' % (prefix, seq, event_json)


def decode_committed(data: bytes) -> CommittedEvent:
    """Decode a committed event an observer received; raises msgspec.DecodeError or
    ValidationError if malformed, nested too deep to decode or its seq is out of range."""
    try:
        message: CommittedEvent = _committed_decoder.decode(data)
        check_committed(message)
    except RecursionError:
        raise msgspec.DecodeError(_TOO_DEEP) from None
    except BoundsError as exc:
        raise msgspec.ValidationError(f"out of bounds: {exc}") from None
    return message
