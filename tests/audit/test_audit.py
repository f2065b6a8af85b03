"""The hash chain and the audit: computed on append, verified over the stored log, and
tampering by SQL (edit, delete, swap, re-hash) detected at the first broken link."""

from __future__ import annotations

import uuid
from decimal import Decimal

import msgspec
import pytest

from mams.domain.events import (
    BuyerSaid,
    DealClosed,
    Event,
    NegotiationEnded,
    Offer,
    Outcome,
    RoundOpened,
    SellerReplied,
    decode_event,
    encode_event,
    event_type,
)
from mams.domain.negotiation import replay
from mams.storage.audit import Pin, audit_stream, log_digest
from mams.storage.chain import GENESIS, link_hash
from mams.storage.eventstore import InMemoryEventStore, PostgresEventStore
from mams.storage.export import (
    Archive,
    ArchiveImportError,
    export_lines,
    import_events,
    import_scanned,
    parse_lines,
)
from mams.storage.model import NewEvent, StoredEvent
from mams.storage.pg import open_store
from tests.audit.conftest import Market
from tests.domain.helpers import started

pytestmark = pytest.mark.integration


def assert_chained(events: list[StoredEvent]) -> None:
    prev = GENESIS
    for e in events:
        assert e.prev_hash == prev
        assert e.hash == link_hash(prev, e.stream_id, e.seq, e.event_id, e.type, e.data)
        prev = e.hash


def room_with_offer(market: Market) -> uuid.UUID:
    for room in market.rooms:
        return room.negotiation_id
    raise AssertionError("no rooms")


async def offer_seq(market: Market, nid: uuid.UUID) -> int:
    for e in await market.store.read(nid):
        ev = decode_event(e.data)
        if isinstance(ev, SellerReplied) and ev.offer is not None and e.seq > 3:
            return e.seq
    raise AssertionError("no offer in the run")


async def audit(market: Market, nid: uuid.UUID) -> tuple[int, str]:
    report = audit_stream(nid, await market.store.read(nid), expect_ended=True)
    assert report.first is not None, "tampering went unnoticed"
    return report.first.seq, report.first.check


# -- the chain on a real run -------------------------------------------------------------------
async def test_real_run_is_chained_and_audits_clean(market: Market) -> None:
    assert len(market.rooms) == 2
    memory = InMemoryEventStore()
    for room in market.rooms:
        events = await market.store.read(room.negotiation_id)
        assert len(events) > 5
        assert_chained(events)
        report = audit_stream(room.negotiation_id, events, expect_ended=True)
        assert report.ok, report.problems
        assert report.ended
        assert report.head == events[-1].hash.hex()
        # The in-memory store computes the same chain from the same events.
        await memory.append(
            [NewEvent(e.stream_id, e.seq, e.event_id, e.type, e.data) for e in events]
        )
        assert [e.hash for e in await memory.read(room.negotiation_id)] == [e.hash for e in events]


async def test_chain_spans_batches_streams_and_idempotent_reappends(market: Market) -> None:
    store = PostgresEventStore(market.pool)  # no projector: these are not domain events
    a, b = uuid.uuid4(), uuid.uuid4()

    def ev(sid: uuid.UUID, seq: int) -> NewEvent:
        body = {"n": seq, "z": "last", "a": [1, {"y": 2, "x": None}], "text": "déjà"}
        return NewEvent(sid, seq, uuid.uuid4(), "test.event", msgspec.json.encode(body))

    ea = [ev(a, i) for i in range(1, 6)]
    eb = [ev(b, i) for i in range(1, 4)]
    await store.append([ea[0], eb[0], ea[1]])
    await store.append([ea[3], eb[1], ea[2], eb[2]])  # out of seq order within the batch
    await store.append([ea[2], ea[3], ea[4]])  # re-append two, plus a new one
    memory = InMemoryEventStore()
    await memory.append([ea[0], eb[0], ea[1]])
    await memory.append([ea[3], eb[1], ea[2], eb[2]])
    await memory.append([ea[2], ea[3], ea[4]])
    for sid in (a, b):
        stored = await store.read(sid)
        assert_chained(stored)
        assert [e.hash for e in stored] == [e.hash for e in await memory.read(sid)]
        assert_chained(await memory.read(sid))


# -- tampering by SQL --------------------------------------------------------------------------
async def test_edited_price_is_detected(market: Market) -> None:
    nid = room_with_offer(market)
    seq = await offer_seq(market, nid)
    await market.pool.execute(
        "UPDATE events SET data = jsonb_set(data, '{offer,unit_price}', '\"0.01\"') "
        "WHERE stream_id = $1 AND seq = $2",
        nid,
        seq,
    )
    report = audit_stream(nid, await market.store.read(nid))
    assert report.first is not None
    assert (report.first.seq, report.first.check) == (seq, "hash")
    # The domain check sees the price under the floor too.
    assert any(p.check == "guardrail" and p.seq == seq for p in report.problems)


async def test_deleted_middle_row_is_detected(market: Market) -> None:
    nid = room_with_offer(market)
    await market.pool.execute("DELETE FROM events WHERE stream_id = $1 AND seq = 4", nid)
    first = await audit(market, nid)
    assert first == (5, "seq")
    report = audit_stream(nid, await market.store.read(nid))
    assert any(p.seq == 5 and p.check == "link" for p in report.problems)


async def test_deleted_last_row_of_a_finished_run_is_detected(market: Market) -> None:
    nid = room_with_offer(market)
    last = await market.store.last_seq(nid)
    await market.pool.execute("DELETE FROM events WHERE stream_id = $1 AND seq = $2", nid, last)
    assert await audit(market, nid) == (last - 1, "order")


async def test_swapped_rows_are_detected(market: Market) -> None:
    nid = room_with_offer(market)
    await market.pool.execute(
        """
        UPDATE events e SET data = o.data, type = o.type
        FROM events o
        WHERE e.stream_id = $1 AND o.stream_id = $1
          AND ((e.seq = 3 AND o.seq = 4) OR (e.seq = 4 AND o.seq = 3))
        """,
        nid,
    )
    assert await audit(market, nid) == (3, "hash")


async def test_rehashed_edit_breaks_the_next_link(market: Market) -> None:
    nid = room_with_offer(market)
    seq = await offer_seq(market, nid)
    events = await market.store.read(nid)
    row = next(e for e in events if e.seq == seq)
    event = decode_event(row.data)
    assert isinstance(event, SellerReplied)
    assert event.offer is not None
    forged = msgspec.structs.replace(
        event, offer=Offer(unit_price=event.offer.unit_price + 1, quantity=event.offer.quantity)
    )
    data = encode_event(forged)
    new_hash = link_hash(row.prev_hash, nid, seq, row.event_id, row.type, data)
    await market.pool.execute(
        "UPDATE events SET data = $3, hash = $4 WHERE stream_id = $1 AND seq = $2",
        nid,
        seq,
        data,
        new_hash,
    )
    assert await audit(market, nid) == (seq + 1, "link")


# -- domain checks -----------------------------------------------------------------------------
async def handcrafted(events: list[Event]) -> list[StoredEvent]:
    store = InMemoryEventStore()
    nid = uuid.uuid4()
    await store.append(
        [
            NewEvent(nid, i, uuid.uuid4(), event_type(e), encode_event(e))
            for i, e in enumerate(events, 1)
        ]
    )
    return await store.read(nid)


async def test_offer_below_floor_and_bad_deal_are_reported() -> None:
    d = Decimal
    room = started()  # sellers least_price 9.00, buyer max 14.00, quantity 2
    events: list[Event] = [
        room,
        RoundOpened(round=1),
        BuyerSaid(round=1, message_id=uuid.uuid4(), to=("alpha", "beta"), text="hi"),
        SellerReplied(
            round=1,
            message_id=uuid.uuid4(),
            seller="alpha",
            text="cheap!",
            offer=Offer(unit_price=d("5.00"), quantity=2),
        ),
        SellerReplied(
            round=1,
            message_id=uuid.uuid4(),
            seller="beta",
            text="fine",
            offer=Offer(unit_price=d("10.00"), quantity=2),
        ),
        DealClosed(
            round=1,
            message_id=uuid.uuid4(),
            seller="beta",
            unit_price=d("9.50"),
            quantity=3,
            text="",
        ),
        NegotiationEnded(status="completed", outcome=Outcome(type="deal", rounds=1)),
        RoundOpened(round=2),
    ]
    stored = await handcrafted(events)
    report = audit_stream(stored[0].stream_id, stored)
    assert report.first is not None
    assert (report.first.seq, report.first.check) == (4, "guardrail")
    assert "below its least_price 9.00" in report.first.why
    found = {(p.seq, p.check) for p in report.problems}
    assert (6, "guardrail") in found  # not beta's standing offer, wrong quantity
    assert (8, "order") in found  # something after negotiation.ended
    assert not any(p.check in ("hash", "link", "seq") for p in report.problems)


async def test_stream_must_start_with_started_and_senders_be_addressed() -> None:
    stored = await handcrafted([RoundOpened(round=1)])
    report = audit_stream(stored[0].stream_id, stored)
    assert report.first is not None
    assert report.first.check == "order"
    stored = await handcrafted(
        [
            started(),
            RoundOpened(round=1),
            BuyerSaid(round=1, message_id=uuid.uuid4(), to=("alpha",), text="hi"),
            SellerReplied(round=1, message_id=uuid.uuid4(), seller="gamma", text="me too"),
        ]
    )
    report = audit_stream(stored[0].stream_id, stored)
    assert report.first is not None
    assert (report.first.seq, report.first.check) == (4, "visibility")


# -- export and import -------------------------------------------------------------------------
async def test_export_import_gives_the_same_state_and_hashes(
    market: Market, database_url: str, other_schema: str
) -> None:
    lines: list[bytes] = []
    for room in market.rooms:
        lines += export_lines(await market.store.read(room.negotiation_id))
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    parsed = parse_lines(lines)
    pool, target = await open_store(database_url, other_schema)
    try:
        progress: list[tuple[int, int]] = []
        result = await import_events(
            target, parsed, batch=1, on_progress=lambda s, e: progress.append((s, e))
        )
        assert set(result.appended) == {r.negotiation_id for r in market.rooms}
        assert result.identical == []
        # batch=1: each stream its own transaction, progress after each (two commit at
        # once, so either may finish first).
        sizes = [result.appended[r.negotiation_id] for r in market.rooms]
        assert list(result.appended) == [r.negotiation_id for r in market.rooms]  # file order
        assert len(progress) == 2
        assert progress[0] in {(1, sizes[0]), (1, sizes[1])}
        assert progress[1] == (2, sizes[0] + sizes[1])
        for room in market.rooms:
            original = await market.store.read(room.negotiation_id)
            copy = await target.read(room.negotiation_id)
            assert [e.hash for e in copy] == [e.hash for e in original]
            assert [(e.seq, e.event_id, e.type) for e in copy] == [
                (e.seq, e.event_id, e.type) for e in original
            ]
            state = replay(decode_event(e.data) for e in copy)
            assert state == replay(decode_event(e.data) for e in original)
            assert state.outcome == room.state.outcome
            assert audit_stream(room.negotiation_id, copy, expect_ended=True).ok
            assert result.heads[room.negotiation_id] == original[-1].hash
        # Importing again appends nothing: the log holds these very chains.
        again = await import_events(target, parsed)
        assert again.appended == {}
        assert again.identical == [r.negotiation_id for r in market.rooms]
        assert again.heads == result.heads
        assert await target.last_seq(market.rooms[0].negotiation_id) == sizes[0]
    finally:
        await pool.close()


async def test_import_refuses_a_stream_the_log_holds_otherwise(market: Market) -> None:
    nid = market.rooms[1].negotiation_id
    lines = [
        line
        for r in market.rooms
        for line in export_lines(await market.store.read(r.negotiation_id))
    ]
    parsed = parse_lines(lines)
    target = InMemoryEventStore()
    first = next(e for e in parsed if e.stream_id == nid)
    await target.append([NewEvent(nid, 1, first.event_id, first.type, first.data)])
    with pytest.raises(Exception, match=f"stream {nid} already has other events"):
        await import_events(target, parsed)
    # Refused before writing anything: the other room was not appended either.
    assert await target.stream_ids() == [nid]


async def test_import_refuses_a_tampered_file(market: Market) -> None:
    nid = room_with_offer(market)
    lines = list(export_lines(await market.store.read(nid)))
    lines[2] = lines[2].replace(b'"round": 1', b'"round": 2').replace(b'"round":1', b'"round":2')
    assert lines[2] != list(export_lines(await market.store.read(nid)))[2]
    with pytest.raises(Exception, match="chain is broken at seq 3"):
        await import_events(InMemoryEventStore(), parse_lines(lines))


# -- observation streams -------------------------------------------------------------------------
async def test_an_edited_quality_flag_is_detected_in_its_companion_stream(market: Market) -> None:
    from mams.domain.events import QualityFlagged, Severity, observation_stream_id
    from mams.storage.observations import record_observations

    SEVERITIES: tuple[Severity, ...] = ("high", "low")  # noqa: N806

    nid = room_with_offer(market)
    flags = [
        QualityFlagged(
            negotiation_id=nid,
            kind="leakage",
            rule="leakage.seller_cost",
            severity=severity,
            agent="techmart",
            round=1,
            evidence=("seq:4",),
            detail=f"finding {i}",
        )
        for i, severity in enumerate(SEVERITIES)
    ]
    assert await record_observations(market.store, nid, flags) == 2
    assert await record_observations(market.store, nid, flags) == 0  # idempotent
    sid = observation_stream_id(nid)
    clean = audit_stream(sid, await market.store.read(sid))
    assert clean.ok, clean.problems
    assert clean.kind == "observations"
    # Someone downgrades the first finding's severity by SQL.
    await market.pool.execute(
        "UPDATE events SET data = jsonb_set(data, '{severity}', '\"low\"') "
        "WHERE stream_id = $1 AND seq = 1",
        sid,
    )
    report = audit_stream(sid, await market.store.read(sid))
    assert report.first is not None, "tampering went unnoticed"
    assert (report.first.seq, report.first.check) == (1, "hash")


async def test_an_interrupted_import_runs_again_to_the_end(market: Market) -> None:
    first, second = (r.negotiation_id for r in market.rooms[:2])
    parsed = parse_lines(
        [
            line
            for r in market.rooms
            for line in export_lines(await market.store.read(r.negotiation_id))
        ]
    )
    target = InMemoryEventStore()
    # Stopped after its first batch: the first room is in, the second is not.
    await import_events(target, [e for e in parsed if e.stream_id == first])
    result = await import_events(target, parsed)
    assert result.identical == [first]
    assert list(result.appended) == [second]
    for nid in (first, second):
        stored = await target.read(nid)
        assert [e.hash for e in stored] == [e.hash for e in parsed if e.stream_id == nid]


# -- pins and the log digest ------------------------------------------------------------------
async def test_a_pin_finds_a_stream_deleted_cut_back_or_rewritten(market: Market) -> None:
    nid = market.rooms[0].negotiation_id
    events = await market.store.read(nid)
    mid = len(events) // 2
    pin = Pin(seq=events[mid].seq, head=events[mid].hash)

    def pin_problems(stream: list[StoredEvent]) -> list[str]:
        report = audit_stream(nid, stream, pinned=pin)
        return [p.check + ": " + p.why for p in report.problems if p.check == "pin"]

    # The stream grew past the pin, or ends at it: fine.
    assert pin_problems(events) == []
    assert pin_problems(events[: mid + 1]) == []
    # Cut back before the pin, deleted whole, or rewritten at it: each is named.
    (cut,) = pin_problems(events[:mid])
    assert f"now ends at seq {events[mid - 1].seq}" in cut
    (gone,) = pin_problems([])
    assert "none of this stream's events" in gone
    rewritten = [*events[:mid], msgspec.structs.replace(events[mid], hash=bytes(32))]
    (changed,) = pin_problems(rewritten)
    assert "the stream was rewritten" in changed
    # A middle row removed: the pinned seq is gone although later ones are there.
    assert any("it is gone" in p for p in pin_problems([*events[:mid], *events[mid + 1 :]]))


async def test_the_log_digest_changes_with_any_head(market: Market) -> None:
    reports = [
        audit_stream(r.negotiation_id, await market.store.read(r.negotiation_id))
        for r in market.rooms
    ]
    digest = log_digest(reports)
    assert digest == log_digest(list(reversed(reports)))  # order of audit does not matter
    assert log_digest(reports[:1]) != digest  # a stream fewer
    shorter = await market.store.read(market.rooms[0].negotiation_id)
    cut = [audit_stream(market.rooms[0].negotiation_id, shorter[:-1]), *reports[1:]]
    assert log_digest(cut) != digest  # a stream cut back by one event


async def test_an_import_takes_interleaved_streams_but_not_a_stream_out_of_order(
    market: Market,
) -> None:
    a = await market.store.read(market.rooms[0].negotiation_id)
    b = await market.store.read(market.rooms[1].negotiation_id)
    # The two rooms' lines alternate (a file merged by hand): each room is still whole.
    mixed = [e for pair in zip(a, b, strict=False) for e in pair]
    mixed += a[len(b) :] + b[len(a) :]
    target = InMemoryEventStore()
    result = await import_events(target, mixed, batch=1)
    assert result.appended == {a[0].stream_id: len(a), b[0].stream_id: len(b)}
    for stream in (a, b):
        stored = await target.read(stream[0].stream_id)
        assert [e.hash for e in stored] == [e.hash for e in stream]
    # Two lines of one room swapped: named, and nothing written.
    swapped = [a[0], a[2], a[1], *a[3:]]
    empty = InMemoryEventStore()
    with pytest.raises(Exception, match=r"broken at seq 3 \(seq\).*in seq order"):
        await import_events(empty, swapped)
    assert await empty.stream_ids() == []


async def test_a_file_that_changes_between_the_two_readings_is_refused(market: Market) -> None:
    events = await market.store.read(market.rooms[0].negotiation_id)
    readings = [events, events[:-1]]  # the second reading lost the last line
    archive = Archive(lambda: readings.pop(0))
    archive.scan()
    with pytest.raises(ArchiveImportError, match="the file changed while it was being imported"):
        await import_scanned(InMemoryEventStore(), archive)
