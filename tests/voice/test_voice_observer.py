"""The voice observer on the real bus and log: off the negotiation's critical path.

A run with voices commits the same events in the same rounds as a run without, and its
rooms end while every synthesis is still held back; once released, each seller's line is
read in its seller's voice, stored by content and recorded as `voice.synthesized` in the
companion stream (the negotiation's own stream untouched), where `audio_for` finds it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from mams.actors.brains.base import BuyerBrain, SellerBrain
from mams.actors.brains.baseline import BaselineBuyer, BaselineSeller
from mams.actors.market import RunOptions, build_started, run_rooms
from mams.actors.voice import EspeakEngine, Synthesizer, VoiceObserver, VoiceOptions
from mams.bus.base import Bus
from mams.bus.nats import NatsBus
from mams.bus.subjects import Subjects
from mams.domain.events import (
    Event,
    NegotiationEnded,
    SellerReplied,
    VoiceSynthesized,
    decode_event,
    event_type,
)
from mams.domain.messages import CommittedEvent, encode_committed
from mams.domain.negotiation import NegotiationState
from mams.domain.voices import Voice, cast_voices
from mams.storage.audio import AudioStore, audio_for, seconds_of
from mams.storage.audit import audit_stream
from mams.storage.eventstore import PostgresEventStore
from mams.storage.observations import load_observations
from tests.integration.scenarios import phone

Store = tuple[asyncpg.Pool, PostgresEventStore]


class HeldEngine(EspeakEngine):
    """espeak-ng that speaks only once released: a TTS as slow as a test wants."""

    def __init__(self) -> None:
        super().__init__()
        self.release = anyio.Event()
        self.started = 0
        self.finished = 0

    async def synthesize(self, text: str, voice: Voice) -> bytes:
        self.started += 1
        await self.release.wait()
        wav = await super().synthesize(text, voice)
        self.finished += 1
        return wav


def _shape(event: Event) -> tuple[Any, ...]:
    """An event without its random ids: what a seeded baseline run must repeat (sellers
    answering one round race each other, so runs are compared as sets of these)."""
    return (
        event_type(event),
        getattr(event, "seller", None) or getattr(event, "agent", None),
        getattr(event, "round", None),
        getattr(event, "text", None),
        getattr(event, "offer", None),
        getattr(event, "reason", None),
    )


async def _run(
    nats_url: str,
    store: PostgresEventStore,
    prefix: str,
    voice: VoiceOptions | None,
    on_event: Any = None,
) -> list[uuid.UUID]:
    scenario = phone()
    options = RunOptions(seed=7, round_timeout=10)
    session = uuid.uuid4()
    starts = [build_started(scenario, session, item, options) for item in scenario.buyer.items]
    brains: dict[str, BuyerBrain | SellerBrain] = {scenario.buyer.agent_id: BaselineBuyer()}
    for seller in scenario.sellers:
        brains[seller.agent_id] = BaselineSeller()

    async def connect(name: str) -> Bus:
        return await NatsBus.connect(nats_url, name=name)

    rooms = await run_rooms(
        starts,
        brains,
        connect=connect,
        store=store,
        subjects=Subjects(prefix=prefix),
        voice=voice,
        on_event=on_event,
    )
    return [r.negotiation_id for r in rooms]


async def test_voices_change_no_event_and_never_hold_a_round(
    nats_url: str, pg_store: Store, tmp_path: Path
) -> None:
    _, store = pg_store
    scenario = phone()
    cast = cast_voices((s.handle, s.style, s.voice) for s in scenario.sellers)
    cast["gadgethub"] = "rachel"  # as a scenario's `voice = "rachel"` would
    engine = HeldEngine()
    audio = AudioStore(tmp_path)
    seen: list[tuple[VoiceSynthesized, float]] = []
    options = VoiceOptions(
        Synthesizer(engine, audio),
        voices=cast,
        on_audio=lambda line, outcome, spoken: seen.append(
            (outcome, spoken.seconds if spoken else 0)
        ),
    )
    ended: set[uuid.UUID] = set()
    at_end: list[tuple[int, int]] = []

    def on_event(nid: uuid.UUID, seq: int, event: Event, state: NegotiationState) -> None:
        if isinstance(event, NegotiationEnded):
            ended.add(nid)
            if len(ended) == len(phone().buyer.items):
                # Every room has ended; the engine has not finished one line yet.
                at_end.append((engine.started, engine.finished))
                engine.release.set()

    with anyio.fail_after(90):
        voiced = await _run(nats_url, store, f"v{uuid.uuid4().hex[:8]}", options, on_event)
        plain = await _run(nats_url, store, f"p{uuid.uuid4().hex[:8]}", None)

    (started_then, finished_then), *_ = at_end
    assert started_then >= 1, "the first line reached the engine"
    assert finished_then == 0, "every room ended while the engine held every line"
    # Same events in the same rounds, with voices and without.
    for with_voice, without in zip(voiced, plain, strict=True):
        a = [decode_event(r.data) for r in await store.read(with_voice)]
        b = [decode_event(r.data) for r in await store.read(without)]
        assert sorted(map(repr, map(_shape, a))) == sorted(map(repr, map(_shape, b)))
        assert isinstance(a[-1], NegotiationEnded)
        assert a[-1] == b[-1]
    # Every seller line was read, in its seller's voice, and recorded once.
    for nid in voiced:
        stored = await store.read(nid)
        events = [decode_event(r.data) for r in stored]
        lines = {e.message_id: e for e in events if isinstance(e, SellerReplied)}
        assert lines
        assert all(not row.type.startswith("voice.") for row in stored)
        assert audit_stream(nid, stored, expect_ended=True).ok
        recorded = [
            o for o in await load_observations(store, nid) if isinstance(o, VoiceSynthesized)
        ]
        assert sorted(o.message_id for o in recorded) == sorted(lines)
        for obs in recorded:
            assert obs.status == "ok"
            assert obs.engine == "espeak-ng"
            assert obs.voice == cast[lines[obs.message_id].seller]
            path = await audio_for(store, nid, obs.message_id, audio=audio)
            assert path is not None
            assert round(seconds_of(path.read_bytes()), 3) == obs.seconds > 0.3
        assert await audio_for(store, nid, uuid.uuid4(), audio=audio) is None
    assert {o.voice for o, _ in seen if o.agent == "gadgethub"} == {"rachel"}
    assert engine.finished == len(seen) == sum(1 for o, _ in seen if o.status == "ok")


async def test_a_full_queue_drops_lines_instead_of_waiting(
    nats_url: str, pg_store: Store, subject_prefix: str, tmp_path: Path
) -> None:
    _, store = pg_store
    engine = HeldEngine()
    options = VoiceOptions(Synthesizer(engine, AudioStore(tmp_path)), queue=1, workers=1)
    bus = await NatsBus.connect(nats_url, name="voice")
    observer = VoiceObserver(bus, store, Subjects(prefix=subject_prefix), options)
    nid = uuid.uuid4()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(observer.run)
            for i in range(5):  # as the reader gets them, back to back: it never waits
                event = SellerReplied(
                    round=1, message_id=uuid.uuid4(), seller="techmart", text=f"Line {i}."
                )
                data = encode_committed(CommittedEvent(negotiation_id=nid, seq=i + 2, event=event))
                observer._handle("test", data)
            assert (observer.stats.lines, observer.stats.dropped) == (1, 4)
            engine.release.set()
            assert await observer.settle(wait=30)
            tg.cancel_scope.cancel()
    finally:
        await bus.close()
    assert (engine.finished, observer.stats.spoken, observer.stats.recorded) == (1, 1, 1)
    (spoken,) = await load_observations(store, nid)
    assert isinstance(spoken, VoiceSynthesized)
    assert spoken.status == "ok"
