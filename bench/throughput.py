"""Broker throughput: K concurrent negotiations with S sellers each, baseline brains.

Usage: python bench/throughput.py [--big] [--k 1 10 100] [--sellers 1 3 10]
       [--modes one split open paced] [--rate R] [--think MIN MAX] [--anatomy] [--lag]
       [--lanes N] [--repeat N] [--commit-probe S] [--durability durable|relaxed]
       [--agent-procs N] [--nats URL] [--dsn DSN]

Real broker, buyer and sellers (each actor on its own NATS connection) over a real NATS
and PostgreSQL (NATS_URL / DATABASE_URL, defaults to 127.0.0.1), each run in a throwaway
schema, with baseline decisions. Modes per (K, S) (the first three by default):

- `one`: run_market's cast in one process (broker and agents share one core);
- `split`: the broker in its own OS process (as `mams broker` runs), the buyer and
  sellers in this one (no events observer: the run ends when the buyer has been told
  every room closed); all K rooms opened at once (closed loop: the queue is
  always full, so hop latency there is queueing, K x S messages deep);
- `open`: split, with rooms opened at a steady rate (`--rate`, default 80% of the split
  run's negotiations/s): the hop latency of a service at a given offered load;
- `paced`: split, all K rooms opened at once, and every decision takes a think time
  (`--think`, uniform, default 1-3 s: a fast model's latency), so all K rooms think at
  once, as they would with model brains: the hop latency of K live negotiations.

Prints per run: negotiations/s, routed messages/s (the broker's publishes to agent
inboxes), events committed/s, the broker hop latency p50/p99 (a buyer turn's publish by the
agent -> a seller's receipt of it, which includes the group commit; measured by a wrapping
Bus that timestamps by message id, production code untouched), the broker process's peak
RSS (in `one` mode the whole process's high-water mark so far, so it only grows down the
table), the CPU seconds the broker's process spent during the run and routed messages per
such CPU-second (the broker's capacity on one free core; in `one` mode the process also
runs every agent), the agents' process CPU seconds (split modes), and routed msgs/s as a
fraction of the raw ceilings measured in the same run: the raw broker of
bench/raw_broker.py (publish + decode + batched COPY + republish; the issue's ceiling) and
bare nats-py pub->sub. Split modes add a line each on the broker's collector (and the
agents' process's: longest pauses), its commits, the machine's CPU per routed message, and
how bursty the buyer's turns were. `--big` adds K=1000. `--anatomy` splits each hop into
its legs (agent -> broker, in the broker, broker -> seller); `--lag` samples each
process's event-loop lag; `--commit-probe S` times bare one-row commits first;
`--durability relaxed` runs the broker so; `--agent-procs N` spreads the agents over N
processes. Asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import resource
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import asyncpg
import msgspec
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.market import Ceilings, raw_ceilings, scenario
from mams.actors.agent import AgentActor
from mams.actors.brains.baseline import BaselineBuyer, BaselineSeller
from mams.actors.broker import Broker
from mams.actors.market import RunOptions, build_started, market_prefix, run_market
from mams.bus.base import DEFAULT_MAX_PENDING, Bus, Message, Subscription
from mams.bus.nats import NatsBus
from mams.bus.subjects import Subjects
from mams.domain.config import BASELINE_MODEL, item_key, stock_index
from mams.domain.messages import (
    BuyerMessage,
    BuyerTurn,
    InboxMessage,
    RoomClosed,
    decode_inbox,
    decode_outbox,
)
from mams.storage.eventstore import PostgresEventStore, PreparedAppend
from mams.storage.leases import PgLeases
from mams.storage.model import NewEvent, StoredEvent
from mams.storage.pg import open_store
from mams.storage.readmodels import ReadModelProjector, save_session


class Thinking:
    """A brain around another that takes a think time before each decision, drawn
    uniformly from `think` seconds (a model's latency: `paced` mode). Repairs are
    immediate (baseline brains never need one)."""

    def __init__(self, inner: Any, think: tuple[float, float], seed: str) -> None:
        self._inner = inner
        self._think = think
        self._random = random.Random(seed)

    @property
    def label(self) -> str:
        return str(self._inner.label)

    async def decide(self, view: Any) -> Any:
        await anyio.sleep(self._random.uniform(*self._think))
        return await self._inner.decide(view)

    async def repair(self, view: Any, rejected: Any, problems: Any) -> Any:
        return await self._inner.repair(view, rejected, problems)


@dataclass
class Probe:
    """What the wrapping buses saw: turn publish times, hop latencies, broker deliveries;
    with `anatomy`, also when the broker received each buyer turn and first published
    its message (the same monotonic clock across processes on one Linux machine).

    Message ids are kept as ints and receipts as two flat lists: a UUID object or a tuple
    holding one is tracked by the cyclic collector, and 100,000 of them made the
    measured process's full collections (and so the hops it measured) longer."""

    published: dict[int, float] = field(default_factory=dict)
    received_ids: list[int] = field(default_factory=list)  # by sellers, in order
    received_at: list[float] = field(default_factory=list)
    routed: int = 0
    anatomy: bool = False
    broker_in: dict[int, float] = field(default_factory=dict)
    broker_out: dict[int, float] = field(default_factory=dict)

    def hops(self) -> list[float]:
        """Each seller's receipt of a buyer message, since the buyer's turn's publish."""
        sent = self.published
        return [
            t - sent[m]
            for m, t in zip(self.received_ids, self.received_at, strict=True)
            if m in sent
        ]

    def first_seen(self) -> dict[int, float]:
        """Each buyer message's first receipt by any seller."""
        first: dict[int, float] = {}
        for m, t in zip(self.received_ids, self.received_at, strict=True):
            if t < first.get(m, float("inf")):
                first[m] = t
        return first

    def dump(self) -> dict[str, object]:
        """What an agents' process saw, for the parent (`absorb`)."""
        return {
            "published": [list(self.published), list(self.published.values())],
            "received": [self.received_ids, self.received_at],
        }

    def absorb(self, dumped: dict[str, Any]) -> None:
        self.published.update(zip(*dumped["published"], strict=True))
        self.received_ids += dumped["received"][0]
        self.received_at += dumped["received"][1]


class _TimedSubscription:
    """A seller's inbox (when each buyer message arrived), or, with anatomy, the broker's
    (when each buyer turn arrived)."""

    def __init__(self, inner: Subscription, probe: Probe, side: str) -> None:
        self._inner = inner
        self._probe = probe
        self._side = side

    @property
    def subject(self) -> str:
        return self._inner.subject

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        msg = await self._inner.__anext__()
        now = time.perf_counter()
        try:
            m = decode_outbox(msg.data) if self._side == "broker" else decode_inbox(msg.data)
        except msgspec.MsgspecError:
            return msg
        if isinstance(m, BuyerTurn):
            self._probe.broker_in.setdefault(m.message_id.int, now)
        elif isinstance(m, BuyerMessage):
            self._probe.received_ids.append(m.message_id.int)
            self._probe.received_at.append(now)
        return msg

    async def unsubscribe(self) -> None:
        await self._inner.unsubscribe()


class TimedStore:
    """A PipelinedStore around PostgreSQL's that times each commit (the broker's)."""

    def __init__(self, inner: PostgresEventStore) -> None:
        self.inner = inner
        self.commits: list[tuple[float, int]] = []  # (seconds, events) per commit

    async def append(self, events: Sequence[NewEvent]) -> None:
        prepared = await self.prepare(events)
        if prepared is not None:
            await self.commit(prepared)

    async def prepare(self, events: Sequence[NewEvent]) -> PreparedAppend | None:
        return await self.inner.prepare(events)

    async def commit(self, prepared: PreparedAppend) -> None:
        start = time.perf_counter()
        await self.inner.commit(prepared)
        self.commits.append((time.perf_counter() - start, len(prepared.batch)))

    async def read(self, stream_id: uuid.UUID, *, after_seq: int = 0) -> list[StoredEvent]:
        return await self.inner.read(stream_id, after_seq=after_seq)

    async def stream_ids(self) -> list[uuid.UUID]:
        return await self.inner.stream_ids()

    async def read_streams(
        self, stream_ids: Sequence[uuid.UUID], *, types: Sequence[str] | None = None
    ) -> dict[uuid.UUID, list[StoredEvent]]:
        return await self.inner.read_streams(stream_ids, types=types)

    async def last_seq(self, stream_id: uuid.UUID) -> int:
        return await self.inner.last_seq(stream_id)


class ProbeBus:
    """A Bus around another: the buyer's turns are timestamped, a seller's inbox timed,
    the broker's inbox publishes counted (and timed, with anatomy). Everything else
    passes through."""

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
                self._probe.published[turn.message_id.int] = time.perf_counter()
        elif self._role == "broker" and subject.endswith(".inbox"):
            self._probe.routed += 1
            if self._probe.anatomy:
                m = decode_inbox(data)
                if isinstance(m, BuyerMessage):
                    self._probe.broker_out.setdefault(m.message_id.int, time.perf_counter())
        await self._inner.publish(subject, data)

    async def subscribe(
        self, subject: str, *, max_pending: int = DEFAULT_MAX_PENDING
    ) -> Subscription:
        sub = await self._inner.subscribe(subject, max_pending=max_pending)
        if self._role == "seller" or (self._role == "broker" and self._probe.anatomy):
            return _TimedSubscription(sub, self._probe, self._role)
        return sub

    async def flush(self) -> None:
        await self._inner.flush()

    def on_reconnect(self, hook: Callable[[], Awaitable[None]]) -> None:
        self._inner.on_reconnect(hook)

    async def close(self) -> None:
        await self._inner.close()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def peak_rss_mb() -> float:
    """This process's peak resident set so far, in MB: VmHWM on Linux (ru_maxrss would
    carry the parent's high-water mark into a child across fork and exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _fresh_schema(dsn: str) -> tuple[asyncpg.Connection, str]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    return admin, schema


async def run_one(nats_url: str, dsn: str, k: int, sellers: int) -> dict[str, float]:
    """Mode `one`: run_market's whole cast in this process."""
    admin, schema = await _fresh_schema(dsn)
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
        start, cpu0 = time.perf_counter(), time.process_time()
        await run_market(
            sc,
            session_id,
            sc.buyer.items,
            connect=connect,
            store=store,
            options=RunOptions(seed=1, round_timeout=60),
        )
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
        events = int(await pool.fetchval("SELECT count(*) FROM events"))
        await pool.close()
        return _figures(k, elapsed, probe.routed, events, probe.hops(), peak_rss_mb(), cpu)
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


class LoopLag:
    """How late this process's event loop runs a task: a 1 ms sleep's overshoot, sampled
    back to back (`--lag`; the wakeups cost the process some CPU)."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    async def run(self) -> None:
        while True:
            t = time.perf_counter()
            await anyio.sleep(0.001)
            self.samples.append(time.perf_counter() - t - 0.001)

    def figures(self) -> list[float]:
        """p50, p99, max in ms (empty if never run)."""
        if not self.samples:
            return []
        return [
            _percentile(self.samples, 50) * 1000,
            _percentile(self.samples, 99) * 1000,
            max(self.samples) * 1000,
        ]


class GcTimer:
    """Seconds this process spends in the cyclic garbage collector while installed, and
    its longest pause."""

    def __init__(self) -> None:
        self.spent = 0.0
        self.longest = 0.0
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            pause = time.perf_counter() - self._started
            self.spent += pause
            self.longest = max(self.longest, pause)

    def stop(self) -> tuple[float, float]:
        gc.callbacks.remove(self._on_gc)
        return self.spent, self.longest


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU-seconds of the whole machine so far, every core, from /proc/stat:
    the broker, the agents, PostgreSQL and nats-server together."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return float("nan"), float("nan")
    hz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


def _figures(
    k: int,
    elapsed: float,
    routed: int,
    events: int,
    hops: list[float],
    rss_mb: float,
    cpu: float,
) -> dict[str, float]:
    return {
        "broker_cpu_s": cpu,
        "routed_per_cpu_s": routed / cpu if cpu else float("nan"),
        "seconds": elapsed,
        "neg_per_s": k / elapsed,
        "routed_per_s": routed / elapsed,
        "events_per_s": events / elapsed,
        "events": events,
        "hop_p50_ms": _percentile(hops, 50) * 1000,
        "hop_p99_ms": _percentile(hops, 99) * 1000,
        "hops": len(hops),
        "rss_mb": rss_mb,
    }


def when_all_closed(k: int, then: Callable[[], object]) -> Callable[[InboxMessage], None]:
    """The buyer's on_message: call `then` once it has been told all `k` rooms closed."""
    closed: set[UUID] = set()

    def on_buyer_message(message: InboxMessage) -> None:
        if isinstance(message, RoomClosed):
            closed.add(message.negotiation_id)
            if len(closed) == k:
                then()

    return on_buyer_message


@dataclass
class AgentsRun:
    """What the agents' side of a split run measured."""

    elapsed: float  # from the broker's first opening to the buyer told every room closed
    cpu: float  # the agents' processes' CPU-seconds
    gc: tuple[float, float]  # seconds in the collector, and its longest pause
    turns_peak: int  # most turns in flight per agent
    lag: list[float]  # loop lag p50/p99/max ms (the worst process's), or empty
    machine: tuple[tuple[float, float], tuple[float, float]]  # _machine_cpu before, after


async def start_agents(
    tg: anyio.abc.TaskGroup,
    nats_url: str,
    subjects: Subjects,
    cast: Sequence[tuple[str, str]],
    think: tuple[float, float] | None,
    probe: Probe,
    buses: list[Bus],
    on_buyer_message: Callable[[InboxMessage], None],
) -> list[AgentActor]:
    """Run the (agent id, role) `cast` in `tg`, each on its own probed NATS connection
    (kept in `buses`), with baseline brains (thinking `think` seconds, if given)."""
    actors: list[AgentActor] = []
    for agent_id, role in cast:
        bus = ProbeBus(await NatsBus.connect(nats_url, name=agent_id), role, probe)
        buses.append(bus)
        brain: Any = BaselineBuyer() if role == "buyer" else BaselineSeller()
        if think is not None:
            brain = Thinking(brain, think, seed=agent_id)
        actor = AgentActor(
            bus,
            subjects,
            agent_id,
            brain,
            role,  # type: ignore[arg-type]
            on_message=on_buyer_message if role == "buyer" else None,
        )
        await tg.start(actor.run)
        actors.append(actor)
    return actors


async def agents_child(params: dict[str, Any]) -> None:
    """An agents' process of a run with --agent-procs (this script with --agents-child):
    run its share of the cast; print "started", and "closed" once the buyer (if here) has
    been told all K rooms closed; on stdin's EOF print what it saw and spent, and exit."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    think = (float(params["think"][0]), float(params["think"][1])) if params["think"] else None
    k, probe, buses = int(params["k"]), Probe(), list[Bus]()
    on_buyer_message = when_all_closed(k, lambda: print("closed", flush=True))
    lag = LoopLag()
    async with anyio.create_task_group() as tg:
        if params["lag"]:
            tg.start_soon(lag.run)
        actors = await start_agents(
            tg,
            str(params["nats"]),
            Subjects(prefix=str(params["prefix"])),
            [(a, r) for a, r in params["cast"]],
            think,
            probe,
            buses,
            on_buyer_message,
        )
        gc_timer, cpu0 = GcTimer(), time.process_time()  # past the actors' start
        print("started", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)
        cpu = time.process_time() - cpu0
        tg.cancel_scope.cancel()
    for bus in buses:
        await bus.close()
    spent = {
        "cpu": cpu,
        "gc": gc_timer.stop(),
        "turns_peak": max(a.turns.peak for a in actors if a.turns is not None),
        "lag": lag.figures(),
    }
    print(json.dumps({**probe.dump(), **spent}), flush=True)


# -- split: the broker in its own process ---------------------------------------------------
async def broker_child(params: dict[str, object]) -> None:
    """The broker process of a split run (this script with --broker-child): serve the
    market, open its rooms once every agent said hello (all at once, or at `rate` rooms/s),
    print the time the first opened; on stdin's EOF print what it routed, and exit."""
    nats_url, dsn, schema = str(params["nats"]), str(params["dsn"]), str(params["schema"])
    k, sellers = int(str(params["k"])), int(str(params["sellers"]))
    rate = float(str(params["rate"])) if params["rate"] is not None else None
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    durable = not params.get("relaxed")
    pool, pg_store = await open_store(dsn, schema, projector=ReadModelProjector(), durable=durable)
    store = TimedStore(pg_store)
    sc = scenario(k, sellers)
    subjects = Subjects(prefix=str(params["prefix"]))
    probe = Probe(anatomy=bool(params.get("anatomy")))
    bus = ProbeBus(await NatsBus.connect(nats_url, name="broker"), "broker", probe)
    lanes = params.get("lanes")
    # Leased as `mams broker` is: each commit that opens rooms claims them first.
    leases = await PgLeases(pool, dsn).__aenter__()
    broker = Broker(
        bus, store, subjects, commit_lanes=2 if lanes is None else int(str(lanes)), leases=leases
    )
    options = RunOptions(seed=1, round_timeout=60)
    models = {a: BASELINE_MODEL for a in [sc.buyer.agent_id, *(s.agent_id for s in sc.sellers)]}
    index = stock_index(sc)
    session_id = uuid.UUID(str(params["session"]))
    starts = [
        build_started(
            sc, session_id, item, options, None, models, index.get(item_key(item.item_name), ())
        )
        for item in sc.buyer.items
    ]
    lag = LoopLag()
    async with anyio.create_task_group() as tg:
        await tg.start(broker.run)
        if params.get("lag"):
            tg.start_soon(lag.run)
        print("started", flush=True)
        await broker.joined(set(models))
        t0, cpu0 = time.perf_counter(), time.process_time()
        gc_time = GcTimer()  # from here: not the broker's one collection as it starts
        print(f"opening {t0!r}", flush=True)
        for i, started in enumerate(starts):
            if rate is not None:
                await anyio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            await broker.open(started)
        await anyio.to_thread.run_sync(sys.stdin.read)
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - t0
        tg.cancel_scope.cancel()
    await leases.close()
    await bus.close()
    await pool.close()
    times = {
        "broker_in": [list(probe.broker_in), list(probe.broker_in.values())],
        "broker_out": [list(probe.broker_out), list(probe.broker_out.values())],
    }
    result = {"routed": probe.routed, "rss_mb": peak_rss_mb(), "cpu": cpu, **times}
    result["gc_s"], result["gc_max_s"] = gc_time.stop()
    result["lag"] = lag.figures()
    seconds = [c[0] for c in store.commits]
    result["commits"] = len(seconds)
    result["events_per_commit"] = sum(c[1] for c in store.commits) / max(1, len(seconds))
    result["commit_p50_ms"] = _percentile(seconds, 50) * 1000
    result["commit_p99_ms"] = _percentile(seconds, 99) * 1000
    result["commit_max_ms"] = max(seconds, default=float("nan")) * 1000
    result["commits_over_50ms"] = sum(1 for c in seconds if c > 0.05)
    result["commit_busy"] = sum(seconds) / wall  # share of the run the writer was committing
    print(json.dumps(result), flush=True)


async def run_split(
    nats_url: str,
    dsn: str,
    k: int,
    sellers: int,
    *,
    rate: float | None,
    anatomy: bool = False,
    lanes: int | None = None,
    think: tuple[float, float] | None = None,
    lag: bool = False,
    relaxed: bool = False,
    agent_procs: int = 1,
) -> dict[str, float]:
    """Modes `split`, `open` and `paced`: the broker in a child process, the agents
    here; rooms all opened at once (rate None) or at `rate` rooms/s; with `think`, every
    decision takes a think time (uniform, seconds): all K rooms think at once. With `anatomy`, the
    hop's p50/p99 legs too: buyer publish -> broker receipt, broker receipt -> broker's
    publish to the first seller (decide + group commit), -> that seller's receipt."""
    admin, schema = await _fresh_schema(dsn)
    try:
        pool, _ = await open_store(dsn, schema, projector=ReadModelProjector())
        sc = scenario(k, sellers)
        session_id = uuid.uuid4()
        async with pool.acquire() as conn:
            await save_session(conn, session_id, sc)
        prefix = market_prefix()
        subjects = Subjects(prefix=prefix)
        params = {
            "nats": nats_url,
            "dsn": dsn,
            "schema": schema,
            "k": k,
            "sellers": sellers,
            "rate": rate,
            "prefix": prefix,
            "session": str(session_id),
            "anatomy": anatomy,
            "lanes": lanes,
            "lag": lag,
            "relaxed": relaxed,
        }
        probe = Probe()
        buses: list[Bus] = []
        cmd = [sys.executable, __file__, "--broker-child", json.dumps(params)]
        profile = os.environ.get("BENCH_BROKER_PROFILE")  # py-spy raw output for the broker
        if profile:
            spy = str(Path(sys.executable).with_name("py-spy"))
            cmd = [spy, "record", "--format", "raw", "-r", "200", "-o", profile, "--", *cmd]
        async with await anyio.open_process(cmd, stderr=None) as child:
            assert child.stdout is not None
            assert child.stdin is not None
            lines = _lines(child.stdout)
            while (await anext(lines)) != "started":  # py-spy may say things first
                pass
            # The run ends when the buyer has been told every room closed (no observer on
            # the events subjects: a `mams monitor` would be a process of its own).
            cast: list[tuple[str, str]] = [(sc.buyer.agent_id, "buyer")]
            cast += [(s.agent_id, "seller") for s in sc.sellers]
            if agent_procs > 1:
                agents = await _agents_elsewhere(
                    agent_procs,
                    cast,
                    lines,
                    probe,
                    nats=nats_url,
                    prefix=prefix,
                    k=k,
                    think=think,
                    lag=lag,
                )
            else:
                agents = await _agents_here(
                    cast,
                    lines,
                    probe,
                    buses,
                    nats=nats_url,
                    subjects=subjects,
                    k=k,
                    think=think,
                    lag=lag,
                )
            await child.stdin.aclose()
            result = json.loads(await anext(lines))
            async for _ in lines:  # until the child (and py-spy, if profiling) exits
                pass
        for each in buses:
            await each.close()
        events = int(await pool.fetchval("SELECT count(*) FROM events"))
        await pool.close()
        figures = _figures(
            k,
            agents.elapsed,
            result["routed"],
            events,
            probe.hops(),
            result["rss_mb"],
            result["cpu"],
        )
        figures["agents_cpu_s"] = agents.cpu
        figures["turns_peak"] = agents.turns_peak
        figures["turns_per_s_mean"], figures["turns_per_s_busiest"] = _burstiness(probe)
        if lag:
            for side, values in (("broker", result["lag"]), ("agents", agents.lag)):
                for name, v in zip(("p50", "p99", "max"), values, strict=True):
                    figures[f"{side}_lag_{name}_ms"] = v
        (busy0, total0), (busy1, total1) = agents.machine
        busy, total = busy1 - busy0, total1 - total0
        figures["machine_busy"] = busy / total if total else float("nan")
        figures["machine_us_per_routed"] = busy * 1e6 / result["routed"]
        figures["broker_gc_s"], figures["broker_gc_max_s"] = result["gc_s"], result["gc_max_s"]
        figures["agents_gc_s"], figures["agents_gc_max_s"] = agents.gc
        for key in (
            "commits",
            "events_per_commit",
            "commit_p50_ms",
            "commit_p99_ms",
            "commit_max_ms",
            "commits_over_50ms",
        ):
            figures[key] = result[key]
        figures["commit_busy"] = result["commit_busy"]
        if anatomy:
            figures.update(_legs(probe, result["broker_in"], result["broker_out"]))
        return figures
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


async def _agents_elsewhere(
    procs: int,
    cast: Sequence[tuple[str, str]],
    broker_lines: AsyncIterator[str],
    probe: Probe,
    *,
    nats: str,
    prefix: str,
    k: int,
    think: tuple[float, float] | None,
    lag: bool,
) -> AgentsRun:
    """The cast split over `procs` agents' processes (`agents_child`; the buyer in the
    first), until the buyer has been told every room closed; their sightings go into
    `probe`, their CPU and collector time are summed, the worst loop lag kept."""
    groups = [list(cast[i::procs]) for i in range(min(procs, len(cast)))]
    children: list[tuple[anyio.abc.Process, AsyncIterator[str]]] = []
    try:
        for group in groups:
            params = {
                "nats": nats,
                "prefix": prefix,
                "k": k,
                "think": think,
                "lag": lag,
                "cast": group,
            }
            process = await anyio.open_process(
                [sys.executable, __file__, "--agents-child", json.dumps(params)], stderr=None
            )
            assert process.stdout is not None
            children.append((process, _lines(process.stdout)))
        for _, lines in children:
            while (await anext(lines)) != "started":
                pass
        opening = await anext(broker_lines)
        t0 = float(opening.split()[1])
        machine0 = _machine_cpu()
        while (await anext(children[0][1])) != "closed":  # the buyer's process
            pass
        machine1 = _machine_cpu()
        elapsed = time.perf_counter() - t0
        cpu, gc_total, gc_longest, peak, lags = 0.0, 0.0, 0.0, 0, list[list[float]]()
        for process, lines in children:
            assert process.stdin is not None
            await process.stdin.aclose()
            seen = json.loads(await anext(lines))
            probe.absorb(seen)
            cpu += seen["cpu"]
            gc_total += seen["gc"][0]
            gc_longest = max(gc_longest, seen["gc"][1])
            peak = max(peak, seen["turns_peak"])
            if seen["lag"]:
                lags.append(seen["lag"])
            await process.wait()
    finally:
        for process, _ in children:
            if process.returncode is None:
                process.kill()
    worst = max(lags, key=lambda figures: figures[1]) if lags else []
    return AgentsRun(elapsed, cpu, (gc_total, gc_longest), peak, worst, (machine0, machine1))


async def _agents_here(
    cast: Sequence[tuple[str, str]],
    broker_lines: AsyncIterator[str],
    probe: Probe,
    buses: list[Bus],
    *,
    nats: str,
    subjects: Subjects,
    k: int,
    think: tuple[float, float] | None,
    lag: bool,
) -> AgentsRun:
    """The cast in this process, until the buyer has been told every room closed."""
    all_closed = anyio.Event()
    loop_lag = LoopLag()
    async with anyio.create_task_group() as tg:
        if lag:
            tg.start_soon(loop_lag.run)
        actors = await start_agents(
            tg, nats, subjects, cast, think, probe, buses, when_all_closed(k, all_closed.set)
        )
        opening = await anext(broker_lines)
        t0, cpu0 = float(opening.split()[1]), time.process_time()
        gc_timer = GcTimer()
        machine0 = _machine_cpu()
        await all_closed.wait()
        machine1 = _machine_cpu()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        gc_spent = gc_timer.stop()
        peak = max(a.turns.peak for a in actors if a.turns is not None)
        tg.cancel_scope.cancel()
    return AgentsRun(elapsed, cpu, gc_spent, peak, loop_lag.figures(), (machine0, machine1))


async def commit_probe(dsn: str, seconds: float, durable: bool = True) -> str:
    """The latency floor a hop inherits from its commit: one-row transactions back to back
    on this database (flushed to disk, as the broker's are, unless not `durable`) for
    `seconds`."""
    settings = None if durable else {"synchronous_commit": "off"}
    conn = await asyncpg.connect(dsn, server_settings=settings)
    table = f"bench_probe_{uuid.uuid4().hex[:8]}"
    try:
        await conn.execute(f"CREATE TABLE {table} (id bigserial, v bytea)")
        lats: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            await conn.execute(f"INSERT INTO {table} (v) VALUES ($1)", b"x" * 300)
            lats.append(time.perf_counter() - t)
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
    over = sum(1 for x in lats if x > 0.05)
    return (
        f"commit probe: {len(lats):,} one-row commits in {seconds:g} s, p50/p99/max "
        f"{_percentile(lats, 50) * 1000:.2f}/{_percentile(lats, 99) * 1000:.2f}/"
        f"{max(lats) * 1000:.0f} ms, {over} over 50 ms (the floor under a hop's commit)"
    )


def _burstiness(probe: Probe) -> tuple[float, float]:
    """Buyer turns published per second: the mean over the run, and the busiest second
    (rooms opened together keep their rounds in step, so load comes in waves)."""
    times = list(probe.published.values())
    if not times:
        return float("nan"), float("nan")
    t0 = min(times)
    per_second: dict[int, int] = {}
    for t in times:
        per_second[int(t - t0)] = per_second.get(int(t - t0), 0) + 1
    return len(times) / (max(times) - t0 or 1.0), float(max(per_second.values()))


def _legs(
    probe: Probe, broker_in: list[list[Any]], broker_out: list[list[Any]]
) -> dict[str, float]:
    # The broker's times come as [ids, times] (JSON from its process).
    got_at: dict[int, float] = dict(zip(*broker_in, strict=True))
    out_at: dict[int, float] = dict(zip(*broker_out, strict=True))
    legs: dict[str, list[float]] = {"to_broker": [], "in_broker": [], "to_seller": []}
    first_seen = probe.first_seen()
    for mid, sent in probe.published.items():
        got, out, seen = got_at.get(mid), out_at.get(mid), first_seen.get(mid)
        if got is None or out is None or seen is None:
            continue
        legs["to_broker"].append(got - sent)
        legs["in_broker"].append(out - got)
        legs["to_seller"].append(seen - out)
    figures: dict[str, float] = {}
    for name, values in legs.items():
        figures[f"{name}_p50_ms"] = _percentile(values, 50) * 1000
        figures[f"{name}_p99_ms"] = _percentile(values, 99) * 1000
    return figures


async def _lines(stream: anyio.abc.ByteReceiveStream) -> AsyncIterator[str]:
    buffered = b""
    async for chunk in stream:
        buffered += chunk
        while b"\n" in buffered:
            line, buffered = buffered.split(b"\n", 1)
            yield line.decode()


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--k", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--sellers", type=int, nargs="+", default=[1, 3, 10])
    p.add_argument("--big", action="store_true", help="add K=1000")
    p.add_argument(
        "--modes",
        nargs="+",
        choices=["one", "split", "open", "paced"],
        default=["one", "split", "open"],
        help="which runs per (K, S); `open` runs `split` first for its rate; `paced` "
        "(not by default) opens all K rooms with --think time per decision",
    )
    p.add_argument("--nats", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument(
        "--dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    p.add_argument(
        "--rate", type=float, help="`open` mode: rooms opened per second (default: 80%% of split)"
    )
    p.add_argument(
        "--think",
        type=float,
        nargs=2,
        default=(1.0, 3.0),
        metavar=("MIN", "MAX"),
        help="`paced` mode: seconds each decision takes, uniform in [MIN, MAX] "
        "(default 1 3: a fast model's latency)",
    )
    p.add_argument(
        "--anatomy",
        action="store_true",
        help="split/open: also time each hop's legs (decodes in the broker: costs it CPU)",
    )
    p.add_argument(
        "--agent-procs",
        type=int,
        default=1,
        metavar="N",
        help="split/open/paced: the buyer and sellers in N processes of their own instead "
        "of one (the buyer in the first; N >= 1 + sellers: every agent its own, as "
        "`mams run --processes` runs them)",
    )
    p.add_argument(
        "--durability",
        choices=["durable", "relaxed"],
        default="durable",
        help="split/open/paced: the broker's (as `mams broker --durability`); relaxed commits "
        "do not wait for the disk",
    )
    p.add_argument(
        "--commit-probe",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first time one-row commits back to back for SECONDS: the database's latency "
        "floor (and stalls) under every hop",
    )
    p.add_argument(
        "--lag",
        action="store_true",
        help="split/open/paced: also sample each process's event-loop lag (costs CPU)",
    )
    p.add_argument(
        "--lanes",
        type=int,
        help="split/open: the broker's commit lanes (default: the Broker's, 2)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each (K, S) this many times, each against raw ceilings measured just "
        "before it, then print the median and range (this machine's rates move ~10%%)",
    )
    p.add_argument("--no-ceilings", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--broker-child", help=argparse.SUPPRESS)
    p.add_argument("--agents-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.broker_child:
        await broker_child(json.loads(args.broker_child))
        return
    if args.agents_child:
        await agents_child(json.loads(args.agents_child))
        return
    ks = sorted({*args.k, *([1000] if args.big else [])})
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.no_ceilings:  # quick iterations while profiling
        ceilings = Ceilings(nats=float("nan"), copy=float("nan"), broker=float("nan"))
    else:
        ceilings = await raw_ceilings(args.nats, args.dsn)
        print(ceilings.describe())
    if args.commit_probe > 0:
        print(await commit_probe(args.dsn, args.commit_probe, args.durability == "durable"))
    print(
        f"{'mode':>9} {'K':>5} {'S':>3} {'secs':>7} {'neg/s':>8} {'routed/s':>9} {'events/s':>9}"
        f" {'events':>7} {'hop p50 ms':>10} {'hop p99 ms':>10} {'RSS MB':>7}"
        f" {'CPU s':>6} {'routed/CPU-s':>12} {'agents CPU s':>12}"
        f" {'/raw broker':>11} {'/raw nats':>9}"
    )

    # (K, S, mode) -> (routed/s, the raw broker ceiling before it, hop p99 ms) per run
    got: dict[tuple[int, int, str], list[tuple[float, float, float]]] = {}

    def row(mode: str, k: int, sellers: int, r: dict[str, float]) -> None:
        got.setdefault((k, sellers, mode), []).append(
            (r["routed_per_s"], ceilings.broker, r["hop_p99_ms"])
        )
        print(
            f"{mode:>9} {k:>5} {sellers:>3} {r['seconds']:>7.2f} {r['neg_per_s']:>8.1f} "
            f"{r['routed_per_s']:>9,.0f} {r['events_per_s']:>9,.0f} {r['events']:>7.0f} "
            f"{r['hop_p50_ms']:>10.2f} {r['hop_p99_ms']:>10.2f} {r['rss_mb']:>7.0f} "
            f"{r['broker_cpu_s']:>6.1f} {r['routed_per_cpu_s']:>12,.0f} "
            f"{r.get('agents_cpu_s', float('nan')):>12.1f} "
            f"{r['routed_per_s'] / ceilings.broker:>11.3f} "
            f"{r['routed_per_s'] / ceilings.nats:>9.3f}",
            flush=True,
        )
        if "broker_gc_s" in r:
            print(
                f"          broker: {r['broker_gc_s']:.2f} s in the garbage collector"
                f" (longest pause {r['broker_gc_max_s'] * 1000:.0f} ms; agents' process"
                f" {r['agents_gc_s']:.2f} s, {r['agents_gc_max_s'] * 1000:.0f} ms; at most"
                f" {r['turns_peak']:.0f} turns in flight per agent);"
                f" {r['commits']:,.0f} commits of {r['events_per_commit']:.0f} events,"
                f" p50/p99/max {r['commit_p50_ms']:.1f}/{r['commit_p99_ms']:.1f}/"
                f"{r['commit_max_ms']:.0f} ms ({r['commits_over_50ms']:.0f} over 50 ms),"
                f" committing {r['commit_busy']:.0%} of the run"
            )
            print(
                f"          machine: {r['machine_busy']:.0%} busy (all cores, all processes),"
                f" {r['machine_us_per_routed']:.0f} CPU-us per routed message;"
                f" buyer turns {r['turns_per_s_mean']:,.0f}/s, {r['turns_per_s_busiest']:,.0f}"
                " in the busiest second"
            )
        if "broker_lag_p99_ms" in r:
            print(
                "          event-loop lag p50/p99/max ms: broker "
                f"{r['broker_lag_p50_ms']:.2f}/{r['broker_lag_p99_ms']:.2f}/"
                f"{r['broker_lag_max_ms']:.0f}, agents {r['agents_lag_p50_ms']:.2f}/"
                f"{r['agents_lag_p99_ms']:.2f}/{r['agents_lag_max_ms']:.0f}"
            )
        if "in_broker_p50_ms" in r:
            print(
                "          hop legs p50/p99 ms: agent -> broker "
                f"{r['to_broker_p50_ms']:.2f}/{r['to_broker_p99_ms']:.2f}, in the broker "
                f"(decide, group commit) {r['in_broker_p50_ms']:.2f}/{r['in_broker_p99_ms']:.2f}"
                f", broker -> seller {r['to_seller_p50_ms']:.2f}/{r['to_seller_p99_ms']:.2f}",
                flush=True,
            )

    if "one" in args.modes:
        await run_one(args.nats, args.dsn, 1, 1)  # warm-up (first connections, imports)
    fresh = True  # the ceilings were just measured
    for sellers in args.sellers:
        for k in ks:
            split = partial(
                run_split,
                args.nats,
                args.dsn,
                k,
                sellers,
                anatomy=args.anatomy,
                lanes=args.lanes,
                lag=args.lag,
                relaxed=args.durability == "relaxed",
                agent_procs=args.agent_procs,
            )

            for _ in range(args.repeat):
                if args.repeat > 1 and not args.no_ceilings and not fresh:
                    ceilings = await raw_ceilings(args.nats, args.dsn)  # each run its own
                    print(ceilings.describe())
                fresh = False
                if "one" in args.modes:
                    row("one", k, sellers, await run_one(args.nats, args.dsn, k, sellers))
                if "split" in args.modes or ("open" in args.modes and not args.rate):
                    r = await split(rate=None)
                    row("split", k, sellers, r)
                if "open" in args.modes:
                    rate = args.rate or 0.8 * r["neg_per_s"]
                    row(f"open@{rate:.0f}", k, sellers, await split(rate=rate))
                if "paced" in args.modes:
                    lo, hi = args.think
                    r = await split(rate=None, think=(lo, hi))
                    row(f"paced{lo:g}-{hi:g}", k, sellers, r)
            if args.repeat > 1:
                for (k_, s_, mode), runs in got.items():
                    if (k_, s_) != (k, sellers):
                        continue
                    rates, rel = [g[0] for g in runs], [g[0] / g[1] for g in runs]
                    p99 = [g[2] for g in runs]
                    print(
                        f"{mode:>9} {k:>5} {sellers:>3}  median of {len(runs)}: "
                        f"{statistics.median(rates):,.0f} routed/s "
                        f"({min(rates):,.0f}-{max(rates):,.0f}), "
                        f"{statistics.median(rel):.3f} of the raw broker measured before "
                        f"each ({min(rel):.3f}-{max(rel):.3f}); hop p99 "
                        f"{statistics.median(p99):.1f} ms ({min(p99):.1f}-{max(p99):.1f})",
                        flush=True,
                    )


if __name__ == "__main__":
    anyio.run(main)
