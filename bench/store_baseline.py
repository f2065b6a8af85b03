"""Event-store throughput against the raw-COPY baseline of this machine.

    python bench/store_baseline.py [--dsn postgresql://...] [--n 100000] [--appenders 1000]

Prints events/s for (1) raw asyncpg COPY in batches of 1000 rows into an events-shaped
table, each batch committed (the ceiling), (2) PostgresEventStore through the broker's
group committer (storage.committer) fed by many streams' batches of 2-12 events each
(unnest statement), (3) the same with a COPY-into-temp-table append variant, each with 1
and 3 commit lanes (batches committing at once), and the ratios to the baseline. Runs in a
throwaway schema, dropped afterwards. Figures only; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import os
import random
import time
import uuid
from collections.abc import Sequence

import anyio
import asyncpg
import structlog

from mams.storage.committer import Batch, Committer
from mams.storage.eventstore import PostgresEventStore
from mams.storage.migrate import migrate
from mams.storage.model import NewEvent
from mams.storage.pg import create_pool, quote_ident

BODY = (
    b'{"round": 3, "sender": "@TechMart", "text": "I can do 849.00 per unit for 2 units, '
    b'final offer.", "offer": {"unit_price": "849.00", "quantity": 2}}'
)


class CopyAppendStore(PostgresEventStore):
    """The alternative append: COPY the batch into a temp table, then one INSERT ... SELECT."""

    async def append(self, events: Sequence[NewEvent]) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS incoming "
                "(stream_id uuid, seq int, event_id uuid, type text, data jsonb) "
                "ON COMMIT DELETE ROWS"
            )
            await conn.copy_records_to_table(
                "incoming",
                records=[(e.stream_id, e.seq, e.event_id, e.type, e.data) for e in events],
            )
            await conn.execute(
                "INSERT INTO events (stream_id, seq, event_id, type, data) "
                "SELECT * FROM incoming ON CONFLICT (event_id) DO NOTHING"
            )


async def bench_copy(pool: asyncpg.Pool, n: int) -> float:
    await pool.execute(
        "CREATE TABLE copy_events (stream_id uuid, seq integer, event_id uuid NOT NULL UNIQUE,"
        " type text NOT NULL, data jsonb NOT NULL, recorded_at timestamptz NOT NULL DEFAULT"
        " now(), global_pos bigserial, PRIMARY KEY (stream_id, seq), CHECK (seq > 0))"
    )
    sid = uuid.uuid4()
    rows = [(sid, i + 1, uuid.uuid4(), "seller.replied", BODY) for i in range(n)]
    columns = ["stream_id", "seq", "event_id", "type", "data"]
    start = time.perf_counter()
    async with pool.acquire() as conn:
        for i in range(0, n, 1000):
            await conn.copy_records_to_table(
                "copy_events", records=rows[i : i + 1000], columns=columns
            )
    return n / (time.perf_counter() - start)


async def bench_store(
    store: PostgresEventStore, n: int, appenders: int, inflight: int
) -> tuple[float, str]:
    rng = random.Random(7)
    planned = 0
    # Each appender owns a stream and appends its small batches in seq order.
    streams: list[list[list[NewEvent]]] = [[] for _ in range(appenders)]
    seqs = [0] * appenders
    sids = [uuid.uuid4() for _ in range(appenders)]
    i = 0
    while planned < n:
        k = rng.randint(2, 12)
        w = i % appenders
        streams[w].append(
            [
                NewEvent(sids[w], seqs[w] + j + 1, uuid.uuid4(), "seller.replied", BODY)
                for j in range(k)
            ]
        )
        seqs[w] += k
        planned += k
        i += 1

    committed = 0
    done = anyio.Event()

    async def deliver(batches: Sequence[Batch]) -> None:
        nonlocal committed
        committed += sum(len(b.events) for b in batches)
        if committed >= planned:
            done.set()

    committer = Committer(store, deliver, lanes=inflight)
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        await tg.start(committer.run)
        # Round-robin over the streams, each stream's batches in seq order.
        for round_ in range(max(len(b) for b in streams)):
            for w, batches in enumerate(streams):
                if round_ < len(batches):
                    await committer.submit(Batch(batches[round_], [], [], nid=sids[w]))
        await done.wait()
        tg.cancel_scope.cancel()
    elapsed = time.perf_counter() - start
    committer.close()
    appends = sum(len(b) for b in streams)
    detail = (
        f"{appends} appends in {committer.commits} commits "
        f"(avg {planned / max(committer.commits, 1):.0f} events/commit)"
    )
    return planned / elapsed, detail


async def main(dsn: str, n: int, appenders: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f"CREATE SCHEMA {quote_ident(schema)}")
    try:
        pool = await create_pool(dsn, schema=schema, max_size=6)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            copy_rate = await bench_copy(pool, n)
            results: list[tuple[str, float, str]] = []
            for label, cls, inflight in [
                ("unnest append, 1 commit lane  ", PostgresEventStore, 1),
                ("unnest append, 3 commit lanes ", PostgresEventStore, 3),
                ("COPY temp-table append, 1 lane ", CopyAppendStore, 1),
                ("COPY temp-table append, 3 lanes", CopyAppendStore, 3),
            ]:
                await pool.execute("TRUNCATE events")
                rate, detail = await bench_store(cls(pool), n, appenders, inflight)
                results.append((label, rate, detail))
        finally:
            await pool.close()
    finally:
        await admin.execute(f"DROP SCHEMA {quote_ident(schema)} CASCADE")
        await admin.close()
    print(f"events: {n}, concurrent appenders: {appenders}, 2-12 events per append")
    print(f"baseline raw COPY x1000, commit per batch    {copy_rate:10,.0f} events/s")
    for label, rate, detail in results:
        print(f"Committer + {label}  {rate:10,.0f} events/s  ratio {rate / copy_rate:.2f}")
        print(f"    {detail}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--dsn",
        default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--appenders", type=int, default=1000)
    args = parser.parse_args()
    anyio.run(main, args.dsn, args.n, args.appenders)
