"""Audio of negotiations read aloud, stored by content under the data dir.

A line's audio is kept under the hash of what made it (engine, model, voice and text:
`audio_key`), in `<data dir>/audio/<2 hex>/<hash>.wav`, so the same line in the same voice
is synthesised once however often it is asked for, and a file never changes once
written (writes go to a temporary file renamed into place). The data dir is the embedded
PostgreSQL's parent (`$MAMS_DATA_DIR`, else the user's data dir: `storage/embedded.py`).

Every file is a WAV of 16-bit mono PCM at `AUDIO_RATE`, whatever engine made it, so a
whole negotiation's lines join into one file without resampling (`join_wavs`).

Which message was read in which audio is the log's to say: a `voice.synthesized`
observation in the negotiation's companion stream. `audio_for` answers from it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import wave
from collections.abc import Iterable
from pathlib import Path
from typing import Final
from uuid import UUID

from mams.domain.events import VoiceSynthesized
from mams.storage.embedded import default_data_dir
from mams.storage.eventstore import EventStore
from mams.storage.observations import load_observations

__all__ = [
    "AUDIO_RATE",
    "AudioError",
    "AudioStore",
    "audio_for",
    "audio_key",
    "default_audio_dir",
    "join_wavs",
    "pcm_of",
    "seconds_of",
    "wav_of",
]

AUDIO_RATE: Final = 22_050  # Hz; 16-bit mono
_KEY: Final = re.compile(r"[0-9a-f]{64}")


class AudioError(ValueError):
    """Bytes that are not audio in the store's format."""


def default_audio_dir() -> Path:
    """`<data dir>/audio`: beside the embedded PostgreSQL's data (`$MAMS_DATA_DIR/audio`)."""
    return default_data_dir().parent / "audio"


def audio_key(engine: str, model: str, voice: str, text: str) -> str:
    """The content address of a line: the hash of what makes its audio."""
    material = json.dumps([engine, model, voice, text], ensure_ascii=False)
    return hashlib.sha256(material.encode()).hexdigest()


def wav_of(pcm: bytes, rate: int = AUDIO_RATE) -> bytes:
    """16-bit mono PCM as a WAV file's bytes."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm[: len(pcm) - len(pcm) % 2])
    return out.getvalue()


def pcm_of(wav: bytes) -> bytes:
    """The samples of a WAV in the store's format; AudioError for anything else."""
    try:
        with wave.open(io.BytesIO(wav), "rb") as w:
            shape = (w.getnchannels(), w.getsampwidth(), w.getframerate())
            if shape != (1, 2, AUDIO_RATE):
                raise AudioError(
                    f"expected 16-bit mono at {AUDIO_RATE} Hz, got {shape[0]} channel(s), "
                    f"{8 * shape[1]}-bit at {shape[2]} Hz"
                )
            return w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise AudioError(f"not a WAV file: {exc}") from None


def seconds_of(wav: bytes) -> float:
    """How long a WAV in the store's format plays."""
    return len(pcm_of(wav)) / 2 / AUDIO_RATE


def join_wavs(parts: Iterable[bytes], *, gap: float = 0.4) -> bytes:
    """One WAV of these, in order, with `gap` seconds of silence between them."""
    silence = b"\x00\x00" * int(gap * AUDIO_RATE)
    pcm = silence.join(pcm_of(part) for part in parts)
    return wav_of(pcm)


class AudioStore:
    """Audio files by content address under `root` (default: `default_audio_dir()`)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_audio_dir()

    def path(self, key: str) -> Path:
        """Where the audio of `key` is (or would be) stored."""
        if not _KEY.fullmatch(key):
            raise ValueError(f"not an audio key: {key!r}")
        return self.root / key[:2] / f"{key}.wav"

    def get(self, key: str) -> Path | None:
        """The stored file of `key`, or None."""
        path = self.path(key)
        return path if path.is_file() else None

    def put(self, key: str, wav: bytes) -> Path:
        """Store `wav` under `key` (checked as the store's format first); its path."""
        pcm_of(wav)
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(wav)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


async def audio_for(
    store: EventStore,
    negotiation_id: UUID,
    message_id: UUID,
    *,
    audio: AudioStore | None = None,
) -> Path | None:
    """The audio file of one message of a negotiation, if it was read aloud (the newest
    successful `voice.synthesized` of it in the companion stream) and the file is here."""
    files = audio if audio is not None else AudioStore()
    found = [
        o
        for o in await load_observations(store, negotiation_id)
        if isinstance(o, VoiceSynthesized) and o.message_id == message_id and o.status == "ok"
    ]
    for obs in reversed(found):
        if _KEY.fullmatch(obs.audio):
            path = files.get(obs.audio)
            if path is not None:
                return path
    return None
