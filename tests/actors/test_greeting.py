"""What the broker sends an agent who says hello (actors.greeting), pure: the welcome
names the agent's open rooms; a first hello or a catch-up gets each room whole; a
keepalive only the turns owed for a while; a recap waits for the log and falls back to
the catch-up without it; a redelivery reaches every agent of every open room."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import msgspec

from mams.actors.greeting import RESEND_AFTER, greet, recalled, redelivery
from mams.domain.events import BuyerSaid, SellerReplied
from mams.domain.messages import Hello, Recap, Say, TurnStarted, WalkAway, Welcome
from mams.domain.negotiation import NegotiationState
from mams.domain.visibility import catch_up
from tests.domain.helpers import BUYER, NID, Room, buyer_turn, seller_turn, started

OTHER = uuid.UUID("00000000-0000-4000-8000-000000000003")
FULL = Hello(role="buyer", recap=False)  # a catch-up hello that needs no log
KEEPALIVE = Hello(role="buyer", catch_up=False, recap=False)


@dataclass
class _At:
    """A broker room as a greeting reads it."""

    state: NegotiationState
    since: float = 0.0


def _talked() -> Room:
    """A room in round 2's buyer turn, with lines said in round 1."""
    room = Room()
    room.send(buyer_turn(1, Say(text="best price?")))
    for seller in ("alpha", "beta", "gamma"):
        room.send(seller_turn(seller, 1, f"{seller} offers", "12.00"))
    assert room.state.phase == "buyer_turn"
    assert room.state.round == 2
    return room


def test_a_first_hello_is_welcomed_with_its_open_rooms_each_caught_up_whole() -> None:
    room = _talked()
    greeting = greet(BUYER, FULL, {NID: _At(room.state)}, known=False, now=0.0)
    assert greeting.rooms == (NID,)
    assert greeting.recap is None
    assert greeting.messages == [
        (BUYER, Welcome(agent_id=BUYER, rooms=(NID,))),
        *catch_up(room.state, BUYER, rejoin=True),
    ]
    # An agent the broker does not know is caught up whole whatever its hello says.
    assert greet(BUYER, KEEPALIVE, {NID: _At(room.state)}, known=False, now=0.0) == greeting


def test_a_keepalive_re_sends_only_turns_owed_for_at_least_resend_after() -> None:
    room = _talked()
    rooms = {NID: _At(room.state, since=100.0)}
    welcome = (BUYER, Welcome(agent_id=BUYER, rooms=(NID,)))
    fresh = greet(BUYER, KEEPALIVE, rooms, known=True, now=100.0 + RESEND_AFTER / 2)
    assert fresh.messages == [welcome]  # the agent may still be at that turn
    owed = greet(BUYER, KEEPALIVE, rooms, known=True, now=100.0 + RESEND_AFTER)
    assert owed.messages == [welcome, *catch_up(room.state, BUYER, rejoin=False)]
    assert isinstance(owed.messages[-1][1], TurnStarted)
    sooner = greet(BUYER, KEEPALIVE, rooms, known=True, now=101.0, resend_after=1.0)
    assert sooner.messages == owed.messages
    # A catch-up hello from a known agent gets the room whole, however recent its turn.
    assert greet(BUYER, FULL, rooms, known=True, now=100.0).messages == [
        welcome,
        *catch_up(room.state, BUYER, rejoin=True),
    ]


def test_ended_rooms_and_rooms_of_others_are_not_named() -> None:
    ended = Room()
    ended.send(buyer_turn(1, WalkAway()))
    assert ended.state.phase == "ended"
    other = Room(msgspec.structs.replace(started(), negotiation_id=OTHER))
    rooms = {NID: _At(ended.state), OTHER: _At(other.state)}
    stranger = greet("stranger", Hello(role="seller"), rooms, known=False, now=0.0)
    assert stranger.rooms == ()
    assert stranger.recap is None  # nothing to recall: answered now
    assert stranger.messages == [("stranger", Welcome(agent_id="stranger", rooms=()))]
    assert greet(BUYER, FULL, rooms, known=False, now=0.0).rooms == (OTHER,)


def test_a_recap_greeting_is_the_welcome_then_each_room_with_its_logged_lines() -> None:
    room = _talked()
    greeting = greet(BUYER, Hello(role="buyer"), {NID: _At(room.state)}, known=True, now=0.0)
    welcome = (BUYER, Welcome(agent_id=BUYER, rooms=(NID,)))
    assert greeting.recap == {NID: room.state}
    assert greeting.messages == [welcome]  # the rest waits for the log
    lines = [e for e in room.events if isinstance(e, BuyerSaid | SellerReplied)]
    whole = recalled(greeting, {NID: lines})
    assert whole == [welcome, *catch_up(room.state, BUYER, rejoin=True, log=lines)]
    assert any(isinstance(m, Recap) for _, m in whole)
    # The log could not be read: the catch-up still goes out, without recaps.
    assert recalled(greeting, None) == [welcome, *catch_up(room.state, BUYER, rejoin=True)]


def test_a_redelivery_reaches_every_agent_of_every_open_room() -> None:
    room, other = _talked(), Room(msgspec.structs.replace(started(), negotiation_id=OTHER))
    messages = redelivery([room.state, other.state])
    assert messages == [
        m
        for state in (room.state, other.state)
        for agent in state.agents
        for m in catch_up(state, agent, rejoin=True)
    ]
    assert {a for a, _ in messages} == {BUYER, "alpha", "beta", "gamma"}
    assert redelivery([]) == []
