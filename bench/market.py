"""Whole-market throughput with baseline brains: K concurrent negotiations, S sellers each.

Usage: python bench/market.py [--k 1 10 100] [--sellers 3] [--nats URL] [--dsn DSN]

Runs the real cast (broker, buyer, sellers as actors, each on its own NATS connection)
over a real NATS and PostgreSQL (NATS_URL / DATABASE_URL, defaults to 127.0.0.1), in a
throwaway schema, and prints negotiations/s, routed messages/s (broker deliveries),
events committed/s, and the ratio of routed messages/s to the raw ceilings measured in
the same run (the raw broker of bench/raw_broker.py: publish + decode + batched COPY +
republish; and bare nats-py pub->sub with msgspec; asyncpg COPY printed alongside).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bus_baseline import bench_raw
from bench.raw_broker import bench_raw_broker
from bench.store_baseline import bench_copy
from mams.actors.market import RoomResult, RunOptions, run_market
from mams.bus.base import Bus
from mams.bus.nats import NatsBus
from mams.domain.config import Scenario, parse_scenario
from mams.storage.eventstore import PostgresEventStore
from mams.storage.pg import create_pool, open_store
from mams.storage.readmodels import ReadModelProjector, save_session


def scenario(k: int, sellers: int) -> Scenario:
    """K items, each stocked by the same S sellers, prices spread so rounds vary."""
    items = [
        {"item_name": f"item-{i}", "quantity": 2, "min_price": "8.00", "max_price": "14.00"}
        for i in range(k)
    ]
    styles = ["rude", "neutral", "sweet"]
    raw = {
        "name": f"bench k={k} s={sellers}",
        "buyer": {"items": items},
        "sellers": [
            {
                "handle": f"@Seller{j}",
                "style": styles[j % 3],
                "customer_retention_weight": "0.5",
                "profit_maximization_weight": "0.5",
                "inventory": [
                    {
                        "item_name": f"item-{i}",
                        "cost_price": "6.00",
                        "selling_price": f"{16 + j % 4}.00",
                        "least_price": f"{10 + j % 3}.00",
                    }
                    for i in range(k)
                ],
            }
            for j in range(sellers)
        ],
    }
    return parse_scenario(raw)


async def run_session(
    pool: asyncpg.Pool,
    store: PostgresEventStore,
    sc: Scenario,
    connect: Callable[[str], Awaitable[Bus]],
    *,
    seed: int,
) -> list[RoomResult]:
    """Store `sc` as a new session and run every item's room to its end."""
    session_id = uuid.uuid4()
    async with pool.acquire() as conn:
        await save_session(conn, session_id, sc)
    return await run_market(
        sc,
        session_id,
        sc.buyer.items,
        connect=connect,
        store=store,
        options=RunOptions(seed=seed, round_timeout=60),
    )


async def run_one(nats_url: str, dsn: str, k: int, sellers: int) -> dict[str, float]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        pool, store = await open_store(dsn, schema, projector=ReadModelProjector())
        sc = scenario(k, sellers)

        async def connect(name: str) -> Bus:
            return await NatsBus.connect(nats_url, name=name)

        start = time.perf_counter()
        rooms = await run_session(pool, store, sc, connect, seed=1)
        elapsed = time.perf_counter() - start
        events = await pool.fetchval("SELECT count(*) FROM events")
        messages = await pool.fetchval("SELECT count(*) FROM messages")
        await pool.close()
        deals = sum(1 for r in rooms if r.state.outcome and r.state.outcome.type == "deal")
        # Each message row was routed to its recipients: buyer->sellers fan-out + replies.
        routed = await _routed(dsn, schema)
        return {
            "k": k,
            "sellers": sellers,
            "seconds": elapsed,
            "neg_per_s": k / elapsed,
            "events_per_s": events / elapsed,
            "routed_per_s": routed / elapsed,
            "messages": messages,
            "deals": deals,
        }
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


async def _routed(dsn: str, schema: str) -> int:
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        value = await conn.fetchval(
            "SELECT coalesce(sum(cardinality(recipients)), 0) FROM messages"
        )
        return int(value)
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class Ceilings:
    """The raw ceilings of this machine, measured in the same run as what they bound."""

    nats: float  # nats-py pub->sub msgs/s with msgspec
    copy: float  # asyncpg COPY rows/s into an events-shaped table, batches of 1000
    broker: float  # publish -> decode -> COPY batch -> republish -> decode, msgs/s

    def describe(self) -> str:
        """One line naming the three figures."""
        return (
            f"raw ceilings: nats-py pub->sub {self.nats:,.0f} msgs/s; asyncpg COPY "
            f"{self.copy:,.0f} rows/s; raw broker (publish + decode + batched COPY + "
            f"republish) {self.broker:,.0f} routed msgs/s"
        )


async def raw_ceilings(nats_url: str, dsn: str) -> Ceilings:
    """The raw ceilings measured in this run: nats-py pub->sub msgs/s with msgspec,
    asyncpg COPY rows/s into an events-shaped table, and the composite raw broker
    (`bench/raw_broker.py`), each in a throwaway schema."""
    raw_nats = await bench_raw(nats_url, 100_000)
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        pool = await create_pool(dsn, schema=schema)
        raw_copy = await bench_copy(pool, 50_000)
        raw_broker = await bench_raw_broker(nats_url, pool, 100_000)
        await pool.close()
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()
    return Ceilings(nats=raw_nats, copy=raw_copy, broker=raw_broker)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--k", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--sellers", type=int, nargs="+", default=[3])
    p.add_argument("--nats", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument(
        "--dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    args = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    ceilings = await raw_ceilings(args.nats, args.dsn)
    print(ceilings.describe())
    print(
        f"{'K':>5} {'sellers':>7} {'secs':>7} {'neg/s':>8} {'routed/s':>9} {'events/s':>9}"
        f" {'msgs':>6} {'deals':>5} {'/raw broker':>11} {'/raw nats':>9}"
    )
    for sellers in args.sellers:
        for k in args.k:
            r = await run_one(args.nats, args.dsn, k, sellers)
            print(
                f"{k:>5} {sellers:>7} {r['seconds']:>7.2f} {r['neg_per_s']:>8.1f} "
                f"{r['routed_per_s']:>9,.0f} {r['events_per_s']:>9,.0f} {r['messages']:>6.0f} "
                f"{r['deals']:>5.0f} {r['routed_per_s'] / ceilings.broker:>11.3f}"
                f" {r['routed_per_s'] / ceilings.nats:>9.3f}"
            )


if __name__ == "__main__":
    anyio.run(main)
