"""A whole log audited a chunk at a time, in this process or in worker processes."""

from __future__ import annotations

import uuid

import pytest

from mams.storage.audit import Pin, StreamReport
from mams.storage.auditlog import audit_log
from mams.storage.errors import StorageError
from tests.audit.conftest import Market, UnreadableStore
from tests.e2e.test_cli import schema_dsn

pytestmark = pytest.mark.integration


async def tampered(market: Market) -> tuple[list[uuid.UUID], set[uuid.UUID], uuid.UUID, uuid.UUID]:
    """Edit a row of the first room and delete every row of the second: the ids to audit
    (the log's, then the run it lost), the runs recorded, and the two rooms."""
    edited, deleted = (r.negotiation_id for r in market.rooms[:2])
    await market.pool.execute(
        "UPDATE events SET data = jsonb_set(data, '{text}', '\"edited\"') "
        "WHERE stream_id = $1 AND seq = 3",
        edited,
    )
    await market.pool.execute("DELETE FROM events WHERE stream_id = $1", deleted)
    ids = await market.store.stream_ids()
    runs = await market.pool.fetch("SELECT negotiation_id FROM negotiation_runs")
    recorded = {r["negotiation_id"] for r in runs}
    ids += sorted(recorded - set(ids))
    return ids, recorded, edited, deleted


async def collect(chunks: object) -> list[StreamReport]:
    reports: list[StreamReport] = []
    async for chunk in chunks:  # type: ignore[attr-defined]
        reports += chunk
    return reports


async def test_workers_report_exactly_what_one_process_does(
    market: Market, database_url: str, pg_schema: str
) -> None:
    # Pinned as an earlier audit saw them; then the first room's last event goes too.
    pins = {}
    for room in market.rooms:
        events = await market.store.read(room.negotiation_id)
        pins[room.negotiation_id] = Pin(seq=events[-1].seq, head=events[-1].hash)
    ids, recorded, edited, deleted = await tampered(market)
    await market.pool.execute(
        "DELETE FROM events WHERE stream_id = $1 AND seq = $2", edited, pins[edited].seq
    )
    finished = recorded
    serial = await collect(
        audit_log(
            market.store, ids, jobs=1, chunk=1, finished=finished, recorded=recorded, pins=pins
        )
    )
    # Two real worker processes, one stream per chunk, each reading over its own
    # connection: this process's store would fail any read.
    unreadable = UnreadableStore(market.pool)
    parallel = await collect(
        audit_log(
            unreadable,
            ids,
            dsn=schema_dsn(database_url, pg_schema),
            jobs=2,
            chunk=1,
            parallel_from=0,
            finished=finished,
            recorded=recorded,
            pins=pins,
        )
    )
    assert parallel == serial
    assert [r.stream_id for r in parallel] == ids
    broken = {r.stream_id: r for r in parallel if not r.ok}
    assert broken.keys() == {edited, deleted}
    first = broken[edited].first
    assert first is not None
    assert (first.seq, first.check) == (3, "hash")
    assert "pin" in {p.check for p in broken[edited].problems}
    lost = broken[deleted].first
    assert lost is not None
    assert lost.check == "missing"
    assert "rows were deleted" in lost.why
    assert broken[deleted].events == 0


async def test_a_worker_that_cannot_start_is_a_clear_error(market: Market) -> None:
    ids = await market.store.stream_ids()
    with pytest.raises(StorageError, match="--jobs 1"):
        await collect(
            audit_log(
                market.store,
                ids,
                dsn="postgresql://nobody@127.0.0.1:1/nothing",
                jobs=2,
                parallel_from=0,
            )
        )
