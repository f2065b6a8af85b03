"""A restarted agent rebuilds its conversation from a rejoin: the room's recap.

An agent process that restarts keeps nothing; the broker's answer to its hello is each
open room's view, the lines of that room the agent said or was told (visibility.recap,
from the committed log), and the turn it owes. Whatever the point of the restart, the
view folded from that (by the agent's own `_receive`) must hold the same conversation,
offers and counters as the view of an agent that never stopped, and the restarted agent
must owe exactly the turn the other owes. A reconnected agent (its views intact) is
unchanged by the recap. Driven by the random rooms of test_properties.
"""

from __future__ import annotations

from typing import Literal

from hypothesis import given
from hypothesis import strategies as st

from mams.actors.agent import AgentActor
from mams.actors.brains.baseline import BaselineBuyer, BaselineSeller
from mams.bus.memory import InMemoryBus
from mams.bus.subjects import Subjects
from mams.domain.events import BuyerSaid, Event, SellerReplied
from mams.domain.negotiation import INITIAL, NegotiationState, evolve
from mams.domain.views import BuyerView, SellerView, buyer_sent, seller_sent
from mams.domain.visibility import catch_up, route

from .helpers import BUYER, NID
from .test_properties import drive


def _agent(agent: str, role: Literal["buyer", "seller"]) -> AgentActor:
    brain = BaselineBuyer() if role == "buyer" else BaselineSeller()
    return AgentActor(InMemoryBus(), Subjects("recap"), agent, brain, role)


def _lived(agent: AgentActor, events: list[Event]) -> NegotiationState:
    """Feed `agent` the room as it happened: its deliveries, and its own lines as its
    turns fold and note them when it decides (before their commit). Returns the state
    after the last event."""
    state = INITIAL
    me = str(agent.agent)
    for event in events:
        if isinstance(event, BuyerSaid) and me == BUYER and NID in agent.buyer_views:
            view = agent.buyer_views[NID]
            agent.buyer_views[NID] = buyer_sent(view, event.text, event.to, event.counter_price)
            agent._said(NID, event.message_id)
        if isinstance(event, SellerReplied) and event.seller == me and NID in agent.seller_views:
            view_s = agent.seller_views[NID]
            agent.seller_views[NID] = seller_sent(view_s, event.text, event.offer)
            agent._said(NID, event.message_id)
        state = evolve(state, event)
        for to, message in route(state, event):
            if to == me:
                agent._receive(message)
    return state


def _same_conversation(a: BuyerView | SellerView, b: BuyerView | SellerView) -> None:
    assert a.history == b.history
    assert a.round == b.round
    if isinstance(a, BuyerView) and isinstance(b, BuyerView):
        assert a.offers == b.offers
        assert a.first_asks == b.first_asks
        assert a.my_counters == b.my_counters
    elif isinstance(a, SellerView) and isinstance(b, SellerView):
        assert a.my_offer == b.my_offer
        assert a.buyer_counter == b.buyer_counter


@given(st.data())
def test_a_restarted_agent_rebuilds_its_conversation_and_owes_the_same_turn(
    data: st.DataObject,
) -> None:
    run = drive(data)
    ended = [e for e in run.events if type(e).__name__ == "NegotiationEnded"]
    points = [n for n in run.decided if not ended or n < len(run.events)]
    n = data.draw(st.sampled_from(points), label="restart after event")
    events = run.events[:n]
    agents: list[tuple[str, Literal["buyer", "seller"]]] = [(BUYER, "buyer")]
    agents += [(s.agent_id, "seller") for s in run.opening.sellers]
    me, role = data.draw(st.sampled_from(agents), label="who restarts")

    alive = _agent(me, role)
    state = _lived(alive, events)
    if state.phase == "ended":
        return
    owed = (
        state.phase == "buyer_turn"
        if role == "buyer"
        else state.phase == "sellers_turn" and me in state.awaiting
    )
    restarted = _agent(me, role)
    jobs = [
        job
        for _, message in catch_up(state, me, rejoin=True, log=events)
        if (job := restarted._receive(message)) is not None
    ]
    views_alive = alive.buyer_views if role == "buyer" else alive.seller_views
    views_new = restarted.buyer_views if role == "buyer" else restarted.seller_views
    _same_conversation(views_new[NID], views_alive[NID])
    assert len(jobs) == (1 if owed else 0)  # the turn the broker waits for, and no other

    # A reconnected agent (its views intact) folds nothing twice and owes nothing new.
    before = views_alive[NID]
    again = [
        job
        for _, message in catch_up(state, me, rejoin=True, log=events)
        if (job := alive._receive(message)) is not None
    ]
    assert views_alive[NID].history == before.history
    assert again == []  # its turns were taken when first delivered
