"""Broker throughput: K concurrent negotiations with S sellers each, baseline brains.

Usage: python bench/throughput.py [--big] [--k 1 10 100] [--sellers 1 3 10]
       [--nats URL] [--dsn DSN]

Runs run_market's real cast (broker, buyer, sellers as in-process actors, each on its own
NATS connection) over a real NATS and PostgreSQL (NATS_URL / DATABASE_URL, defaults to
127.0.0.1), each run in a throwaway schema, with instant (baseline) decisions. Prints per
(K, S): negotiations/s, routed messages/s (the broker's publishes to agent inboxes),
events committed/s, the broker hop latency p50/p99 (a buyer turn's publish by the agent ->
the seller's receipt of that message, which includes the group commit; measured by a
wrapping Bus that timestamps by message id, production code untouched), the process's
peak RSS so far (ru_maxrss: a high-water mark, so it only grows down the table), and
routed msgs/s as a fraction of the raw nats-py pub->sub ceiling measured in the same run
(asyncpg COPY ceiling printed alongside). `--big` adds K=1000. Asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID

import anyio
import asyncpg
import msgspec
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.market import raw_ceilings, scenario
from mams.actors.market import RunOptions, run_market
from mams.bus.base import DEFAULT_MAX_PENDING, Bus, Message, Subscription
from mams.bus.nats import NatsBus
from mams.domain.messages import BuyerMessage, BuyerTurn, decode_inbox, decode_outbox
from mams.storage.pg import open_store
from mams.storage.readmodels import ReadModelProjector, save_session


@dataclass
class Probe:
    """What the wrapping buses saw: turn publish times, hop latencies, broker deliveries."""

    published: dict[UUID, float] = field(default_factory=dict)
    hops: list[float] = field(default_factory=list)
    routed: int = 0


class _TimedSubscription:
    """A seller's inbox: on receipt of a buyer message, the hop since its turn's publish."""

    def __init__(self, inner: Subscription, probe: Probe) -> None:
        self._inner = inner
        self._probe = probe

    @property
    def subject(self) -> str:
        return self._inner.subject

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        msg = await self._inner.__anext__()
        now = time.perf_counter()
        try:
            m = decode_inbox(msg.data)
        except msgspec.MsgspecError:
            return msg
        if isinstance(m, BuyerMessage):
            sent = self._probe.published.get(m.message_id)
            if sent is not None:
                self._probe.hops.append(now - sent)
        return msg

    async def unsubscribe(self) -> None:
        await self._inner.unsubscribe()


class ProbeBus:
    """A Bus around another: the buyer's turns are timestamped, a seller's inbox timed,
    the broker's inbox publishes counted. Everything else passes through."""

    def __init__(self, inner: Bus, role: str, probe: Probe) -> None:
        self._inner = inner
        self._role = role
        self._probe = probe

    async def publish(self, subject: str, data: bytes) -> None:
        if self._role == "buyer":
            try:
                turn = decode_outbox(data)
            except msgspec.MsgspecError:
                turn = None
            if isinstance(turn, BuyerTurn):
                self._probe.published[turn.message_id] = time.perf_counter()
        elif self._role == "broker" and subject.endswith(".inbox"):
            self._probe.routed += 1
        await self._inner.publish(subject, data)

    async def subscribe(
        self, subject: str, *, max_pending: int = DEFAULT_MAX_PENDING
    ) -> Subscription:
        sub = await self._inner.subscribe(subject, max_pending=max_pending)
        if self._role == "seller":
            return _TimedSubscription(sub, self._probe)
        return sub

    async def flush(self) -> None:
        await self._inner.flush()

    async def close(self) -> None:
        await self._inner.close()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def peak_rss_mb() -> float:
    """The process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run_one(nats_url: str, dsn: str, k: int, sellers: int) -> dict[str, float]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        pool, store = await open_store(dsn, schema, projector=ReadModelProjector())
        sc = scenario(k, sellers)
        probe = Probe()
        seller_ids = {s.agent_id for s in sc.sellers}

        async def connect(name: str) -> Bus:
            role = (
                "broker"
                if name == "broker"
                else "buyer"
                if name == sc.buyer.agent_id
                else "seller"
                if name in seller_ids
                else "other"
            )
            return ProbeBus(await NatsBus.connect(nats_url, name=name), role, probe)

        session_id = uuid.uuid4()
        async with pool.acquire() as conn:
            await save_session(conn, session_id, sc)
        start = time.perf_counter()
        rooms = await run_market(
            sc,
            session_id,
            sc.buyer.items,
            connect=connect,
            store=store,
            options=RunOptions(seed=1, round_timeout=60),
        )
        elapsed = time.perf_counter() - start
        events = int(await pool.fetchval("SELECT count(*) FROM events"))
        await pool.close()
        deals = sum(1 for r in rooms if r.state.outcome and r.state.outcome.type == "deal")
        return {
            "seconds": elapsed,
            "neg_per_s": k / elapsed,
            "routed_per_s": probe.routed / elapsed,
            "events_per_s": events / elapsed,
            "events": events,
            "hop_p50_ms": _percentile(probe.hops, 50) * 1000,
            "hop_p99_ms": _percentile(probe.hops, 99) * 1000,
            "hops": len(probe.hops),
            "deals": deals,
            "rss_mb": peak_rss_mb(),
        }
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--k", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--sellers", type=int, nargs="+", default=[1, 3, 10])
    p.add_argument("--big", action="store_true", help="add K=1000")
    p.add_argument("--nats", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument(
        "--dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    args = p.parse_args()
    ks = sorted({*args.k, *([1000] if args.big else [])})
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    raw_nats, raw_copy = await raw_ceilings(args.nats, args.dsn)
    print(
        f"raw ceiling: nats-py pub->sub {raw_nats:,.0f} msgs/s; asyncpg COPY {raw_copy:,.0f} rows/s"
    )
    print(
        f"{'K':>5} {'S':>3} {'secs':>7} {'neg/s':>8} {'routed/s':>9} {'events/s':>9}"
        f" {'events':>7} {'hop p50 ms':>10} {'hop p99 ms':>10} {'peak RSS MB':>11}"
        f" {'routed/raw':>10}"
    )
    await run_one(args.nats, args.dsn, 1, 1)  # warm-up (first connections, imports)
    for sellers in args.sellers:
        for k in ks:
            r = await run_one(args.nats, args.dsn, k, sellers)
            print(
                f"{k:>5} {sellers:>3} {r['seconds']:>7.2f} {r['neg_per_s']:>8.1f} "
                f"{r['routed_per_s']:>9,.0f} {r['events_per_s']:>9,.0f} {r['events']:>7.0f} "
                f"{r['hop_p50_ms']:>10.2f} {r['hop_p99_ms']:>10.2f} {r['rss_mb']:>11.0f} "
                f"{r['routed_per_s'] / raw_nats:>10.3f}",
                flush=True,
            )


if __name__ == "__main__":
    anyio.run(main)
