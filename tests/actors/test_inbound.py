"""What the broker reads on an outbox (actors.inbound), pure: the sender is the subject's,
never the payload's; bad subjects, oversized and malformed payloads are dropped with a
reason; a malformed open_rooms that names its request_id is still answered; hellos pass
through the agent's gate."""

from __future__ import annotations

import uuid

from mams.actors.hellos import HelloGates
from mams.actors.inbound import Control, Dropped, Reader, Refusal, request_id_of
from mams.bus.subjects import Subjects
from mams.domain.messages import MAX_PAYLOAD, Hello, OpenRooms, Say, encode
from mams.domain.negotiation import FromAgent
from tests.domain.helpers import NID, buyer_turn

SUBJECTS = Subjects("m")
OUTBOX = "m.broker.alice.outbox"


def _reader() -> Reader:
    return Reader(SUBJECTS, HelloGates())


def test_a_turn_is_a_command_for_its_room_from_the_subject_s_agent() -> None:
    turn = buyer_turn(1, Say(text="hi")).turn  # the payload names no sender
    assert _reader().parse(OUTBOX, encode(turn), 0.0) == (
        NID,
        FromAgent(agent="alice", turn=turn),
    )


def test_bad_subjects_oversized_and_malformed_payloads_are_dropped_with_a_reason() -> None:
    reader = _reader()
    data = encode(Hello(role="buyer"))
    bad = reader.parse("m.broker.a.b.outbox", data, 0.0)
    assert isinstance(bad, Dropped)
    assert bad.agent is None
    assert bad.then is None
    assert bad.reason.startswith("bad subject: ")
    big = reader.parse(OUTBOX, b" " * (MAX_PAYLOAD + 1), 0.0)
    assert big == Dropped("alice", f"payload of {MAX_PAYLOAD + 1} bytes exceeds {MAX_PAYLOAD}")
    for junk in (b"{", b'{"type":"say"}', b'{"type":"open_rooms"}', b"[" * 10_000):
        dropped = reader.parse(OUTBOX, junk, 0.0)
        assert isinstance(dropped, Dropped), junk[:20]
        assert dropped.agent == "alice"
        assert dropped.reason.startswith("malformed message: ")
        assert dropped.then is None


def test_a_malformed_open_rooms_with_a_request_id_is_still_answered() -> None:
    request_id = uuid.uuid4()
    data = b'{"type":"open_rooms","request_id":"%s","max_rounds":"many"}' % str(request_id).encode()
    assert request_id_of(data) == request_id
    dropped = _reader().parse(OUTBOX, data, 0.0)
    assert isinstance(dropped, Dropped)
    assert dropped.reason.startswith("malformed message: ")
    assert isinstance(dropped.then, Refusal)
    assert (dropped.then.agent, dropped.then.request_id) == ("alice", request_id)
    assert dropped.then.reason.startswith("malformed open_rooms: ")
    assert request_id_of(b'{"type":"hello","request_id":"%s"}' % str(request_id).encode()) is None


def test_open_rooms_and_hellos_are_controls_hellos_merged_while_one_waits() -> None:
    reader = _reader()
    request = OpenRooms(request_id=uuid.uuid4(), session_id=uuid.uuid4())
    assert reader.parse(OUTBOX, encode(request), 0.0) == Control("alice", request)
    keepalive = Hello(role="buyer", catch_up=False, recap=False)
    assert reader.parse(OUTBOX, encode(keepalive), 0.0) == Control("alice", None)
    assert reader.parse(OUTBOX, encode(Hello(role="buyer")), 0.0) is None  # merged
    assert reader.hellos.take("alice") == Hello(role="buyer")
    assert reader.hellos.dropped == 0
