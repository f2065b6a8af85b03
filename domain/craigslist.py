"""Real human negotiations (CraigslistBargain) as MAMS negotiation logs: the control group.

`dialogues_to_events(lines)` turns each JSON line of the CraigslistBargain dialogues
(`examples/craigslist/dialogues-valid.jsonl`: speaker `usr` is the seller, `sys` the buyer)
into the events the broker would have logged had two humans negotiated in MAMS. The
events are produced by the negotiation state machine itself (`decide`), so a converted
log replays, ends, and passes the guardrail audit by construction; ids are uuid5 of the
dialogue's index, so the same file gives the same logs byte for byte.

The mapping (examples/craigslist/README.md has the reasons):

- one room, one unit, buyer `@HumanBuyer`, one seller `@HumanSeller`; brains and style
  are `human`; the item is the category and the line number (`bike #3`); the seller's
  asking price is the listing price.
- turns: consecutive turns of one side are merged (joined by a newline); each buyer turn
  is a `BuyerSaid` and the seller's next turn its `SellerReplied`, one round per pair.
  When the seller speaks first, round 1 opens with a buyer message of empty text.
- prices: `mams.domain.human_text` reads the amounts a person wrote (`$120`, `120
  dollars`, `1.2k`, and bare numbers that are plausible prices for the listing); amounts
  after "paid", "worth", "listed" are references, "$20 off" or "1000-1500" relative, and a
  repeat of the other side's price beside a refusal an echo. A turn's structured price (a
  buyer's `counter_price`, a seller's `offer`) is set only when the turn proposes exactly
  one distinct amount: derived from that turn's own text, or left empty.
- the end: the data set keeps no accept/reject actions, so the deal is inferred from the
  words (`closing`): one of the last six turns accepts the price the other side stated
  last. A buyer accepting is a `DealClosed` at the seller's standing offer; a seller
  accepting commits that price as its offer, and the buyer's next turn (or an empty
  text) closes the deal. Turns after the closing are small talk and are dropped.
  Without an agreement, the buyer never takes its final turn: the round limit ends the
  room (`max_rounds`), one round after the last message.
- private facts nobody recorded: the buyer's `max_price` is its target, or the highest
  price it proposed or agreed to when that is higher (a human target is a goal, not a
  limit, and the guardrail would otherwise replace a human counter above it); its
  `min_price` the lowest price it proposed (at most the target). The seller's `least_price` is the
  lowest price it offered (at most the listing price); its cost is unknown and set to
  one cent, a number no human writes, so cost and margin leakage cannot fire by
  coincidence (and cannot fire at all: humans' "I paid $80" names a cost the log lacks).

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from uuid import UUID, uuid5

import msgspec

from mams.domain.events import (
    BuyerTerms,
    Event,
    NegotiationStarted,
    Offer,
    SellerTerms,
)
from mams.domain.human_text import Turn, closing, mark_echoes, mentions, stated_price
from mams.domain.messages import Accept, BuyerTurn, Say, SellerTurn
from mams.domain.money import cents
from mams.domain.negotiation import (
    INITIAL,
    Command,
    Deadline,
    Drop,
    FromAgent,
    NegotiationState,
    Open,
    decide,
    evolve,
)

BUYER_HANDLE = "@HumanBuyer"
SELLER_HANDLE = "@HumanSeller"
BUYER = "humanbuyer"
SELLER = "humanseller"
HUMAN = "human"
UNKNOWN_COST = Decimal("0.01")
SOURCE = "craigslistbargain-valid"
_NS = UUID("63726169-6773-6c69-7374-62617267616e")  # fixed: ids must never change


class Dialogue(msgspec.Struct, frozen=True):
    """One CraigslistBargain dialogue as the data file holds it."""

    item_name: str
    buyer_price: Decimal
    seller_price: Decimal
    dialog: list[Turn]
    buyer_item_description: str = ""
    seller_item_description: str = ""


_decoder = msgspec.json.Decoder(Dialogue, float_hook=lambda f: Decimal(repr(f)))


def parse_dialogue(line: str | bytes) -> Dialogue:
    """Decode one JSON line of the dialogues file."""
    return _decoder.decode(line)


# -- conversion ----------------------------------------------------------------------------
def merge_turns(turns: Iterable[Turn]) -> list[Turn]:
    """Consecutive turns of one speaker as one turn (texts joined by a newline); turns with
    no text are left out."""
    out: list[Turn] = []
    for t in turns:
        if not t.text.strip():
            continue
        if out and out[-1].speaker == t.speaker:
            prev = out[-1]
            out[-1] = Turn(t.speaker, f"{prev.text}\n{t.text}", f"{prev.strategy}+{t.strategy}")
        else:
            out.append(t)
    return out


def _id(index: int, what: str) -> UUID:
    return uuid5(_NS, f"{SOURCE}:{index}:{what}")


SESSION_ID = uuid5(_NS, SOURCE)


def negotiation_id(index: int) -> UUID:
    """The id of the log converted from dialogue `index` (0-based line number)."""
    return _id(index, "negotiation")


def convert(index: int, dialogue: Dialogue) -> list[Event]:
    """The events of dialogue `index`, as the state machine produces them."""
    listing = cents(dialogue.seller_price)
    target = cents(dialogue.buyer_price)
    cars = dialogue.item_name == "car"
    turns = merge_turns(dialogue.dialog)
    found = mark_echoes(
        turns, [mentions(t.text, listing, years_are_common=cars) for t in turns], listing
    )
    deal = closing(turns, found)
    kept = len(turns) if deal is None else deal.index + 1
    prices: list[Decimal | None] = [stated_price(f) for f in found[:kept]]
    if deal is not None and deal.by == "seller":
        prices[deal.index] = deal.price  # agreeing commits the seller to the agreed price
    buyer_prices = [p for t, p in zip(turns, prices, strict=False) if t.speaker == "sys" and p]
    seller_prices = [p for t, p in zip(turns, prices, strict=False) if t.speaker == "usr" and p]
    max_price = max([target, *buyer_prices, *([deal.price] if deal is not None else [])])
    min_price = min([target, *buyer_prices])
    least = min([listing, *seller_prices])
    closing_text = ""
    if deal is not None and deal.by == "seller" and deal.index + 1 < len(turns):
        closing_text = turns[deal.index + 1].text  # the buyer's words after the seller's yes

    says = sum(1 for t in turns[:kept] if t.speaker == "sys") + (
        1 if turns[:kept] and turns[0].speaker == "usr" else 0
    )
    if deal is not None and deal.by == "buyer":
        says -= 1  # the buyer's accepting turn is no message of its own round
    nid = negotiation_id(index)
    started = NegotiationStarted(
        negotiation_id=nid,
        session_id=SESSION_ID,
        item_name=f"{dialogue.item_name} #{index}",
        buyer=BuyerTerms(
            agent_id=BUYER,
            handle=BUYER_HANDLE,
            quantity=1,
            min_price=min_price,
            max_price=max_price,
            brain=HUMAN,
        ),
        sellers=(
            SellerTerms(
                agent_id=SELLER,
                handle=SELLER_HANDLE,
                style=HUMAN,
                customer_retention_weight=Decimal("0.5"),
                profit_maximization_weight=Decimal("0.5"),
                cost_price=UNKNOWN_COST,
                selling_price=listing,
                least_price=least,
                brain=HUMAN,
            ),
        ),
        max_rounds=max(2, says + 1),
        round_timeout=0.0,
        seed=None,
    )
    machine = _Machine(nid)
    machine.run(Open(started=started))
    for k, turn in enumerate(turns[:kept]):
        mid = _id(index, f"turn:{k}")
        price = prices[k]
        if k == 0 and turn.speaker == "usr":
            machine.buyer(Say(text="", to=(SELLER,)), _id(index, "opening"))
        if deal is not None and k == deal.index and deal.by == "buyer":
            accept = Accept(seller=SELLER, unit_price=deal.price, quantity=1, text=turn.text)
            machine.buyer(accept, mid)
        elif turn.speaker == "sys":
            machine.buyer(Say(text=turn.text, to=(SELLER,), counter_price=price), mid)
        else:
            offer = Offer(unit_price=price, quantity=1) if price is not None else None
            machine.seller(turn.text, offer, mid)
    if deal is not None and deal.by == "seller":
        accept = Accept(seller=SELLER, unit_price=deal.price, quantity=1, text=closing_text)
        machine.buyer(accept, _id(index, "closing"))
    machine.run_out()
    return machine.events


def dialogues_to_events(lines: Iterable[str | bytes]) -> list[list[Event]]:
    """Every dialogue of a JSON Lines file (blank lines skipped) as its negotiation log."""
    out: list[list[Event]] = []
    for line in lines:
        if line.strip():
            out.append(convert(len(out), parse_dialogue(line)))
    return out


class ConversionError(ValueError):
    """The state machine refused a converted turn (a bug in the mapping, never expected)."""


class _Machine:
    """Drives `decide` and keeps the events, as the broker would."""

    def __init__(self, nid: UUID) -> None:
        self.nid = nid
        self.state: NegotiationState = INITIAL
        self.events: list[Event] = []

    def run(self, command: Command) -> None:
        result = decide(self.state, command)
        if isinstance(result, Drop):
            raise ConversionError(f"{self.nid}: {result.reason}")
        for event in result:
            self.state = evolve(self.state, event)
        self.events.extend(result)

    def _buyer_turn_now(self) -> None:
        # A seller who did not answer: its round closes at the deadline.
        if self.state.phase == "sellers_turn":
            self.run(Deadline(round=self.state.round, phase="sellers_turn"))

    def buyer(self, action: Say | Accept, mid: UUID) -> None:
        self._buyer_turn_now()
        turn = BuyerTurn(
            negotiation_id=self.nid, round=self.state.round, message_id=mid, action=action
        )
        self.run(FromAgent(agent=BUYER, turn=turn))

    def seller(self, text: str, offer: Offer | None, mid: UUID) -> None:
        turn = SellerTurn(
            negotiation_id=self.nid, round=self.state.round, message_id=mid, text=text, offer=offer
        )
        self.run(FromAgent(agent=SELLER, turn=turn))

    def run_out(self) -> None:
        """No more turns: deadlines pass until the round limit ends the room."""
        while self.state.phase != "ended":
            self.run(Deadline(round=self.state.round, phase=self.state.phase))
