"""The broker's hello gate (actors.hellos), pure: a burst, then one a second; hellos merged
while one waits; a muted agent's hellos dropped unread, its turns never."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mams.actors.hellos import HELLO_BURST, HELLO_EVERY, HelloGates
from mams.domain.messages import Hello, encode

SUBJECT = "m.broker.mallory.outbox"
HELLO = Hello(role="seller", brain="x")
TURN = (
    b'{"type":"seller.turn","negotiation_id":"6f1c8a52-5c43-4a8e-9d0c-1e1f2a3b4c5d",'
    b'"round":1,"message_id":"6f1c8a52-5c43-4a8e-9d0c-1e1f2a3b4c5e","text":"hello"}'
)


def test_a_burst_then_one_a_second_then_muted_until_the_next_token() -> None:
    gates = HelloGates()
    for _ in range(HELLO_BURST):
        assert gates.offer("mallory", HELLO, SUBJECT, 0.0)
        assert gates.take("mallory") == HELLO
    assert not gates.offer("mallory", HELLO, SUBJECT, 0.0)  # over the rate: dropped
    assert gates.dropped == 1
    # Muted: its hellos go unread, whatever their spacing; its turns always pass.
    assert not gates.admit(SUBJECT, encode(HELLO), 0.5)
    assert not gates.admit(SUBJECT, b'{ "type" : "hello" }', 0.5)
    assert gates.admit(SUBJECT, TURN, 0.5)
    assert gates.admit("m.broker.honest.outbox", encode(HELLO), 0.5)  # only the flooder
    assert gates.dropped == 3
    # A token later it is heard again.
    assert gates.admit(SUBJECT, encode(HELLO), HELLO_EVERY)
    assert gates.offer("mallory", HELLO, SUBJECT, HELLO_EVERY)


def test_hellos_that_come_while_one_waits_are_answered_once_with_the_strongest_flags() -> None:
    gates = HelloGates()
    keepalive = Hello(role="seller", catch_up=False, recap=False)
    assert gates.offer("seller", keepalive, SUBJECT, 0.0)
    assert not gates.offer("seller", Hello(role="seller", catch_up=True, recap=False), SUBJECT, 0)
    assert not gates.offer("seller", Hello(role="seller", catch_up=False, recap=True), SUBJECT, 0)
    taken = gates.take("seller")
    assert taken is not None
    assert (taken.catch_up, taken.recap) == (True, True)
    assert gates.take("seller") is None
    assert gates.dropped == 0  # merged, not dropped


@given(st.lists(st.floats(min_value=0, max_value=30, allow_nan=False), max_size=300))
def test_no_agent_is_answered_more_than_the_rate_allows(times: list[float]) -> None:
    gates = HelloGates()
    answered = 0
    for now in sorted(times):
        if gates.offer("mallory", HELLO, SUBJECT, now):
            answered += 1
            gates.take("mallory")
    span = max(times, default=0.0) - min(times, default=0.0)
    assert answered <= HELLO_BURST + span / HELLO_EVERY
    # An honest agent (a hello every 5 s) is never refused.
    honest = HelloGates()
    assert all(honest.offer("a", HELLO, SUBJECT, 5.0 * i) and honest.take("a") for i in range(50))
