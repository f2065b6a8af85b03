"""Bus throughput baseline: raw nats-py vs NatsBus, publish -> subscribe on one connection.

Usage: python bench/bus_baseline.py [--nats URL] [--n 200000] [--repeat 3]

Each run publishes N small msgspec-encoded structs on a fresh subject and decodes every
one in the subscriber; the clock stops when the last is decoded. Without --nats (and no
NATS_URL) it starts an embedded nats-server. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import nats
import structlog
from nats.aio.msg import Msg

from mams.bus.embedded import EmbeddedNats
from mams.bus.nats import NatsBus


class Offer(msgspec.Struct, frozen=True):
    """A small payload, about the size of a real bus envelope."""

    negotiation: str
    seller: str
    price_cents: int
    qty: int
    text: str


_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(Offer)


def _payloads(n: int) -> list[Offer]:
    neg = uuid.uuid4().hex
    return [Offer(neg, "techmart", 10_000 + i % 500, 1 + i % 3, "best I can do") for i in range(n)]


async def bench_raw(url: str, n: int) -> float:
    """Raw nats-py: callback subscriber decoding each message. Returns msgs/s."""
    nc = await nats.connect(url, name="bench-raw")
    subject = f"bench.{uuid.uuid4().hex}"
    done = asyncio.Event()
    count = 0

    async def on_msg(msg: Msg) -> None:
        nonlocal count
        _DEC.decode(msg.data)
        count += 1
        if count == n:
            done.set()

    await nc.subscribe(subject, cb=on_msg, pending_msgs_limit=n + 1)
    await nc.flush()
    items = _payloads(n)
    t0 = time.perf_counter()
    for item in items:
        await nc.publish(subject, _ENC.encode(item))
    await nc.flush()
    await done.wait()
    elapsed = time.perf_counter() - t0
    await nc.close()
    return n / elapsed


async def bench_bus(url: str, n: int) -> float:
    """The same through NatsBus: publish(), async-for over the subscription. Returns msgs/s."""
    bus = await NatsBus.connect(url, name="bench-bus")
    subject = f"bench.{uuid.uuid4().hex}"
    sub = await bus.subscribe(subject, max_pending=10_000)

    async def consume() -> None:
        count = 0
        async for msg in sub:
            _DEC.decode(msg.data)
            count += 1
            if count == n:
                return

    items = _payloads(n)
    t0 = time.perf_counter()
    consumer = asyncio.create_task(consume())
    for item in items:
        await bus.publish(subject, _ENC.encode(item))
    await bus.flush()
    await consumer
    elapsed = time.perf_counter() - t0
    await sub.unsubscribe()
    await bus.close()
    return n / elapsed


@asynccontextmanager
async def _server(url: str | None) -> AsyncIterator[str]:
    if url:
        yield url
    else:
        async with EmbeddedNats() as server:
            yield server.url


async def main() -> None:
    """Parse arguments, run both benchmarks ``--repeat`` times, print the best of each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nats", default=os.environ.get("NATS_URL"), help="server URL")
    parser.add_argument("--n", type=int, default=200_000, help="messages per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (best kept)")
    args = parser.parse_args()
    n: int = args.n
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    async with _server(args.nats) as url:
        print(f"server {url}, n={n}, best of {args.repeat}")
        raw = max([await bench_raw(url, n) for _ in range(args.repeat)])
        print(f"raw nats-py + msgspec : {raw:>10,.0f} msgs/s")
        bus = max([await bench_bus(url, n) for _ in range(args.repeat)])
        print(f"NatsBus + msgspec     : {bus:>10,.0f} msgs/s")
        print(f"ratio NatsBus / raw   : {bus / raw:>10.2f}")


if __name__ == "__main__":
    asyncio.run(main())
