"""The local engine (espeak-ng, no network) makes real speech, and the store keeps it once.

Its output is checked as audio: it decodes with the standard library's `wave`, lasts in
proportion to the text, and is not silence. A line already stored is never synthesised
again, and the store's address changes with the voice, the model and the text.
"""

from __future__ import annotations

import array
import io
import math
import wave
from pathlib import Path

import pytest

from mams.actors.voice import EspeakEngine, Synthesizer, engine_for
from mams.domain.voices import VOICES, Voice
from mams.storage.audio import AUDIO_RATE, AudioStore, audio_key, join_wavs, seconds_of

SHORT = "Twelve dollars."
LONG = (
    "Twelve dollars is the lowest I can go on this case, and I only offer it because you "
    "are buying two of them today. The shipping is free, the colour is your choice, and "
    "the warranty covers a full year of drops, scratches and the odd coffee spill."
)


def _decoded(wav: bytes) -> tuple[float, float]:
    """(seconds, RMS of the samples as a fraction of full scale), read with `wave`."""
    with wave.open(io.BytesIO(wav), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, AUDIO_RATE)
        frames = w.readframes(w.getnframes())
        seconds = w.getnframes() / w.getframerate()
    samples = array.array("h", frames)
    rms = math.sqrt(sum(s * s for s in samples) / max(1, len(samples))) / 32768
    return seconds, rms


async def test_espeak_speaks_in_proportion_to_the_text_and_not_silence() -> None:
    engine = EspeakEngine()
    assert engine.label.startswith("espeak-ng ")
    assert "local engine, no network" in engine.label
    voice = VOICES["rachel"]
    short_s, short_rms = _decoded(await engine.synthesize(SHORT, voice))
    long_s, long_rms = _decoded(await engine.synthesize(LONG, voice))
    assert 0.3 < short_s < 5, short_s
    assert short_rms > 0.01, "speech, not silence"
    assert long_rms > 0.01, "speech, not silence"
    # Duration follows the text's length (words at the voice's rate), within a wide band.
    ratio = long_s / short_s
    words = len(LONG.split()) / len(SHORT.split())
    assert words / 4 < ratio < words * 2, (ratio, words)
    per_word = long_s / len(LONG.split())
    assert 60 / voice.speed / 2 < per_word < 60 / voice.speed * 2, per_word


async def test_voices_sound_different_on_the_local_engine() -> None:
    engine = EspeakEngine()
    rude = await engine.synthesize(SHORT, VOICES["roger"])  # 190 wpm
    sweet = await engine.synthesize(SHORT, VOICES["charlotte"])  # 150 wpm
    assert rude != sweet
    assert seconds_of(rude) < seconds_of(sweet)


async def test_text_starting_like_an_option_is_read_not_obeyed() -> None:
    wav = await EspeakEngine().synthesize("--version -w /tmp/x.wav", VOICES["george"])
    seconds, rms = _decoded(wav)
    assert seconds > 0.5
    assert rms > 0.01


def test_without_a_key_the_local_engine_reads() -> None:
    assert engine_for({}).name == "espeak-ng"
    assert engine_for({"ELEVENLABS_API_KEY": "  "}).name == "espeak-ng"


class _Counting(EspeakEngine):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def synthesize(self, text: str, voice: Voice) -> bytes:
        self.calls += 1
        return await super().synthesize(text, voice)


async def test_a_line_already_stored_is_not_synthesised_again(tmp_path: Path) -> None:
    engine = _Counting()
    synth = Synthesizer(engine, AudioStore(tmp_path))
    first = await synth.render(SHORT, VOICES["lily"])
    second = await synth.render(SHORT, VOICES["lily"])
    assert engine.calls == 1
    assert synth.stats.syntheses == 1
    assert synth.stats.cache_hits == 1
    assert not first.cached
    assert second.cached
    assert second.path == first.path
    assert second.seconds == first.seconds
    # A second synthesizer on the same directory (another process, a later run) too.
    again = await Synthesizer(engine, AudioStore(tmp_path)).render(SHORT, VOICES["lily"])
    assert again.cached
    assert engine.calls == 1
    # Another voice or another text is another address.
    await synth.render(SHORT, VOICES["will"])
    await synth.render(SHORT + "!", VOICES["lily"])
    assert engine.calls == 3
    assert first.path == tmp_path / first.key[:2] / f"{first.key}.wav"
    assert first.key == audio_key(
        "espeak-ng", engine.model, engine.voice_ref(VOICES["lily"]), SHORT
    )
    assert len({audio_key("e", "m", "v", "t"), audio_key("e", "m2", "v", "t")}) == 2


async def test_lines_join_into_one_file_with_silence_between(tmp_path: Path) -> None:
    engine = EspeakEngine()
    a = await engine.synthesize(SHORT, VOICES["rachel"])
    b = await engine.synthesize(SHORT, VOICES["callum"])
    joined = join_wavs([a, b], gap=0.5)
    assert seconds_of(joined) == pytest.approx(seconds_of(a) + seconds_of(b) + 0.5, abs=0.001)
