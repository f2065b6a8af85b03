"""Properties of the pure core under random brains: opacity, replay, constraints, termination.

A random "brain" drives a room through decide/evolve/route with any action it likes:
valid and invalid buyer moves, seller replies below the floor or for the wrong quantity,
duplicates, late and stale deadlines. Prices are chosen so every party's numbers are
recognisable in encoded bytes: seller i's prices all end in cents `i7` (3.07, 9.17, ...),
buyer counters end in .50 and the buyer's private range is 8.93..14.99. So a leak of one
party's number into another's delivery is visible as a substring, not only as a field.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mams.domain.events import (
    BuyerSaid,
    DealClosed,
    Event,
    GuardrailTripped,
    NegotiationEnded,
    NegotiationStarted,
    ReasoningRecorded,
    SellerReplied,
    SellerTerms,
    decode_event,
    encode_event,
)
from mams.domain.messages import (
    Accept,
    BuyerAction,
    BuyerMessage,
    BuyerRoomOpened,
    CommittedEvent,
    GuardrailNote,
    Recap,
    RoomClosed,
    RoomMessage,
    Say,
    SellerMessage,
    SellerRoomOpened,
    TurnStarted,
    WalkAway,
    committed_prefix,
    decode_committed,
    encode,
    encode_committed,
    encode_committed_json,
)
from mams.domain.negotiation import (
    INITIAL,
    Abort,
    Command,
    Deadline,
    Drop,
    FromAgent,
    NegotiationState,
    Open,
    decide,
    evolve,
    replay,
)
from mams.domain.transcript import Renderer, render
from mams.domain.visibility import catch_up, route

from .helpers import BUYER, NID, buyer_turn, seller_turn, started

D = Decimal
SELLER_IDS = ("alpha", "beta", "gamma", "delta")
BUYER_MIN, BUYER_MAX, QTY = "8.93", "14.99", 3
STYLES = ("rude", "neutral", "sweet", "rude")
RETENTION = ("0.123", "0.456", "0.789", "0.321")
PRIVATE_SELLER_KEYS = (
    b'"cost_price"',
    b'"least_price"',
    b'"selling_price"',
    b'"style"',
    b'"customer_retention_weight"',
    b'"profit_maximization_weight"',
)
BUYER_KEYS = (b'"min_price"', b'"max_price"')


def seller_price(i: int, whole: int) -> Decimal:
    """Seller i's price family: cents end in `i7`, so no other party shares a value."""
    return D(f"{whole}.{i}7")


def seller_of(i: int) -> SellerTerms:
    return SellerTerms(
        agent_id=SELLER_IDS[i],
        handle="@" + SELLER_IDS[i].capitalize(),
        style=STYLES[i],
        customer_retention_weight=D(RETENTION[i]),
        profit_maximization_weight=1 - D(RETENTION[i]),
        cost_price=seller_price(i, 3),
        least_price=seller_price(i, 9),
        selling_price=seller_price(i, 16),
        brain="baseline",
    )


@dataclass
class Run:
    """One random run: the committed events, deliveries, and what each party wrote."""

    opening: NegotiationStarted
    state: NegotiationState = INITIAL
    events: list[Event] = field(default_factory=list)
    states_before: list[NegotiationState] = field(default_factory=list)
    deliveries: list[tuple[Event, str, RoomMessage]] = field(default_factory=list)
    renderer: Renderer = field(default_factory=Renderer)
    live_transcript: list[str] = field(default_factory=list)
    # seller id -> every price string it ever put forward or holds privately
    seller_numbers: dict[str, set[str]] = field(default_factory=dict)
    # buyer text marker -> the seller ids it was addressed to (None: everyone)
    buyer_markers: dict[str, frozenset[str] | None] = field(default_factory=dict)
    private_markers: set[str] = field(default_factory=set)
    drops: list[str] = field(default_factory=list)
    used_ids: list[uuid.UUID] = field(default_factory=list)
    # after each decision, how many events were committed: a decision's events commit
    # together, so a crash falls between decisions, never inside one
    decided: list[int] = field(default_factory=list)
    counter: int = 0

    @property
    def seller_ids(self) -> tuple[str, ...]:
        return tuple(s.agent_id for s in self.opening.sellers)

    def next(self) -> int:
        self.counter += 1
        return self.counter

    def send(self, command: Command) -> None:
        """What the broker does: decide, then per event evolve, append, route."""
        result = decide(self.state, command)
        if isinstance(result, Drop):
            self.drops.append(result.reason)
            return
        for event in result:
            self.states_before.append(self.state)
            self.state = evolve(self.state, event)
            self.events.append(event)
            self.live_transcript += [e.plain() for e in self.renderer.entries(event)]
            for recipient, message in route(self.state, event):
                self.deliveries.append((event, recipient, message))
        self.decided.append(len(self.events))


def maybe_private(
    data: st.DataObject, run: Run, agent: str
) -> tuple[str, tuple[GuardrailNote, ...]]:
    """Reasoning and agent-side guardrail notes carrying unique markers, or nothing."""
    reasoning = ""
    notes: tuple[GuardrailNote, ...] = ()
    if data.draw(st.booleans()):
        reasoning = f"REASON{run.next()}x{agent}"
        run.private_markers.add(reasoning)
    if data.draw(st.booleans()):
        marker = f"NOTE{run.next()}x{agent}"
        run.private_markers.add(marker)
        notes = (
            GuardrailNote(
                rule="accept_above_max",
                detail=marker,
                attempted=marker,
                resolution=data.draw(st.sampled_from(["repaired", "fallback", "bogus"])),
            ),
        )
    return reasoning, notes


def buyer_action(data: st.DataObject, run: Run) -> BuyerAction:
    kind = data.draw(st.sampled_from(["say", "say", "say", "accept", "accept", "accept", "walk"]))
    marker = f"<BMSG{run.next()}>"
    if kind == "walk":
        return WalkAway(text=marker)
    if kind == "accept":
        offers = run.state.offers
        how = data.draw(st.sampled_from(["best", "best", "any", "random"]))
        if offers and how == "best":  # what a sensible buyer does
            seller = min(offers, key=lambda s: offers[s].unit_price)
            price = offers[seller].unit_price
        elif offers and how == "any":
            seller = data.draw(st.sampled_from(sorted(offers)))
            price = offers[seller].unit_price
        else:
            seller = data.draw(st.sampled_from([*run.seller_ids, "mallory"]))
            price = D(f"{data.draw(st.integers(5, 17))}.50")
        qty = data.draw(st.sampled_from([QTY, QTY, QTY, QTY + 1]))
        run.buyer_markers[marker] = frozenset({seller})  # meant for the winner only
        return Accept(seller=seller, unit_price=price, quantity=qty, text=marker)
    to = tuple(
        data.draw(st.lists(st.sampled_from([*run.seller_ids, "mallory"]), max_size=3, unique=True))
    )
    counter = data.draw(st.one_of(st.none(), st.integers(0, 17).map(lambda w: D(f"{w}.50"))))
    run.buyer_markers[marker] = frozenset(to) if to else None
    return Say(text=marker, to=to, counter_price=counter)


def seller_action(data: st.DataObject, run: Run) -> FromAgent:
    agents = sorted(run.state.awaiting) or list(run.seller_ids)
    agent = data.draw(st.sampled_from([*agents, *run.seller_ids, "mallory"]))
    i = SELLER_IDS.index(agent) if agent in SELLER_IDS else 0
    # Never exactly the floor (9.i7), so the buyer seeing the floor value would be a leak.
    whole = data.draw(st.sampled_from([None, 2, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18]))
    price = None if whole is None else seller_price(i, whole)
    if price is not None and agent in SELLER_IDS:
        run.seller_numbers[agent].add(str(price))
    reasoning, notes = maybe_private(data, run, agent)
    round_ = data.draw(st.sampled_from([run.state.round, run.state.round, run.state.round + 1]))
    return seller_turn(
        agent,
        round_,
        f"SMSG{run.next()}x{agent}",
        price,
        quantity=data.draw(st.sampled_from([QTY, QTY, QTY, 1])),
        reasoning=reasoning,
        notes=notes,
    )


def step(data: st.DataObject, run: Run) -> None:
    """One random thing the outside world does to the room."""
    state = run.state
    roll = data.draw(st.integers(0, 19))
    if roll == 0 and run.used_ids:  # replay an old message id
        mid = data.draw(st.sampled_from(run.used_ids))
        run.send(
            seller_turn(data.draw(st.sampled_from(run.seller_ids)), state.round, message_id=mid)
        )
        return
    if roll == 1:  # a deadline, possibly stale
        run.send(
            Deadline(
                round=data.draw(st.sampled_from([state.round, state.round - 1, state.round + 1])),
                phase=data.draw(st.sampled_from(["buyer_turn", "sellers_turn", "idle"])),
            )
        )
        return
    if roll in (2, 3):  # the timer for the current phase
        run.send(Deadline(round=state.round, phase=state.phase))
        return
    command: FromAgent
    if state.phase == "buyer_turn" and roll < 17:
        action = buyer_action(data, run)
        reasoning, notes = maybe_private(data, run, BUYER)
        command = buyer_turn(state.round, action, reasoning=reasoning, notes=notes)
    else:
        command = seller_action(data, run)
    run.used_ids.append(command.turn.message_id)
    run.send(command)


def drive(data: st.DataObject, *, max_steps: int = 40) -> Run:
    n = data.draw(st.integers(1, 4), label="sellers")
    max_rounds = data.draw(st.integers(2, 5), label="max_rounds")
    opening = started(
        tuple(seller_of(i) for i in range(n)),
        quantity=QTY,
        min_price=BUYER_MIN,
        max_price=BUYER_MAX,
        max_rounds=max_rounds,
    )
    run = Run(opening=opening)
    for s in opening.sellers:
        run.seller_numbers[s.agent_id] = {
            str(s.cost_price),
            str(s.least_price),
            str(s.selling_price),
        }
    run.send(Open(started=opening))
    for _ in range(data.draw(st.integers(0, max_steps), label="steps")):
        if run.state.phase == "ended":
            break
        step(data, run)
    if run.state.phase != "ended" and data.draw(st.booleans(), label="abort"):
        run.send(Abort(reason="shutdown"))
    return run


def numbers_in(data: bytes, numbers: set[str]) -> set[str]:
    """Which of these prices appear in bytes, as a JSON decimal string or as `$x`."""
    found = set()
    for n in numbers:
        if f'"{n}"'.encode() in data or f"${n}".encode() in data:
            found.add(n)
    return found


def texts_of(message: RoomMessage) -> Iterator[str]:
    match message:
        case BuyerMessage(text=t) | SellerMessage(text=t) | RoomClosed(text=t):
            yield t
        case _:
            pass


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- (a) opacity ------------------------------------------------------------------------------
def check_delivery(run: Run, recipient: str, message: RoomMessage) -> None:
    """What one delivery may carry to its recipient (docs/DESIGN.md invariant 1)."""
    buyer_private_numbers = {BUYER_MIN, BUYER_MAX}
    assert recipient in {BUYER, *run.seller_ids}  # nothing leaves the room
    assert message.negotiation_id == NID
    raw = encode(message)
    for marker in run.private_markers:
        assert marker.encode() not in raw, (marker, recipient)
    if isinstance(message, Recap):
        check_recap(run, recipient, message)
        return
    if recipient == BUYER:
        assert isinstance(message, BuyerRoomOpened | TurnStarted | SellerMessage | RoomClosed)
        for key in PRIVATE_SELLER_KEYS:
            assert key not in raw, (key, message)
        for sid in run.seller_ids:
            terms = run.state.seller(sid)
            assert terms is not None
            hidden = {str(terms.cost_price), str(terms.least_price)}
            assert not numbers_in(raw, hidden), (sid, message)
            assert f'"{terms.customer_retention_weight}"'.encode() not in raw
            assert f'"{terms.style}"'.encode() not in raw
        return
    # A seller.
    assert recipient in run.seller_ids
    assert isinstance(message, SellerRoomOpened | BuyerMessage | RoomClosed), message
    for key in BUYER_KEYS:
        assert key not in raw, (key, message)
    assert not numbers_in(raw, buyer_private_numbers), message
    if isinstance(message, SellerRoomOpened):
        own = run.state.seller(recipient)
        assert own is not None
        assert message.terms.least_price == own.least_price
        assert message.terms.cost_price == own.cost_price
    else:
        for key in PRIVATE_SELLER_KEYS:
            assert key not in raw, (key, message)
    for other in run.seller_ids:
        if other == recipient:
            return
        assert f"x{other}".encode() not in raw, (other, message)  # its texts, reasoning
        assert not numbers_in(raw, run.seller_numbers[other]), (other, message)
        assert f'"{other}"'.encode() not in raw, (other, message)  # not even its id
    for text in texts_of(message):
        for marker, to in run.buyer_markers.items():
            if marker in text and to is not None:
                assert recipient in to, (marker, recipient, to)
    if isinstance(message, RoomClosed) and message.outcome is not None:
        assert message.outcome.seller == recipient


def check_recap(run: Run, recipient: str, recap: Recap) -> None:
    """A recalled line: one the recipient was told (checked as that delivery), or its own."""
    line = recap.message
    if not recap.mine:
        check_delivery(run, recipient, line)
        return
    raw = encode(recap)
    if recipient == BUYER:
        assert isinstance(line, BuyerMessage)
        assert set(recap.to) <= set(run.seller_ids)
        for key in PRIVATE_SELLER_KEYS:
            assert key not in raw, (key, recap)
        return
    assert isinstance(line, SellerMessage)
    assert line.seller.agent_id == recipient  # its own words, under its own handle
    assert not numbers_in(raw, {BUYER_MIN, BUYER_MAX}), recap
    for other in run.seller_ids:
        if other != recipient:
            assert f'"{other}"'.encode() not in raw, (other, recap)
            assert not numbers_in(raw, run.seller_numbers[other]), (other, recap)


@SETTINGS
@given(st.data())
def test_opacity_no_party_receives_what_it_may_not_see(data: st.DataObject) -> None:
    run = drive(data)
    participants = {BUYER, *run.seller_ids}
    for _event, recipient, message in run.deliveries:
        check_delivery(run, recipient, message)
    # What a rejoin or a keepalive re-sends (catch_up) crosses the same boundary, at any
    # point of the run.
    # With the log, a rejoin also recalls the room's lines (recap).
    for k, state in enumerate([*run.states_before[1:], run.state]):
        for agent in participants:
            for rejoin in (True, False):
                for recipient, message in catch_up(
                    state, agent, rejoin=rejoin, log=run.events[: k + 1]
                ):
                    assert recipient == agent
                    check_delivery(run, recipient, message)
    # Private events produce no deliveries at all.
    for event in run.events:
        if isinstance(event, GuardrailTripped | ReasoningRecorded):
            assert route(run.state, event) == []
    assert not any(
        isinstance(e, GuardrailTripped | ReasoningRecorded) for e, _, _ in run.deliveries
    )


@SETTINGS
@given(st.data())
def test_every_addressed_seller_gets_the_buyer_message_and_the_buyer_gets_every_reply(
    data: st.DataObject,
) -> None:
    """The other half of opacity: what may be seen is delivered (so the filter is not `[]`)."""
    run = drive(data)
    for event in run.events:
        got = [(r, m) for e, r, m in run.deliveries if e is event]
        if isinstance(event, BuyerSaid):
            assert sorted(r for r, _ in got) == sorted(event.to)
            assert all(isinstance(m, BuyerMessage) and m.text == event.text for _, m in got)
        elif isinstance(event, SellerReplied):
            assert [r for r, _ in got] == [BUYER]
            message = got[0][1]
            assert isinstance(message, SellerMessage)
            assert (message.seller.agent_id, message.offer) == (event.seller, event.offer)
        elif isinstance(event, NegotiationEnded):
            assert sorted(r for r, _ in got) == sorted([BUYER, *run.seller_ids])


# -- (b) replay --------------------------------------------------------------------------------
@SETTINGS
@given(st.data())
def test_replay_from_the_stored_bytes_gives_the_live_state_and_transcript(
    data: st.DataObject,
) -> None:
    run = drive(data)
    stored = [encode_event(e) for e in run.events]
    decoded = [decode_event(b) for b in stored]
    assert decoded == run.events
    assert [encode_event(e) for e in decoded] == stored  # byte for byte
    assert replay(decoded) == run.state
    assert [e.plain() for e in render(decoded)] == run.live_transcript
    # Replaying any prefix gives the state the live run had at that point.
    for i, before in enumerate(run.states_before):
        assert replay(decoded[:i]) == before


@SETTINGS
@given(st.data())
def test_what_observers_receive_is_the_event_as_the_log_stores_it(data: st.DataObject) -> None:
    # The broker wraps the stored bytes for observers rather than encoding twice.
    run = drive(data)
    nid = run.opening.negotiation_id
    prefix = committed_prefix(nid)
    for seq, event in enumerate(run.events, 1):
        wrapped = encode_committed_json(prefix, seq, encode_event(event))
        assert wrapped == encode_committed(CommittedEvent(negotiation_id=nid, seq=seq, event=event))
        assert decode_committed(wrapped) == CommittedEvent(negotiation_id=nid, seq=seq, event=event)


# -- (c) constraints ---------------------------------------------------------------------------
@SETTINGS
@given(st.data())
def test_constraints_hold_whatever_the_brains_say(data: st.DataObject) -> None:
    run = drive(data)
    buyer = run.opening.buyer
    for before, event in zip(run.states_before, run.events, strict=True):
        if isinstance(event, SellerReplied) and event.offer is not None:
            terms = before.seller(event.seller)
            assert terms is not None
            assert event.offer.unit_price >= terms.least_price
            assert event.offer.quantity == buyer.quantity
            assert event.seller in before.awaiting
        if isinstance(event, BuyerSaid):
            assert set(event.to) <= set(run.seller_ids)
            assert event.counter_price is None or D(0) < event.counter_price <= buyer.max_price
        if isinstance(event, DealClosed):
            standing = before.offers.get(event.seller)
            assert standing is not None
            assert event.unit_price == standing.unit_price
            assert event.unit_price <= buyer.max_price
            assert event.quantity == buyer.quantity
    outcome = run.state.outcome
    if outcome is not None and outcome.type == "deal":
        [deal] = [e for e in run.events if isinstance(e, DealClosed)]
        assert (outcome.seller, outcome.unit_price, outcome.quantity) == (
            deal.seller,
            deal.unit_price,
            deal.quantity,
        )
    ids = [e.message_id for e in run.events if hasattr(e, "message_id")]
    assert len(ids) == len(set(ids))  # a message id is committed at most once


# -- (d) termination ---------------------------------------------------------------------------
@SETTINGS
@given(st.data())
def test_with_deadlines_firing_every_room_ends_within_max_rounds(data: st.DataObject) -> None:
    run = drive(data)
    max_rounds = run.opening.max_rounds
    fired = 0
    while run.state.phase != "ended":
        # The broker's timers: each fires for the current round and phase.
        run.send(Deadline(round=run.state.round, phase=run.state.phase))
        fired += 1
        assert fired <= 2 * max_rounds
    assert run.state.outcome is not None
    assert 1 <= run.state.outcome.rounds <= max_rounds
    assert max(s.round for s in [*run.states_before, run.state]) <= max_rounds


@pytest.mark.parametrize("max_rounds", [2, 3, 10])
def test_deadlines_alone_end_a_room_after_exactly_max_rounds(max_rounds: int) -> None:
    run = Run(opening=started(max_rounds=max_rounds))
    run.send(Open(started=run.opening))
    while run.state.phase != "ended":
        run.send(Deadline(round=run.state.round, phase=run.state.phase))
    assert run.state.outcome is not None
    assert (run.state.outcome.type, run.state.outcome.rounds) == ("max_rounds", max_rounds)
    assert run.drops == []
