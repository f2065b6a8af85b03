"""ElevenLabs through its real SDK, against a loopback server speaking its HTTP API.

What goes out (the voice id in the path, the model, the text, the output format, the
key), what comes back (PCM wrapped as the store's WAV), and the failures: a refused key is
a clear configuration error at once, a rate limit is retried, and a server that never
answers is retried, then the line is recorded as failed in the companion stream.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import asyncpg
import pytest

from mams.actors.voice import (
    ELEVENLABS_FORMAT,
    ELEVENLABS_MODEL,
    ElevenLabsEngine,
    Synthesizer,
    VoiceConfigError,
    VoiceObserver,
    VoiceOptions,
    engine_for,
)
from mams.bus.nats import NatsBus
from mams.bus.subjects import Subjects
from mams.domain.events import SellerReplied, VoiceSynthesized, observation_stream_id
from mams.domain.messages import CommittedEvent, encode_committed
from mams.domain.voices import VOICES
from mams.storage.audio import AudioStore, seconds_of
from mams.storage.eventstore import PostgresEventStore
from mams.storage.observations import load_observations
from tests.voice.fake_elevenlabs import FakeElevenLabs, Reply, audio, error

LINE = "Twelve dollars, and that is my best price."


def _engine(fake: FakeElevenLabs, timeout: float = 5.0) -> ElevenLabsEngine:
    return ElevenLabsEngine("test-key", base_url=fake.url, timeout=timeout)


async def test_a_line_goes_out_as_elevenlabs_expects_it_and_comes_back_as_wav(
    tmp_path: Path,
) -> None:
    with FakeElevenLabs() as fake:
        fake.queue(audio(0.75))
        engine = _engine(fake)
        try:
            wav = await engine.synthesize(LINE, VOICES["rachel"])
        finally:
            await engine.aclose()
    (request,) = fake.requests
    assert request.path == f"/v1/text-to-speech/{VOICES['rachel'].elevenlabs_id}"
    assert request.query["output_format"] == [ELEVENLABS_FORMAT]
    assert request.body["text"] == LINE
    assert request.body["model_id"] == ELEVENLABS_MODEL == "eleven_flash_v2_5"
    assert request.headers["xi-api-key"] == "test-key"
    assert seconds_of(wav) == pytest.approx(0.75, abs=0.001)


async def test_the_key_in_the_environment_picks_elevenlabs() -> None:
    with FakeElevenLabs() as fake:
        engine = engine_for({"ELEVENLABS_API_KEY": "k2", "ELEVENLABS_BASE_URL": fake.url})
        try:
            assert engine.name == "elevenlabs"
            assert engine.label == f"ElevenLabs {ELEVENLABS_MODEL}"
            await engine.synthesize("hello", VOICES["george"])
        finally:
            await engine.aclose()
    assert fake.requests[0].headers["xi-api-key"] == "k2"
    assert fake.requests[0].path.endswith(VOICES["george"].elevenlabs_id)


async def test_a_refused_key_is_a_clear_error_and_not_retried(tmp_path: Path) -> None:
    with FakeElevenLabs() as fake:
        fake.default = error(401, "Invalid API key")
        synth = Synthesizer(_engine(fake), AudioStore(tmp_path), give_up_after=5)
        try:
            with pytest.raises(VoiceConfigError) as caught:
                await synth.render(LINE, VOICES["rachel"])
        finally:
            await synth.aclose()
    assert len(fake.requests) == 1
    message = str(caught.value)
    assert "ElevenLabs refused the API key (HTTP 401: Invalid API key)" in message
    assert "ELEVENLABS_API_KEY" in message


async def test_a_rate_limit_is_retried_then_the_line_is_stored(tmp_path: Path) -> None:
    with FakeElevenLabs() as fake:
        fake.queue(error(429, "too many requests"), error(429, "too many requests"), audio(0.5))
        synth = Synthesizer(_engine(fake), AudioStore(tmp_path), give_up_after=10)
        try:
            spoken = await synth.render(LINE, VOICES["rachel"])
            again = await synth.render(LINE, VOICES["rachel"])
        finally:
            await synth.aclose()
    assert len(fake.requests) == 3  # two refusals, then the audio; the repeat is a cache hit
    assert not spoken.cached
    assert again.cached
    assert again.path == spoken.path
    assert seconds_of(spoken.path.read_bytes()) == pytest.approx(0.5, abs=0.001)


async def test_a_server_that_never_answers_is_retried_then_recorded_as_failed(
    tmp_path: Path,
    nats_url: str,
    pg_store: tuple[asyncpg.Pool, PostgresEventStore],
    subject_prefix: str,
) -> None:
    _, store = pg_store
    subjects = Subjects(prefix=subject_prefix)
    nid, message_id = uuid.uuid4(), uuid.uuid4()
    outcomes: list[VoiceSynthesized] = []
    told = anyio.Event()

    def on_audio(line: object, outcome: VoiceSynthesized, spoken: object) -> None:
        outcomes.append(outcome)
        told.set()

    with FakeElevenLabs() as fake:
        fake.default = Reply(delay=30.0)  # longer than the client waits
        synth = Synthesizer(_engine(fake, timeout=0.2), AudioStore(tmp_path), give_up_after=0.5)
        options = VoiceOptions(synth, voices={"techmart": "callum"}, on_audio=on_audio)
        bus = await NatsBus.connect(nats_url, name="voice")
        publisher = await NatsBus.connect(nats_url, name="publisher")
        try:
            observer = VoiceObserver(bus, store, subjects, options)
            async with anyio.create_task_group() as tg:
                await tg.start(observer.run)
                event = SellerReplied(round=1, message_id=message_id, seller="techmart", text=LINE)
                committed = CommittedEvent(negotiation_id=nid, seq=3, event=event)
                await publisher.publish(subjects.events(nid), encode_committed(committed))
                with anyio.fail_after(30):
                    await told.wait()
                tg.cancel_scope.cancel()
        finally:
            await bus.close()
            await publisher.close()
            await synth.aclose()
    assert len(fake.requests) >= 2, "a timeout is retried"
    (failed,) = outcomes
    assert failed.status == "failed"
    assert failed.audio == ""
    assert "did not answer in time" in failed.error
    assert (failed.voice, failed.engine, failed.model) == ("callum", "elevenlabs", ELEVENLABS_MODEL)
    assert await load_observations(store, nid) == [failed]
    assert (await store.read(observation_stream_id(nid)))[0].type == "voice.synthesized"
    assert await store.read(nid) == []  # never in the negotiation's own stream
