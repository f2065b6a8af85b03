"""The broker's rooms (actors.rooms), pure: a command moves a room on into the batch the
committer writes (rows in seq order, each agent's view, what observers see); drops say
why; ended rooms are kept a while; rooms are rebuilt from the log, and a reload makes
what was decided on the refused state stale."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec

from mams.actors.rooms import Rooms
from mams.bus.subjects import Subjects
from mams.domain.events import encode_event, event_type
from mams.domain.messages import Say, WalkAway, committed_prefix, encode_committed_json
from mams.domain.negotiation import Deadline, FromAgent, Open, Phase
from mams.storage.model import StoredEvent
from tests.domain.helpers import BUYER, NID, Room, buyer_turn, started

SUBJECTS = Subjects("m")


class _Broker:
    """What a broker is told of: the drops and the phases that begin."""

    def __init__(self) -> None:
        self.drops: list[tuple[uuid.UUID | None, str | None, str, bool]] = []
        self.phases: list[tuple[uuid.UUID, int, Phase, float]] = []

    def drop(
        self, nid: uuid.UUID | None, agent: str | None, reason: str, *, routine: bool = False
    ) -> None:
        self.drops.append((nid, agent, reason, routine))

    def phase_began(self, nid: uuid.UUID, round_: int, phase: Phase, timeout: float) -> None:
        self.phases.append((nid, round_, phase, timeout))


def _rooms(keep_ended: int = 10) -> tuple[Rooms, _Broker]:
    told = _Broker()
    rooms = Rooms(
        SUBJECTS,
        lambda agent: f"inbox.{agent}",
        keep_ended=keep_ended,
        drop=told.drop,
        phase_began=told.phase_began,
    )
    return rooms, told


def _opened(nid: uuid.UUID = NID) -> Open:
    return Open(started=msgspec.structs.replace(started(), negotiation_id=nid))


def _stored(room: Room) -> list[StoredEvent]:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        StoredEvent(NID, seq, uuid.uuid4(), event_type(e), encode_event(e), at)
        for seq, e in enumerate(room.events, 1)
    ]


def test_a_command_makes_the_batch_the_committer_writes_and_begins_the_phase() -> None:
    rooms, told = _rooms()
    batch = rooms.apply(NID, _opened())
    assert batch is not None
    expected = Room()  # the same room, driven by decide/evolve alone
    assert batch.nid == NID
    assert [e.seq for e in batch.events] == list(range(1, len(expected.events) + 1))
    assert [e.data for e in batch.events] == [encode_event(e) for e in expected.events]
    assert batch.observed == [
        (SUBJECTS.events(NID), encode_committed_json(committed_prefix(NID), e.seq, e.data))
        for e in batch.events
    ]
    assert {subject for subject, _ in batch.deliveries} == {
        f"inbox.{a}" for a in expected.state.agents
    }
    assert rooms.rooms[NID].state == expected.state
    assert told.phases == [(NID, 1, "buyer_turn", expected.state.started.round_timeout)]  # type: ignore[union-attr]
    said = rooms.apply(NID, buyer_turn(1, Say(text="hi")))
    assert said is not None
    assert said.events[0].seq == len(expected.events) + 1
    assert told.phases[-1][:3] == (NID, 1, "sellers_turn")
    assert told.drops == []


def test_what_is_not_acted_on_is_dropped_with_its_reason() -> None:
    rooms, told = _rooms()
    assert rooms.apply(NID, buyer_turn(1, Say(text="hi"))) is None
    assert told.drops == [(NID, BUYER, "no such negotiation", False)]
    rooms.apply(NID, _opened())
    turn = buyer_turn(1, Say(text="hi"))
    assert rooms.apply(NID, turn) is not None
    assert rooms.apply(NID, turn) is None  # the same message id again: routine
    assert told.drops[-1][1:] == (BUYER, "duplicate message_id", True)
    dropped = len(told.drops)
    assert rooms.apply(NID, Deadline(round=1, phase="buyer_turn")) is None  # passed: silent
    assert len(told.drops) == dropped


def test_ended_rooms_are_kept_a_while_then_forgotten_oldest_first() -> None:
    rooms, _ = _rooms(keep_ended=2)
    ids = [uuid.UUID(int=n + 1) for n in range(4)]
    for nid in [*ids, NID]:
        rooms.apply(nid, _opened(nid))
    for nid in ids:
        walk = msgspec.structs.replace(buyer_turn(1, WalkAway()).turn, negotiation_id=nid)
        assert rooms.apply(nid, FromAgent(agent=BUYER, turn=walk)) is not None
    assert set(rooms.rooms) == {*ids[-2:], NID}
    assert rooms.running() == [NID]


def test_the_open_rooms_of_the_log_are_restored_where_their_log_stands() -> None:
    talked = Room()
    talked.ok(buyer_turn(1, Say(text="hi")))
    ended = Room()
    ended.ok(buyer_turn(1, WalkAway()))
    other = uuid.uuid4()
    companion = [msgspec.structs.replace(e, type="observer.noted") for e in _stored(talked)]
    rooms, told = _rooms()
    restored = rooms.restore(
        [(NID, _stored(talked)), (uuid.uuid4(), _stored(ended)), (other, companion), (other, [])]
    )
    assert restored == [NID]
    assert set(rooms.rooms) == {NID}
    assert rooms.rooms[NID].state == talked.state
    assert rooms.rooms[NID].seq == len(talked.events)
    assert told.phases == [(NID, 1, "sellers_turn", talked.state.started.round_timeout)]  # type: ignore[union-attr]
    garbled = [*_stored(talked)[:-1], msgspec.structs.replace(_stored(talked)[-1], data=b"{")]
    assert rooms.restore([(uuid.uuid4(), garbled)]) == []


def test_a_reload_makes_what_was_decided_on_the_refused_state_stale() -> None:
    rooms, told = _rooms()
    opened = rooms.apply(NID, _opened())
    assert opened is not None
    rooms.broken.add(NID)  # the database refused the batch that said "hi"
    said = rooms.apply(NID, buyer_turn(1, Say(text="hi")))
    assert said is not None
    assert rooms.stale(said)
    rooms.broken.discard(NID)
    log = Room()  # the log holds the opening only
    rooms.reload(NID, log.events, len(log.events))
    assert rooms.rooms[NID].state == log.state
    assert rooms.rooms[NID].seq == len(log.events)
    assert rooms.stale(said)  # decided on the generation before the reload
    assert told.drops[-1][2] == "decided on a state the database refused; re-read"
    again = rooms.apply(NID, buyer_turn(1, Say(text="hi")))
    assert again is not None
    assert not rooms.stale(again)
    assert again.events[0].seq == len(log.events) + 1
    rooms.reload(NID, [], 0)  # its opening was refused: no room
    assert NID not in rooms.rooms
