"""The composite raw ceiling: a minimal broker with nothing but the unavoidable work.

Usage: python bench/raw_broker.py [--nats URL] [--dsn DSN] [--n 100000]

One publisher sends N msgspec-encoded turns to outbox subjects; a raw broker (its own
nats-py connection) decodes each, appends it to a batch, COPYs the batch into an
events-shaped table (one transaction per batch: log, then deliver), then re-encodes and
republishes each to an inbox subject; a subscriber decodes every delivery. The clock
stops at the last delivery. This is the issue's "publish + broker republish + batched
COPY" ceiling: what MAMS's routed msgs/s is compared with. All in one process (one core
for Python, nats-server and PostgreSQL take the other). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

import asyncpg
import msgspec
import nats
from nats.aio.msg import Msg


class Turn(msgspec.Struct, frozen=True):
    """A payload about the size of a real seller turn."""

    negotiation_id: uuid.UUID
    round: int
    message_id: uuid.UUID
    text: str
    unit_price: str
    quantity: int


_ENC = msgspec.json.Encoder()
_DEC = msgspec.json.Decoder(Turn)
_TABLE = "raw_broker_events"


async def bench_raw_broker(url: str, pool: asyncpg.Pool, n: int, agents: int = 11) -> float:
    """Routed msgs/s of the raw pipeline publish -> decode -> COPY batch -> republish ->
    decode. `pool` points at a throwaway schema (the events-shaped table is made here)."""
    await pool.execute(
        f"CREATE TABLE {_TABLE} (stream_id uuid, seq integer, event_id uuid NOT NULL UNIQUE,"
        " type text NOT NULL, data jsonb NOT NULL, recorded_at timestamptz NOT NULL DEFAULT"
        " now(), global_pos bigserial, PRIMARY KEY (stream_id, seq), CHECK (seq > 0))"
    )
    prefix = f"raw-{uuid.uuid4().hex[:8]}"
    pub = await nats.connect(url, name="raw-publisher")
    broker = await nats.connect(url, name="raw-broker")
    sink = await nats.connect(url, name="raw-subscriber")
    done = asyncio.Event()
    received = 0
    queue: list[tuple[str, Turn, bytes]] = []
    wake = asyncio.Event()

    async def on_outbox(msg: Msg) -> None:
        queue.append((msg.subject.split(".")[2], _DEC.decode(msg.data), msg.data))
        wake.set()

    async def on_inbox(msg: Msg) -> None:
        nonlocal received
        _DEC.decode(msg.data)
        received += 1
        if received == n:
            done.set()

    async def writer() -> None:
        seqs: dict[uuid.UUID, int] = {}
        async with pool.acquire() as conn:
            while True:
                await wake.wait()
                wake.clear()
                batch = queue[:]
                queue.clear()
                records = []
                for _, turn, data in batch:
                    seq = seqs[turn.negotiation_id] = seqs.get(turn.negotiation_id, 0) + 1
                    records.append((turn.negotiation_id, seq, uuid.uuid4(), "seller.replied", data))
                await conn.copy_records_to_table(
                    _TABLE,
                    records=records,
                    columns=["stream_id", "seq", "event_id", "type", "data"],
                )
                for agent, turn, _ in batch:
                    await broker.publish(f"{prefix}.agent.{agent}.inbox", _ENC.encode(turn))

    await broker.subscribe(f"{prefix}.broker.*.outbox", cb=on_outbox, pending_msgs_limit=n + 1)
    await sink.subscribe(f"{prefix}.agent.*.inbox", cb=on_inbox, pending_msgs_limit=n + 1)
    await broker.flush()
    await sink.flush()
    rooms = [uuid.uuid4() for _ in range(max(1, n // 50))]
    turns = [
        (
            f"{prefix}.broker.a{i % agents}.outbox",
            Turn(rooms[i % len(rooms)], 1 + i // len(rooms), uuid.uuid4(), "ok", "9.50", 2),
        )
        for i in range(n)
    ]
    task = asyncio.create_task(writer())
    start = time.perf_counter()
    for subject, turn in turns:
        await pub.publish(subject, _ENC.encode(turn))
    await pub.flush()
    await done.wait()
    elapsed = time.perf_counter() - start
    task.cancel()
    for nc in (pub, broker, sink):
        await nc.close()
    return n / elapsed


async def main() -> None:
    from mams.storage.pg import create_pool

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nats", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument(
        "--dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    p.add_argument("--n", type=int, default=100_000)
    args = p.parse_args()
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        pool = await create_pool(args.dsn, schema=schema)
        rate = await bench_raw_broker(args.nats, pool, args.n)
        await pool.close()
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()
    print(f"raw broker (publish -> decode -> COPY batch -> republish): {rate:,.0f} msgs/s")


if __name__ == "__main__":
    asyncio.run(main())
