"""Catch-up makes an agent whole after lost deliveries, and repeats change nothing.

A broker that dies between a commit and its publish loses the tail of what it decided to
deliver; the log keeps it. The buyer only acts on a turn it was delivered, and a broker's
publishes leave in order, so what the buyer can miss is a suffix of its deliveries since
its last message. Whatever that suffix, the buyer's view after the catch-up a rejoin gets
must equal the view of a buyer that lost nothing. Driven by the random rooms of
test_properties, folded by the agent's own `_receive` (its dedup included).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mams.actors.agent import AgentActor
from mams.actors.brains.baseline import BaselineBuyer, BaselineSeller
from mams.bus.memory import InMemoryBus
from mams.bus.subjects import Subjects
from mams.domain.events import BuyerSaid, Event
from mams.domain.messages import RoomMessage, SellerMessage
from mams.domain.negotiation import INITIAL, NegotiationState, evolve
from mams.domain.visibility import catch_up, route

from .helpers import BUYER, NID
from .test_properties import drive


def _buyer() -> AgentActor:
    return AgentActor(InMemoryBus(), Subjects("catchup"), BUYER, BaselineBuyer(), "buyer")


def _timeline(events: list[Event]) -> list[tuple[NegotiationState, list[RoomMessage]]]:
    """Per committed event: the state after it and what it delivered to the buyer."""
    out: list[tuple[NegotiationState, list[RoomMessage]]] = []
    state = INITIAL
    for event in events:
        state = evolve(state, event)
        out.append((state, [m for a, m in route(state, event) if a == BUYER]))
    return out


@given(st.data())
def test_a_buyer_that_lost_the_tail_of_its_deliveries_is_made_whole_by_a_rejoin(
    data: st.DataObject,
) -> None:
    run = drive(data)
    timeline = _timeline(run.events)
    open_points = [n - 1 for n in run.decided if timeline[n - 1][0].phase != "ended"]
    i = data.draw(st.sampled_from(open_points), label="crash after event")
    said = [k for k in range(i + 1) if isinstance(run.events[k], BuyerSaid)]
    j = data.draw(st.integers(said[-1] if said else 0, i + 1), label="first undelivered")
    state = timeline[i][0]

    whole, lost = _buyer(), _buyer()
    for k in range(i + 1):
        for message in timeline[k][1]:
            whole._receive(message)
            if k < j:
                lost._receive(message)
    caught_up = catch_up(state, BUYER, rejoin=True)
    for _, message in caught_up:
        lost._receive(message)
    assert lost.buyer_views[NID] == whole.buyer_views[NID]
    missed = [m for k in range(j, i + 1) for m in timeline[k][1] if isinstance(m, SellerMessage)]
    assert all((BUYER, m) in caught_up for m in missed)

    # Repeats are folded once: a buyer that lost nothing is unchanged by either catch-up.
    before = whole.buyer_views[NID]
    for rejoin in (True, False):
        for _, message in catch_up(state, BUYER, rejoin=rejoin):
            whole._receive(message)
    assert whole.buyer_views[NID] == before


@given(st.data())
def test_a_keepalive_re_sends_only_owed_turns_and_the_answers_the_buyer_decides_on(
    data: st.DataObject,
) -> None:
    run = drive(data)
    state = run.state
    for agent in (BUYER, *(s.agent_id for s in run.opening.sellers)):
        full = catch_up(state, agent, rejoin=True)
        light = catch_up(state, agent, rejoin=False)
        kinds = {type(m).__name__ for _, m in light}
        assert kinds <= {"TurnStarted", "BuyerMessage", "SellerMessage"}
        assert all(d in full for d in light)
        assert all(a == agent for a, _ in full)
        if state.phase == "ended":
            assert full == []
        elif agent == BUYER and state.phase != "buyer_turn":
            assert light == []


def _seller(agent_id: str) -> AgentActor:
    return AgentActor(InMemoryBus(), Subjects("catchup"), agent_id, BaselineSeller(), "seller")


@given(st.data())
def test_a_line_that_overtook_the_room_s_opening_is_answered_when_the_catch_up_re_sends_it(
    data: st.DataObject,
) -> None:
    # A seller that has just joined (or restarted) can be handed the buyer's message
    # before the catch-up that opens the room for it: the broker routed the buyer's turn
    # before it took the seller's hello. The catch-up re-sends that message; the seller
    # must answer it then, exactly as a seller that only got the catch-up would.
    run = drive(data)
    timeline = _timeline(run.events)
    said = [k for k, e in enumerate(run.events) if isinstance(e, BuyerSaid)]
    if not said:
        return
    k = data.draw(st.sampled_from(said), label="buyer message")
    event = run.events[k]
    assert isinstance(event, BuyerSaid)
    state = timeline[k][0]
    for agent_id in event.to:
        overtaken = [m for a, m in route(state, event) if a == agent_id]
        caught_up = [m for a, m in catch_up(state, agent_id, rejoin=True) if a == agent_id]
        plain, overtook = _seller(agent_id), _seller(agent_id)
        jobs_plain = [j for m in caught_up if (j := plain._receive(m)) is not None]
        for message in overtaken:
            assert overtook._receive(message) is None  # no room yet: nothing to act on
        jobs = [j for m in caught_up if (j := overtook._receive(m)) is not None]
        assert len(jobs_plain) == 1  # the message is owed an answer
        assert len(jobs) == len(jobs_plain)
        assert overtook.seller_views == plain.seller_views

    # The buyer likewise: sellers' answers that overtook its room are taken from the
    # catch-up as if they had never come.
    i = data.draw(st.integers(0, len(run.events) - 1), label="buyer joins after")
    state = timeline[i][0]
    if state.phase == "ended":
        return
    plain, overtook = _buyer(), _buyer()
    for message in timeline[i][1]:
        overtook._receive(message)
    for _, message in catch_up(state, BUYER, rejoin=True):
        plain._receive(message)
        overtook._receive(message)
    assert overtook.buyer_views == plain.buyer_views
    assert overtook.turns_taken == plain.turns_taken
