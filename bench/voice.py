"""Seller voices: the local engine's throughput, and how soon a seller's line is audio.

Usage: python bench/voice.py [--lines 40] [--repeats 5] [--rooms 4] [--workers 2]
                             [--nats URL] [--dsn DSN]

1. Throughput of the local engine (espeak-ng, `actors/voice.py`'s EspeakEngine through
   the Synthesizer, a fresh audio store so nothing is cached): `--lines` seller lines read
   one after another, in lines/s and as a real-time factor (seconds spent per second of
   audio made; below 1 is faster than real time), and the CPU it took (this process and
   the espeak-ng processes). The same-run baseline is espeak-ng itself on the same lines
   and voices, its WAV to /dev/null: what the engine costs alone, without our WAV
   handling and the store's writes. Then the same
   lines again through the Synthesizer: every one a cache hit. Each of the three is run
   `--repeats` times, interleaved, and the median printed.
2. Delay from commit to audio: the phone-accessories market over the real NATS and
   PostgreSQL (NATS_URL / DATABASE_URL, defaults 127.0.0.1; a throwaway schema), `--rooms`
   rooms at once with baseline brains and the voice observer on (`--workers` lines read
   at once), timing each seller line from its committed event reaching the run to its
   audio being stored and recorded (p50, p99, max), beside how long the rooms took.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio
import asyncpg

from mams.actors.brains.base import BuyerBrain, SellerBrain
from mams.actors.brains.baseline import BaselineBuyer, BaselineSeller
from mams.actors.market import RunOptions, build_started, run_rooms
from mams.actors.voice import EspeakEngine, Line, Spoken, Synthesizer, VoiceOptions
from mams.bus.base import Bus
from mams.bus.nats import NatsBus
from mams.bus.subjects import Subjects
from mams.domain.config import load_scenario
from mams.domain.events import Event, NegotiationEnded, SellerReplied, VoiceSynthesized
from mams.domain.negotiation import NegotiationState
from mams.domain.voices import STYLE_POOLS, VOICES, cast_voices
from mams.storage.audio import AudioStore
from mams.storage.pg import open_store

REPO = Path(__file__).resolve().parent.parent
SCENARIO = REPO / "examples" / "phone-accessories.toml"

LINES = [
    "I can offer the USB-C cable at $8.27 per unit.",
    "$12.87 each. That's the price.",
    "Thanks so much for asking! I can do $7.73 per unit for you.",
    "Ugh. $11.22. Last time I move.",
    "How about $7.35 per unit?",
    "I'd love to make this work - $6.13 per unit?",
    "I can come down to $6.43 per unit, and shipping is on me if you order today.",
    "Wonderful, $5.37 per unit works!",
]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _cpu() -> float:
    """CPU seconds of this process and the children it waited for."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _voices() -> list[str]:
    return [v for pool in STYLE_POOLS.values() for v in pool]


async def throughput(n: int, repeats: int) -> None:
    voices = _voices()
    work = [
        (LINES[i % len(LINES)] + f" (line {i})", VOICES[voices[i % len(voices)]]) for i in range(n)
    ]
    engine = EspeakEngine()

    async def bare() -> tuple[float, float]:
        """espeak-ng alone on the same lines and voices, its WAV to /dev/null."""
        t0, c0 = time.perf_counter(), _cpu()
        for text, voice in work:
            args = [engine.binary, "-b", "1", "-v", voice.espeak, "-p", str(voice.pitch)]
            args += ["-s", str(voice.speed), "--stdout"]
            await anyio.run_process(args, input=text.encode(), stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0, _cpu() - c0

    async def ours(synth: Synthesizer) -> tuple[float, float, float]:
        t0, c0 = time.perf_counter(), _cpu()
        audio = 0.0
        for text, voice in work:
            audio += (await synth.render(text, voice)).seconds
        return time.perf_counter() - t0, _cpu() - c0, audio

    bares: list[tuple[float, float]] = []
    fresh: list[tuple[float, float]] = []
    cached: list[tuple[float, float]] = []
    audio = 0.0
    for _ in range(repeats):  # interleaved, so a busy moment hurts both alike
        bares.append(await bare())
        with tempfile.TemporaryDirectory() as tmp:
            synth = Synthesizer(engine, AudioStore(tmp))
            took, cpu, audio = await ours(synth)
            fresh.append((took, cpu))
            took, cpu, _ = await ours(synth)
            cached.append((took, cpu))
            if (synth.stats.syntheses, synth.stats.cache_hits) != (n, n):
                raise SystemExit(f"expected {n} syntheses then {n} cache hits: {synth.stats}")
    print(f"local engine: {engine.label}; {n} lines, {audio:.1f} s of audio; median of {repeats}")
    for label, runs in (
        ("espeak-ng alone to /dev/null ", bares),
        ("Synthesizer (WAV + store)    ", fresh),
        ("the same lines again (cached)", cached),
    ):
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(
            f"  {label}: {n / wall:7.1f} lines/s   RTF {wall / audio:.4f}   "
            f"CPU {cpu / n * 1000:6.2f} ms a line (this process and its children)"
        )


async def delay(nats_url: str, dsn: str, rooms: int, workers: int) -> None:
    scenario = load_scenario(SCENARIO)
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    committed: dict[uuid.UUID, float] = {}
    ready: dict[uuid.UUID, float] = {}
    try:
        pool, store = await open_store(dsn, schema)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                synth = Synthesizer(EspeakEngine(), AudioStore(tmp))

                def on_event(
                    nid: uuid.UUID, seq: int, event: Event, state: NegotiationState
                ) -> None:
                    if isinstance(event, SellerReplied):
                        committed[event.message_id] = time.perf_counter()

                def on_audio(line: Line, outcome: VoiceSynthesized, spoken: Spoken | None) -> None:
                    if spoken is not None:
                        ready[line.message_id] = time.perf_counter()

                voices = cast_voices((s.handle, s.style, s.voice) for s in scenario.sellers)
                session = uuid.uuid4()
                item = scenario.buyer.items[0]
                starts = [
                    build_started(scenario, session, item, RunOptions(seed=i, round_timeout=10))
                    for i in range(rooms)
                ]
                brains: dict[str, BuyerBrain | SellerBrain] = {
                    scenario.buyer.agent_id: BaselineBuyer()
                }
                for seller in scenario.sellers:
                    brains[seller.agent_id] = BaselineSeller()

                async def connect(name: str) -> Bus:
                    return await NatsBus.connect(nats_url, name=name)

                t0 = time.perf_counter()
                ended: list[float] = []

                def seen(nid: uuid.UUID, seq: int, event: Event, state: NegotiationState) -> None:
                    on_event(nid, seq, event, state)
                    if isinstance(event, NegotiationEnded):
                        ended.append(time.perf_counter())

                await run_rooms(
                    starts,
                    brains,
                    connect=connect,
                    store=store,
                    subjects=Subjects(prefix=f"bench-{uuid.uuid4().hex[:6]}"),
                    on_event=seen,
                    voice=VoiceOptions(
                        synth, voices=voices, on_audio=on_audio, workers=workers, drain=600
                    ),
                )
                done = time.perf_counter()
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()
    delays = [(ready[m] - committed[m]) * 1000 for m in committed if m in ready]
    rooms_took = (max(ended) - t0) if ended else float("nan")
    print(
        f"commit -> audio: {rooms} room(s) of {item.item_name!r}, {len(committed)} seller lines, "
        f"{len(delays)} read, {workers} worker(s)"
    )
    if delays:
        print(
            f"  p50 {statistics.median(delays):8.1f} ms   p99 {_pct(delays, 0.99):8.1f} ms   "
            f"max {max(delays):8.1f} ms"
        )
    print(
        f"  rooms ended after {rooms_took:.2f} s; the last line was audio {done - t0:.2f} s "
        "after the start (the rounds did not wait for it)"
    )


async def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--lines", type=int, default=40)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rooms", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--nats", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument(
        "--dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    args = p.parse_args()
    await throughput(args.lines, args.repeats)
    await delay(args.nats, args.dsn, args.rooms, args.workers)


if __name__ == "__main__":
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    anyio.run(main)
    sys.exit(0)
