"""The HTTP API's costs (`mams serve`'s app, api/): figures, never assertions.

Usage: python bench/api.py [--rooms 1 10] [--rounds 10] [--viewers 100] [--viewer-processes 1]
                           [--requests 2000] [--concurrency 8] [--nats URL] [--dsn DSN]

The API (api.app.Api over an actors.live.Live) runs on uvicorn in this process over a real
NATS and PostgreSQL (NATS_URL / DATABASE_URL, defaults to 127.0.0.1), in a throwaway
schema; the clients (httpx) run in a child process, so the server's event loop is the
server's alone. Rooms are the phone scenario's "USB-C cable" (baseline sellers: instant).

1. `GET /api/negotiations/{id}/analytics` of an ended room: requests/s with
   --concurrency requests in flight, against a bare Starlette JSON endpoint on the same
   server and client (the baseline: what any request costs here).
2. `POST .../message` round trips (a person as the buyer, --rooms rooms at once, --rounds
   messages each): latency p50/p99 and messages/s, against the same rounds driven in
   process (HumanBuyer.act, then the round's close) in the same run: the difference of the
   p50s is what the API adds to a round.
3. --viewers SSE viewers (observers: every event) of one live room, driven in process:
   delivery latency p50/p99/max from commit to client, the commit time being a timestamp
   taken in `Live`'s on_event (as the room gets the committed event from the bus, before
   any stream wakes), the client's when its SSE event is parsed; both
   `time.perf_counter()` (CLOCK_MONOTONIC, one clock for every process of the machine).
   Against a raw NATS publish -> subscriber delivery (nats-py, one process) measured in the
   same run.

Targets (issue 18): the API adds under 5 ms to a round; a commit reaches 100 viewers
within 50 ms p99.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import msgspec
import nats
import structlog
import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mams.actors.live import Live, LiveRoom
from mams.api.app import Api, create_app
from mams.api.auth import Viewer
from mams.bus.base import Bus
from mams.bus.nats import NatsBus
from mams.domain.config import parse_scenario_text, scenario_to_raw
from mams.domain.events import Event, NegotiationEnded, RoundClosed
from mams.domain.messages import Say, WalkAway
from mams.domain.negotiation import NegotiationState
from mams.storage.pg import open_store
from mams.storage.readmodels import ReadModelProjector

ITEM = "USB-C cable"
SCENARIO = """
name = "api bench"
[buyer]
handle = "@Buyer"
[[buyer.items]]
item_name = "USB-C cable"
quantity = 3
min_price = 4.00
max_price = 9.00
[[sellers]]
handle = "@TechMart"
style = "rude"
customer_retention_weight = 0.2
profit_maximization_weight = 0.8
[[sellers.inventory]]
item_name = "USB-C cable"
cost_price = 2.00
selling_price = 9.50
least_price = 5.50
[[sellers]]
handle = "@QuickTech"
style = "sweet"
customer_retention_weight = 0.7
profit_maximization_weight = 0.3
[[sellers.inventory]]
item_name = "USB-C cable"
cost_price = 3.00
selling_price = 8.00
least_price = 6.00
"""

_json = msgspec.json.Encoder(decimal_format="number")


# -- figures ------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def ms(values: list[float]) -> str:
    if not values:
        return "no samples"
    return (
        f"p50 {pct(values, 0.5) * 1e3:7.2f} ms  p99 {pct(values, 0.99) * 1e3:7.2f} ms  "
        f"max {max(values) * 1e3:7.2f} ms  (n={len(values)})"
    )


# -- the client process -------------------------------------------------------------------
def client_main(conn: Connection) -> None:
    """The child: runs each command it is sent, answers with its figures."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    while True:
        command = conn.recv()
        if command is None:
            return
        name, args = command
        conn.send(anyio.run(CLIENT_COMMANDS[name], conn, *args))


async def load(
    conn: Connection, base: str, path: str, n: int, concurrency: int
) -> tuple[float, list[float]]:
    """`n` GETs of `path`, `concurrency` at a time: (elapsed s, each latency)."""
    latencies: list[float] = []
    left = n
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        await client.get(path)  # warm: a connection, the first request

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                response = await client.get(path)
                latencies.append(time.perf_counter() - t0)
                assert response.status_code == 200, response.text

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
        return time.perf_counter() - start, latencies


async def messages(
    conn: Connection, base: str, nids: list[str], rounds: int
) -> tuple[float, list[float], int]:
    """In each room at once: `rounds` messages to all sellers, then a walk-away. Returns
    (elapsed s, each message's latency, how many were early: 409 before the person's turn
    was open, sent again at once)."""
    latencies: list[float] = []
    early = 0
    limits = httpx.Limits(max_connections=len(nids) + 1)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

        async def post(url: str, body: dict[str, Any]) -> float:
            nonlocal early
            while True:
                t0 = time.perf_counter()
                response = await client.post(url, json=body)
                took = time.perf_counter() - t0
                if response.status_code == 409 and "not the buyer's turn" in response.text:
                    early += 1
                    continue
                assert response.status_code == 200, response.text
                return took

        async def room(nid: str) -> None:
            for n in range(rounds):
                body = {"text": f"Best price for three? ({n})", "recipients": ["all"]}
                latencies.append(await post(f"/api/negotiations/{nid}/message", body))
            await post(f"/api/negotiations/{nid}/decide", {"decision": "walk_away"})

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for nid in nids:
                tg.start_soon(room, nid)
        return time.perf_counter() - start, latencies, early


async def viewers(
    conn: Connection, base: str, nid: str, n: int
) -> tuple[list[list[tuple[int, float]]], float]:
    """`n` SSE viewers (observers) of room `nid`: tells the parent "ready" once each has
    its first event, then reads to the streams' end. Returns (seq, arrival) per viewer,
    and this process's CPU seconds from "ready" to the end. Each stream's bytes are split
    into events by hand (only the id is read): httpx's line iterator would cost more CPU
    here than the server spends sending."""
    got: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    connected = [anyio.Event() for _ in range(n)]
    limits = httpx.Limits(max_connections=n + 1)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:

        async def view(i: int) -> None:
            url = f"/api/negotiations/{nid}/events"
            async with client.stream("GET", url, headers={"x-bench-viewer": "observer"}) as r:
                assert r.status_code == 200
                rest = b""
                async for chunk in r.aiter_raw():
                    now = time.perf_counter()
                    *events, rest = (rest + chunk).split(b"\r\n\r\n")
                    for event in events:
                        at = event.find(b"id: ")
                        if at >= 0:
                            end = event.find(b"\r\n", at)
                            got[i].append((int(event[at + 4 : end if end >= 0 else None]), now))
                            connected[i].set()

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(view, i)
            for event in connected:
                await event.wait()
            conn.send("ready")
            cpu = time.process_time()
    return got, time.process_time() - cpu


CLIENT_COMMANDS: dict[str, Callable[..., Any]] = {
    "load": load,
    "messages": messages,
    "viewers": viewers,
}


class Client:
    """The child process, and a way to await its answers without blocking the loop."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=client_main, args=(child,), daemon=True)
        self.proc.start()

    def send(self, name: str, *args: Any) -> None:
        self.conn.send((name, args))

    async def recv(self) -> Any:
        return await anyio.to_thread.run_sync(self.conn.recv)

    async def call(self, name: str, *args: Any) -> Any:
        self.send(name, *args)
        return await self.recv()

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(10)


# -- the server ---------------------------------------------------------------------------
async def authenticate(request: Request) -> Viewer:
    """The bench's callers: the operator, or an observer (`x-bench-viewer: observer`)."""
    if request.headers.get("x-bench-viewer") == "observer":
        return Viewer(role="observer")
    return Viewer(role="operator")


async def bare(request: Request) -> Response:
    """The baseline: a JSON answer with nothing behind it."""
    return Response(b'{"ok":true}', media_type="application/json")


@dataclass
class Served:
    base: str
    api: Api
    live: Live
    commits: dict[tuple[uuid.UUID, int], float] = field(default_factory=dict)


@asynccontextmanager
async def serving(nats_url: str, dsn: str) -> AsyncIterator[Served]:
    schema = f"bench_api_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    pool, store = await open_store(dsn, schema, projector=ReadModelProjector())
    commits: dict[tuple[uuid.UUID, int], float] = {}

    def on_event(nid: uuid.UUID, seq: int, event: Event, state: NegotiationState) -> None:
        commits.setdefault((nid, seq), time.perf_counter())  # the first, if repeated

    async def connect(name: str) -> Bus:
        return await NatsBus.connect(nats_url, name=f"bench-api-{name}")

    live = Live(connect, store, on_event=on_event)
    api = Api(pool, store, live, authenticate=authenticate)
    app = create_app(api, extra_routes=[Route("/bench/bare", bare, methods=["GET"])])
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it a keep-alive response's second write waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(live.run)
            async with anyio.create_task_group() as web:
                web.start_soon(server.serve, [sock])
                yield Served(base, api, live, commits)
                server.should_exit = True
            tg.cancel_scope.cancel()
    finally:
        sock.close()
        await pool.close()
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


async def new_session(client: httpx.AsyncClient) -> str:
    raw = msgspec.to_builtins(
        scenario_to_raw(parse_scenario_text(SCENARIO, fmt="toml")), builtin_types=(Decimal,)
    )
    response = await client.post(
        "/api/sessions",
        content=_json.encode({"description": "api bench", "scenario": raw}),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["session_id"])


async def start(client: httpx.AsyncClient, sid: str, buyer: str, rounds: int) -> uuid.UUID:
    body = {
        "session_id": sid,
        "item_name": ITEM,
        "buyer": buyer,
        "seed": 1,
        "max_rounds": rounds + 1,
        "monitor": False,
    }
    response = await client.post("/api/negotiations/start", json=body)
    assert response.status_code == 201, response.text
    return uuid.UUID(response.json()["negotiation_id"])


async def until(room: LiveRoom, seq: int, done: Callable[[Event], bool]) -> int:
    """Wait for the room's first event after `seq` that is `done`; its seq."""
    while True:
        newer = await room.after(seq)
        assert newer, "the room ended first"
        for s, event, _ in newer:
            if done(event):
                return s
        seq = newer[-1][0]


async def drive(srv: Served, nid: uuid.UUID, rounds: int, took: list[float]) -> None:
    """Play room `nid` in process as the person: `rounds` messages (each timed from the act
    to its round's close), then walk away."""
    room = srv.live.room(nid)
    assert room is not None
    assert room.human is not None
    for n in range(1, rounds + 1):
        await room.human.next_turn(nid, after=n - 1)
        seq = room.events[-1][0] if room.events else 0
        t0 = time.perf_counter()
        room.human.act(nid, Say(text=f"Best price for three? ({n})"))
        await until(room, seq, lambda e: isinstance(e, RoundClosed))
        took.append(time.perf_counter() - t0)
    await room.human.next_turn(nid, after=rounds)
    seq = room.events[-1][0] if room.events else 0
    room.human.act(nid, WalkAway())
    await until(room, seq, lambda e: isinstance(e, NegotiationEnded))


# -- baselines ----------------------------------------------------------------------------
async def nats_delivery(url: str, n: int = 2000) -> list[float]:
    """One-way latency of a raw nats-py publish -> subscriber callback, one at a time."""
    nc = await nats.connect(url, name="bench-api-raw")
    subject = f"bench.{uuid.uuid4().hex}"
    got: list[float] = []
    arrived = anyio.Event()

    async def on_msg(msg: Any) -> None:
        nonlocal arrived
        got.append(time.perf_counter() - float(msg.data))
        arrived.set()

    await nc.subscribe(subject, cb=on_msg)
    await nc.flush()
    for _ in range(n):
        arrived = anyio.Event()
        await nc.publish(subject, repr(time.perf_counter()).encode())
        await arrived.wait()
    await nc.close()
    return got


# -- the run ------------------------------------------------------------------------------
async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rooms", type=int, nargs="+", default=[1, 10])
    p.add_argument("--rounds", type=int, default=10, help="messages per room")
    p.add_argument("--viewers", type=int, default=100)
    p.add_argument(
        "--viewer-processes", type=int, default=1, help="client processes the viewers share"
    )
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--nats", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument(
        "--dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    args = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    client = Client()
    try:
        async with (
            serving(args.nats, args.dsn) as srv,
            httpx.AsyncClient(base_url=srv.base, timeout=60) as http,
        ):
            sid = await new_session(http)
            await run(args, srv, http, client, sid)
    finally:
        client.close()


async def run(
    args: argparse.Namespace, srv: Served, http: httpx.AsyncClient, client: Client, sid: str
) -> None:
    # 1. GET analytics vs a bare endpoint.
    ended = await start(http, sid, "agent", 3)
    room = srv.live.room(ended)
    assert room is not None
    await until(room, 0, lambda e: isinstance(e, NegotiationEnded))
    n, c = args.requests, args.concurrency
    print(f"requests/s, {c} in flight, {n} requests (client in another process):")
    secs_bare, lat_bare = await client.call("load", srv.base, "/bench/bare", n, c)
    secs_an, lat_an = await client.call(
        "load", srv.base, f"/api/negotiations/{ended}/analytics", n, c
    )
    print(f"  bare Starlette JSON   {n / secs_bare:8.0f}/s   {ms(lat_bare)}")
    print(f"  GET analytics         {n / secs_an:8.0f}/s   {ms(lat_an)}")
    print(f"  analytics / bare      {(n / secs_an) / (n / secs_bare):8.3f} (requests/s ratio)")

    # 2. message round trips, over HTTP and in process.
    print(f"\nmessage round trips ({args.rounds} messages per room, baseline sellers):")
    for k in args.rooms:
        nids = [await start(http, sid, "human", args.rounds) for _ in range(k)]
        cpu = time.process_time()
        secs, lat_http, early = await client.call(
            "messages", srv.base, [str(x) for x in nids], args.rounds
        )
        cpu_http = time.process_time() - cpu
        nids = [await start(http, sid, "human", args.rounds) for _ in range(k)]
        direct: list[float] = []
        t0, cpu = time.perf_counter(), time.process_time()
        async with anyio.create_task_group() as tg:
            for nid in nids:
                tg.start_soon(drive, srv, nid, args.rounds, direct)
        secs_direct = time.perf_counter() - t0
        cpu_direct = time.process_time() - cpu
        added = pct(lat_http, 0.5) - pct(direct, 0.5)
        print(f"  {k} room(s) at once:")
        print(f"    over HTTP    {len(lat_http) / secs:8.0f} messages/s  {ms(lat_http)}")
        print(f"    in process   {len(direct) / secs_direct:8.0f} messages/s  {ms(direct)}")
        print(
            f"    the API adds {added * 1e3:.2f} ms to a round (p50 - p50); "
            f"{early} message(s) sent before the turn was open (409, sent again)"
        )
        rounds = k * (args.rounds + 1)  # the messages and the walk-aways
        print(
            f"    server CPU per round: {cpu_http / rounds * 1e3:.2f} ms over HTTP, "
            f"{cpu_direct / rounds * 1e3:.2f} ms in process: the API's own "
            f"{(cpu_http - cpu_direct) / rounds * 1e3:.2f} ms"
        )
    bare_rtt = await client.call("load", srv.base, "/bench/bare", 500, 1)
    print(f"  bare Starlette round trip, one at a time: {ms(bare_rtt[1])}")

    # 3. SSE viewers of one live room (and the same room's run with none, for the CPU).
    alone = await start(http, sid, "human", args.rounds)
    cpu = time.process_time()
    await drive(srv, alone, args.rounds, [])
    cpu_alone = time.process_time() - cpu
    nid = await start(http, sid, "human", args.rounds)
    # The viewers, split over --viewer-processes client processes (the first is `client`).
    others = [Client() for _ in range(args.viewer_processes - 1)]
    readers = [client, *others]
    shares = [len(range(i, args.viewers, len(readers))) for i in range(len(readers))]
    for reader, share in zip(readers, shares, strict=True):
        reader.send("viewers", srv.base, str(nid), share)
    for reader in readers:
        assert await reader.recv() == "ready"
    live = srv.live.room(nid)
    assert live is not None
    # Events committed before every viewer was connected are not timed.
    first = live.events[-1][0] if live.events else 0
    cpu = time.process_time()
    await drive(srv, nid, args.rounds, [])
    arrivals: list[list[tuple[int, float]]] = []
    cpu_client = 0.0
    for reader in readers:
        got, used = await reader.recv()
        arrivals += got
        cpu_client += used
    cpu_viewed = time.process_time() - cpu
    for reader in others:
        reader.close()
    delays = [t - srv.commits[(nid, seq)] for got in arrivals for seq, t in got if seq > first]
    seqs = max(seq for got in arrivals for seq, _ in got)
    print(
        f"\n{args.viewers} SSE viewers (observers) of one live room, {seqs - first} events "
        "each after all were connected; commit (Live on_event) -> client:"
    )
    print(f"  SSE delivery          {ms(delays)}")
    extra = (cpu_viewed - cpu_alone) / len(delays)
    print(
        f"  server CPU per delivery {extra * 1e6:6.1f} us (the room's CPU with the viewers, "
        f"{cpu_viewed:.3f} s, minus without, {cpu_alone:.3f} s, over {len(delays)} deliveries)"
    )
    print(
        f"  client CPU per delivery {cpu_client / len(delays) * 1e6:6.1f} us "
        f"({len(readers)} client process(es))"
    )
    raw = await nats_delivery(args.nats)
    print(f"  raw NATS pub -> sub   {ms(raw)}")
    print(f"  SSE p50 / NATS p50    {pct(delays, 0.5) / pct(raw, 0.5):8.1f}")
    print(f"  SSE p99 / NATS p99    {pct(delays, 0.99) / pct(raw, 0.99):8.1f}")


if __name__ == "__main__":
    anyio.run(main)
