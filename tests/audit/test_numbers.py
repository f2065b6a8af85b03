"""Numbers in events and the hash chain: whatever numbers an event holds (a seller's
self-reported cost of 1e16, a negative zero, the smallest float), the audit of the stored
log is clean, because PostgreSQL's jsonb gives them back spelled otherwise but equal; a
change of any number's value is still reported; and rows hashed before numbers were
canonicalised still verify."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from mams.domain.events import Event, LLMCall, LLMCalled, encode_event, event_type
from mams.storage.audit import StreamReport
from mams.storage.auditlog import audit_log
from mams.storage.chain import GENESIS, canonical
from mams.storage.eventstore import InMemoryEventStore, PostgresEventStore
from mams.storage.model import NewEvent
from tests.audit.test_cli_audit import run
from tests.domain.helpers import started
from tests.e2e.test_cli import one_json_object

pytestmark = pytest.mark.integration

Store = tuple[asyncpg.Pool, PostgresEventStore]

# Awkward numbers: floats jsonb spells differently (1e16 -> 10000000000000000, -0.0 ->
# 0.0, 1e308 -> 309 digits, 5e-324 -> 324 places), an int beyond float precision, and
# ordinary ones around them.
AWKWARD: list[Any] = [
    1e16,
    1.5e16,
    1e308,
    -1e308,
    1.7976931348623157e308,
    5e-324,
    -0.0,
    1e23,
    123456789012345678,
    -9223372036854775808,
    18446744073709551615,
    0,
    1.0,
    0.1,
    1e-7,
    2.5e-300,
    1e15,
    100.0,
]


async def audit_all(store: PostgresEventStore) -> list[StreamReport]:
    """What `mams audit --all` checks: every stream of the log, through `audit_log`."""
    ids = await store.stream_ids()
    return [r for chunk in [c async for c in audit_log(store, ids)] for r in chunk]


CHAIN = ("seq", "unhashed", "hash", "link")


def broken(reports: list[StreamReport]) -> list[tuple[int, str]]:
    """The chain's problems (these test events are not a negotiation, so the domain
    checks have their own say about them, which is not the point here)."""
    return [(p.seq, p.check) for r in reports for p in r.problems if p.check in CHAIN]


def raw_events(sid: uuid.UUID, values: list[Any]) -> list[NewEvent]:
    return [
        NewEvent(
            sid,
            i,
            uuid.uuid4(),
            "test.number",
            msgspec.json.encode({"v": v, "in": [v, {"deep": v}], "n": i}),
        )
        for i, v in enumerate(values, 1)
    ]


async def test_awkward_numbers_audit_clean(pg_store: Store) -> None:
    _, store = pg_store
    sid = uuid.uuid4()
    # One number per event, then all of them in one event, across two batches.
    events = raw_events(sid, [*AWKWARD, AWKWARD])
    await store.append(events[:5])
    await store.append(events[5:])
    stored = await store.read(sid)
    assert b"10000000000000000" in stored[0].data  # jsonb did respell the first one
    reports = await audit_all(store)
    assert [r.stream_id for r in reports] == [sid]
    assert broken(reports) == []
    # The writer's bytes and jsonb's give the same canonical form, and an in-memory store
    # (which keeps the writer's bytes) computes the same chain.
    for mine, back in zip(events, stored, strict=True):
        assert canonical(mine.data) == canonical(back.data)
    memory = InMemoryEventStore()
    await memory.append(events)
    assert [e.hash for e in await memory.read(sid)] == [e.hash for e in stored]


def room_with_reported_costs() -> list[NewEvent]:
    """A room whose round timeout is 1e16 s, and a seller's self-reported model calls
    with costs and latencies jsonb respells."""
    room = msgspec.structs.replace(started(), round_timeout=1e16)
    calls = [
        LLMCalled(
            agent="alpha",
            round=1,
            call=LLMCall(
                provider="self-reported",
                model="m",
                purpose="reply",
                prompt_digest="d",
                request="r",
                latency_ms=latency,
                cost_usd=cost,
            ),
        )
        for latency, cost in [(1e16, 1.5e16), (1e308, -0.0), (5e-324, 123456789012345678.0)]
    ]
    body: list[Event] = [room, *calls]
    return [
        NewEvent(room.negotiation_id, i, uuid.uuid4(), event_type(e), encode_event(e))
        for i, e in enumerate(body, 1)
    ]


async def test_seller_reported_costs_and_a_huge_round_timeout_audit_clean(
    pg_store: Store,
) -> None:
    _, store = pg_store
    await store.append(room_with_reported_costs())
    (report,) = await audit_all(store)
    assert report.ok, report.problems
    assert report.events == 4


@pytest.mark.e2e
async def test_mams_audit_all_is_clean_until_a_reported_cost_is_changed(
    pg_store: Store, database_url: str, pg_schema: str, tmp_path: Path
) -> None:
    pool, store = pg_store
    events = room_with_reported_costs()
    await store.append(events)

    def audit_all_json() -> tuple[int, dict[str, Any]]:
        proc = run("audit", "--all", "--json", database_url=database_url, schema=pg_schema,
                   tmp_path=tmp_path)  # fmt: skip
        return proc.returncode, one_json_object(proc.stdout)

    code, report = audit_all_json()
    assert (code, report["ok"]) == (0, True), report
    await tamper(pool, events[0].stream_id, 2, "{call,cost_usd}", "15000000000000001")
    code, report = audit_all_json()
    assert code == 1
    [stream] = report["streams"]
    assert stream["first_broken"]["seq"] == 2
    assert stream["first_broken"]["check"] == "hash"


async def tamper(pool: asyncpg.Pool, sid: uuid.UUID, seq: int, path: str, value: str) -> None:
    await pool.execute(
        f"UPDATE events SET data = jsonb_set(data, '{path}', '{value}'::jsonb) "
        "WHERE stream_id = $1 AND seq = $2",
        sid,
        seq,
    )


@pytest.mark.parametrize(
    ("seq", "path", "value"),
    [
        (1, "{v}", "10000000000000001"),  # 1e16 -> 1e16 + 1: beyond float precision
        (1, "{v}", "2e16"),
        (6, "{in,1,deep}", "6e-324"),  # 5e-324 -> 6e-324 (the same float64!)
        (7, "{v}", "1"),  # -0.0 -> 1
        (9, "{v}", "123456789012345679"),
        (14, "{v}", "0.1000000000000000000001"),  # 0.1 -> a value no float64 holds
        (17, "{v}", "1e15"),  # the float 1e15 -> the integer 1000000000000000
    ],
)
async def test_a_changed_number_is_still_reported(
    pg_store: Store, seq: int, path: str, value: str
) -> None:
    pool, store = pg_store
    sid = uuid.uuid4()
    await store.append(raw_events(sid, AWKWARD))
    assert broken(await audit_all(store)) == []
    await tamper(pool, sid, seq, path, value)
    assert broken(await audit_all(store)) == [(seq, "hash")], "the change went unnoticed"


# -- logs hashed before numbers were canonicalised ---------------------------------------------
def old_hash(
    prev: bytes, sid: uuid.UUID, seq: int, eid: uuid.UUID, type_: str, data: bytes
) -> bytes:
    """The chain as it was: the event's data decoded and re-encoded as it came."""
    body = msgspec.json.Encoder(order="sorted").encode(msgspec.json.decode(data))
    tag = type_.encode()
    return hashlib.sha256(
        prev
        + sid.bytes
        + seq.to_bytes(8, "big", signed=True)
        + eid.bytes
        + len(tag).to_bytes(4, "big")
        + tag
        + body
    ).digest()


@dataclasses.dataclass
class OldRow:
    seq: int
    event_id: uuid.UUID
    data: bytes
    prev_hash: bytes
    hash: bytes


async def write_as_before(pool: asyncpg.Pool, sid: uuid.UUID, values: list[Any]) -> list[OldRow]:
    """Rows as the previous release stored them: hashed from the writer's bytes."""
    rows: list[OldRow] = []
    prev = GENESIS
    for seq, v in enumerate(values, 1):
        eid = uuid.uuid4()
        data = msgspec.json.encode({"v": v, "seed": 2**62 + seq, "n": seq})
        own = old_hash(prev, sid, seq, eid, "test.number", data)
        rows.append(OldRow(seq, eid, data, prev, own))
        prev = own
    await pool.executemany(
        "INSERT INTO events (stream_id, seq, event_id, type, data, prev_hash, hash) "
        "VALUES ($1, $2, $3, 'test.number', $4, $5, $6)",
        [(sid, r.seq, r.event_id, r.data, r.prev_hash, r.hash) for r in rows],
    )
    return rows


async def test_rows_hashed_before_still_verify_and_changes_to_them_are_reported(
    pg_store: Store,
) -> None:
    pool, store = pg_store
    sid = uuid.uuid4()
    # Everything but -0.0, whose minus sign jsonb does not store.
    old = [v for v in AWKWARD if not (v == 0 and str(v).startswith("-"))]
    await write_as_before(pool, sid, old)
    assert broken(await audit_all(store)) == []
    # The log goes on with events hashed the current way, chained onto the old ones.
    later = raw_events(sid, [*old, 1e16, -0.0])[len(old) :]
    await store.append(later)
    reports = await audit_all(store)
    assert broken(reports) == []
    assert reports[0].events == len(old) + 2
    # An old row holding 1e16 changed to another value is reported, as is one whose big
    # integer (not a float) was changed.
    await tamper(pool, sid, 1, "{v}", "20000000000000000")
    await tamper(pool, sid, 3, "{seed}", "4611686018427387906")  # was 2**62 + 3
    assert broken(await audit_all(store)) == [(1, "hash"), (3, "hash")]


async def test_numbers_no_float_holds_append_and_audit_clean(pg_store: Store) -> None:
    # Spelled by hand (no writer here produces them, but jsonb stores them, exactly):
    # an integer of 5,000 digits, floats beyond float64's range either way, and more
    # digits than a float64 holds.
    _, store = pg_store
    sid = uuid.uuid4()
    literals = [
        "1" + "0" * 5000,
        "1e400",
        "-1.5e-400",
        "0.1000000000000000000001",
        "7" * 40 + ".25",
    ]
    events = [
        NewEvent(sid, i, uuid.uuid4(), "test.number", f'{{"v": {lit}, "w": [{lit}]}}'.encode())
        for i, lit in enumerate(literals, 1)
    ]
    await store.append(events)
    assert broken(await audit_all(store)) == []
    for mine, back in zip(events, await store.read(sid), strict=True):
        assert canonical(mine.data) == canonical(back.data)
