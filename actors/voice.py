"""Seller voices: an observer actor that reads each seller's line aloud, off the critical path.

Like the quality monitor it subscribes to the committed events (`<prefix>.events.>`, an
observer's permission: subscribe only) and writes only to each negotiation's companion
stream, never to the negotiation's. Each `seller.replied` becomes a line in a bounded
queue that workers synthesise; the subscription's reader only enqueues, so a slow or
failing engine never delays a round (a full queue drops the line, counted and logged:
`mams voice` can render it later). An outage (rate limit, 5xx, timeout, connection) is
retried with the one retry policy (`storage/retry.py`), then recorded as failed.

Audio is stored by content (`storage/audio.py`: engine, model, voice and text hashed), so
a line already spoken is never synthesised again, and each line's outcome is a
`voice.synthesized` observation in the companion stream (`audio_for` reads it back).

Engines: ElevenLabs through its official SDK (`elevenlabs`) when ELEVENLABS_API_KEY is
set (`ELEVENLABS_MODEL`, 22.05 kHz PCM), else espeak-ng, a local engine with no network
(Debian's `espeak-ng`). Which voice a seller speaks with is `domain/voices.py`'s.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol
from uuid import UUID

import anyio
import anyio.to_thread
import msgspec
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mams.bus.base import Bus
from mams.bus.subjects import Subjects
from mams.domain.errors import ConfigError, MamsError
from mams.domain.events import NegotiationStarted, SellerReplied, VoiceSynthesized, decode_event
from mams.domain.messages import decode_committed
from mams.domain.voices import BUYER_VOICE, VOICES, Voice, cast_voices
from mams.storage.audio import AudioError, AudioStore, audio_key, seconds_of, wav_of
from mams.storage.errors import StorageError
from mams.storage.eventstore import EventStore
from mams.storage.observations import record_observations
from mams.storage.retry import retrying

if TYPE_CHECKING:
    import httpx

log = structlog.get_logger("mams.voice")

ELEVENLABS_MODEL: Final = "eleven_flash_v2_5"  # the model, chosen here only
ELEVENLABS_FORMAT: Final = "pcm_22050"  # raw 16-bit mono PCM: `storage.audio`'s format
ELEVENLABS_TIMEOUT: Final = 30.0  # seconds for one request
LOCAL_ENGINE: Final = "espeak-ng"
GIVE_UP_AFTER: Final = 20.0  # seconds of retrying an outage before a line is recorded failed


class VoiceConfigError(ConfigError):
    """The engine cannot work as configured (a refused key, no espeak-ng): fix and rerun."""


class TTSError(MamsError):
    """One line could not be synthesised (not worth retrying)."""


class TTSUnavailableError(TTSError):
    """The engine is out for now (rate limit, server error, timeout): retried."""


class TTSEngine(Protocol):
    """Text to speech: a line in a voice, as a WAV in `storage.audio`'s format."""

    name: str
    model: str

    @property
    def label(self) -> str:
        """How a person is told what reads the lines."""
        ...

    def voice_ref(self, voice: Voice) -> str:
        """What this engine is given of the voice (hashed into the audio's address)."""
        ...

    async def synthesize(self, text: str, voice: Voice) -> bytes: ...

    async def aclose(self) -> None: ...


# -- the local engine ------------------------------------------------------------------------
def _espeak_pcm(out: bytes) -> bytes:
    """The samples of espeak-ng's --stdout WAV (its sizes are placeholders on a pipe)."""
    at = out.find(b"data", 12)
    fmt = out.find(b"fmt ", 12)
    if not out.startswith(b"RIFF") or at < 0 or fmt < 0:
        raise TTSError("espeak-ng wrote no WAV")
    channels = int.from_bytes(out[fmt + 10 : fmt + 12], "little")
    rate = int.from_bytes(out[fmt + 12 : fmt + 16], "little")
    bits = int.from_bytes(out[fmt + 22 : fmt + 24], "little")
    if (channels, rate, bits) != (1, 22_050, 16):
        raise TTSError(f"espeak-ng wrote {channels} channel(s), {bits}-bit at {rate} Hz")
    return out[at + 8 :]


class EspeakEngine:
    """espeak-ng, run once per line: local, no network, formant speech."""

    name = LOCAL_ENGINE

    def __init__(self, binary: str | None = None) -> None:
        found = binary or shutil.which("espeak-ng")
        if found is None:
            raise VoiceConfigError(
                "no voice engine: install espeak-ng (apt-get install espeak-ng) for the "
                "local voice, or set ELEVENLABS_API_KEY"
            )
        self.binary = found
        self.model = LOCAL_ENGINE
        try:
            version = subprocess.run(
                [found, "--version"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
            match = re.search(r"\b(\d+\.\d+(?:\.\d+)?)\b", version)
            if match:
                self.model = f"{LOCAL_ENGINE} {match.group(1)}"
        except (OSError, subprocess.SubprocessError) as exc:
            raise VoiceConfigError(f"espeak-ng at {found} does not run: {exc}") from None

    @property
    def label(self) -> str:
        return f"{self.model} (local engine, no network)"

    def voice_ref(self, voice: Voice) -> str:
        return f"{voice.espeak} p{voice.pitch} s{voice.speed}"

    async def synthesize(self, text: str, voice: Voice) -> bytes:
        # The text goes in on stdin: nothing an agent wrote is ever read as an option.
        args = [self.binary, "-b", "1", "-v", voice.espeak, "-p", str(voice.pitch)]
        args += ["-s", str(voice.speed), "--stdout"]
        try:
            done = await anyio.run_process(args, input=text.encode(), check=False)
        except OSError as exc:
            raise TTSError(f"espeak-ng did not start: {exc}") from None
        if done.returncode != 0:
            detail = done.stderr.decode(errors="replace").strip()[:300]
            raise TTSError(f"espeak-ng exited with {done.returncode}: {detail}")
        return wav_of(_espeak_pcm(done.stdout))

    async def aclose(self) -> None:
        return None


# -- ElevenLabs ------------------------------------------------------------------------------
def _detail(body: Any) -> str:
    if isinstance(body, dict):
        inner = body.get("detail", body)
        if isinstance(inner, dict):
            return str(inner.get("message") or inner.get("status") or inner)[:300]
        return str(inner)[:300]
    return str(body)[:300]


class ElevenLabsEngine:
    """ElevenLabs text to speech through its official SDK (one HTTP client, closed by
    `aclose`). The SDK's own retries are off: outages go through `storage.retry`."""

    name = "elevenlabs"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None = None,
        model: str = ELEVENLABS_MODEL,
        timeout: float = ELEVENLABS_TIMEOUT,
    ) -> None:
        import httpx
        from elevenlabs.client import AsyncElevenLabs

        self.model = model
        self._http: httpx.AsyncClient = httpx.AsyncClient(timeout=timeout)
        self._client = AsyncElevenLabs(
            api_key=api_key, base_url=base_url, timeout=timeout, httpx_client=self._http
        )

    @property
    def label(self) -> str:
        return f"ElevenLabs {self.model}"

    def voice_ref(self, voice: Voice) -> str:
        return voice.elevenlabs_id

    async def synthesize(self, text: str, voice: Voice) -> bytes:
        import httpx
        from elevenlabs.core.api_error import ApiError

        chunks: list[bytes] = []
        try:
            async for chunk in self._client.text_to_speech.convert(
                voice.elevenlabs_id,
                text=text,
                model_id=self.model,
                output_format=ELEVENLABS_FORMAT,
                request_options={"max_retries": 0},
            ):
                chunks.append(chunk)
        except ApiError as exc:
            status = exc.status_code or 0
            detail = _detail(exc.body)
            if status in (401, 403):
                raise VoiceConfigError(
                    f"ElevenLabs refused the API key (HTTP {status}: {detail}); check "
                    "ELEVENLABS_API_KEY, or unset it for the local voice (espeak-ng)"
                ) from None
            if status in (408, 409, 429) or status >= 500:
                raise TTSUnavailableError(f"ElevenLabs HTTP {status}: {detail}") from None
            raise TTSError(f"ElevenLabs HTTP {status}: {detail}") from None
        except httpx.TimeoutException:
            raise TTSUnavailableError("ElevenLabs did not answer in time") from None
        except httpx.TransportError as exc:
            raise TTSUnavailableError(f"ElevenLabs unreachable: {exc!r}") from None
        pcm = b"".join(chunks)
        if not pcm:
            raise TTSError("ElevenLabs sent no audio")
        return wav_of(pcm)

    async def aclose(self) -> None:
        await self._http.aclose()


def engine_for(env: Mapping[str, str]) -> TTSEngine:
    """ElevenLabs when ELEVENLABS_API_KEY is set (ELEVENLABS_BASE_URL: another endpoint),
    else espeak-ng (VoiceConfigError when it is not installed)."""
    key = env.get("ELEVENLABS_API_KEY", "").strip()
    if key:
        return ElevenLabsEngine(key, base_url=env.get("ELEVENLABS_BASE_URL") or None)
    return EspeakEngine()


# -- lines and their audio -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Spoken:
    """A line's audio: where it is, how long it plays, and whether it was already stored."""

    key: str
    path: Path
    seconds: float
    cached: bool


@dataclass(slots=True)
class SynthStats:
    syntheses: int = 0
    cache_hits: int = 0


class Synthesizer:
    """An engine over the content-addressed store: a line already stored costs nothing."""

    def __init__(
        self,
        engine: TTSEngine,
        audio: AudioStore,
        *,
        give_up_after: float = GIVE_UP_AFTER,
        max_wait: float = 2.0,
    ) -> None:
        self.engine, self.audio = engine, audio
        self.give_up_after, self.max_wait = give_up_after, max_wait
        self.stats = SynthStats()

    def key(self, text: str, voice: Voice) -> str:
        """The content address of this line in this voice on this engine."""
        return audio_key(self.engine.name, self.engine.model, self.engine.voice_ref(voice), text)

    async def render(self, text: str, voice: Voice) -> Spoken:
        """The line's audio, synthesised unless already stored. Raises TTSError (after
        retrying an outage for `give_up_after` seconds) or VoiceConfigError."""
        key = self.key(text, voice)
        stored = await anyio.to_thread.run_sync(self.audio.get, key)
        if stored is not None:
            self.stats.cache_hits += 1
            wav = await anyio.to_thread.run_sync(stored.read_bytes)
            return Spoken(key, stored, seconds_of(wav), cached=True)

        async def attempt() -> bytes:
            return await self.engine.synthesize(text, voice)

        wav = await retrying(
            attempt,
            event="voice.tts_unavailable",
            on=TTSUnavailableError,
            give_up_after=self.give_up_after,
            max_wait=self.max_wait,
        )
        self.stats.syntheses += 1
        path = await anyio.to_thread.run_sync(self.audio.put, key, wav)
        return Spoken(key, path, seconds_of(wav), cached=False)

    async def aclose(self) -> None:
        await self.engine.aclose()


# -- the observer ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Line:
    """A seller's committed line, waiting to be read."""

    negotiation_id: UUID
    message_id: UUID
    agent: str
    text: str
    seen_at: float  # when its committed event reached the observer (anyio clock)


OnAudio = Callable[[Line, VoiceSynthesized, Spoken | None], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class VoiceOptions:
    """What `run_rooms` starts a voice observer with (`mams run --voice`).

    `voices`: each seller's voice by agent id (the scenario's `cast_voices`); sellers not
    in it get theirs from their room. `on_audio` sees each line's outcome (its audio, or
    None when it failed). `drain`: how long a run waits, once its rooms have ended, for
    lines still queued. `queue`: lines waiting at most; `workers`: lines read at once.
    """

    synthesizer: Synthesizer
    voices: Mapping[str, str] = field(default_factory=dict)
    on_audio: OnAudio | None = None
    drain: float = 30.0
    queue: int = 256
    workers: int = 2


@dataclass(slots=True)
class VoiceStats:
    lines: int = 0
    spoken: int = 0
    failed: int = 0
    dropped: int = 0
    recorded: int = 0


class VoiceObserver:
    """Reads every seller's line on the bus aloud; `run` until cancelled."""

    def __init__(self, bus: Bus, store: EventStore, subjects: Subjects, options: VoiceOptions):
        self.bus, self.store, self.subjects = bus, store, subjects
        self.options = options
        self.synth = options.synthesizer
        self.stats = VoiceStats()
        self._casts: dict[UUID, dict[str, str]] = {}
        self._pending = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._send: MemoryObjectSendStream[Line] | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, signal started, then queue each seller line until cancelled."""
        send, receive = anyio.create_memory_object_stream[Line](self.options.queue)
        sub = await self.bus.subscribe(self.subjects.all_events(), max_pending=1_000_000)
        try:
            async with send, receive, anyio.create_task_group() as tg:
                self._send = send
                for _ in range(max(1, self.options.workers)):
                    tg.start_soon(self._work, receive)
                task_status.started()
                async for msg in sub:
                    self._handle(msg.subject, msg.data)
        finally:
            self._send = None
            with anyio.CancelScope(shield=True):
                await sub.unsubscribe()

    def _handle(self, subject: str, data: bytes) -> None:
        """One delivery: queued if it is a seller's line, never awaited on."""
        try:
            committed = decode_committed(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("voice.bad_event", subject=subject, error=str(exc)[:500])
            return
        event, nid = committed.event, committed.negotiation_id
        if isinstance(event, NegotiationStarted):
            self._casts[nid] = self._cast_of(event)
        elif isinstance(event, SellerReplied) and event.text.strip():
            line = Line(nid, event.message_id, event.seller, event.text, anyio.current_time())
            try:
                if self._send is None:
                    raise anyio.WouldBlock
                self._send.send_nowait(line)
            except anyio.WouldBlock:
                self.stats.dropped += 1
                log.warning("voice.queue_full", negotiation_id=str(nid), queue=self.options.queue)
                return
            self.stats.lines += 1
            if self._pending == 0:
                self._idle = anyio.Event()
            self._pending += 1

    def _cast_of(self, started: NegotiationStarted) -> dict[str, str]:
        given = self.options.voices
        return cast_voices((s.handle, s.style, given.get(s.agent_id)) for s in started.sellers)

    async def _voice_of(self, line: Line) -> Voice:
        cast = self._casts.get(line.negotiation_id)
        if cast is None:  # joined after the room opened: its cast is in its first event
            stored = await self.store.read(line.negotiation_id)
            first = decode_event(stored[0].data) if stored else None
            cast = self._cast_of(first) if isinstance(first, NegotiationStarted) else {}
            self._casts[line.negotiation_id] = cast
        name = cast.get(line.agent) or self.options.voices.get(line.agent)
        if name is None:
            name = cast_voices([(line.agent, "neutral", None)])[line.agent]
        return VOICES[name]

    async def _work(self, lines: MemoryObjectReceiveStream[Line]) -> None:
        async for line in lines:
            try:
                await self._speak(line)
            finally:
                self._pending -= 1
                if self._pending == 0:
                    self._idle.set()

    async def _speak(self, line: Line) -> None:
        engine = self.synth.engine
        try:
            voice = await self._voice_of(line)
        except (StorageError, IndexError, KeyError) as exc:
            log.warning(
                "voice.cast_unknown", negotiation_id=str(line.negotiation_id), error=repr(exc)
            )
            voice = VOICES[BUYER_VOICE]
        spoken: Spoken | None = None
        said: dict[str, Any] = {
            "negotiation_id": line.negotiation_id,
            "message_id": line.message_id,
            "agent": line.agent,
            "voice": voice.name,
            "engine": engine.name,
            "model": engine.model,
        }
        try:
            spoken = await self.synth.render(line.text, voice)
            obs = VoiceSynthesized(**said, audio=spoken.key, seconds=round(spoken.seconds, 3))
            self.stats.spoken += 1
        except (TTSError, VoiceConfigError, AudioError, OSError) as exc:
            self.stats.failed += 1
            log.warning(
                "voice.failed",
                negotiation_id=str(line.negotiation_id),
                message_id=str(line.message_id),
                error=str(exc)[:500],
            )
            obs = VoiceSynthesized(**said, status="failed", error=str(exc)[:500])
        try:
            self.stats.recorded += await record_observations(self.store, line.negotiation_id, [obs])
        except StorageError as exc:
            log.warning(
                "voice.record_failed", negotiation_id=str(line.negotiation_id), error=str(exc)
            )
        if self.options.on_audio is not None:
            try:
                maybe = self.options.on_audio(line, obs, spoken)
                if maybe is not None:
                    await maybe
            except Exception as exc:  # a player's failure must not stop the voices
                log.warning("voice.on_audio_failed", error=repr(exc))

    async def settle(self, *, wait: float) -> bool:
        """Wait up to `wait` seconds for every queued line to be read; whether all were."""
        with anyio.move_on_after(wait):
            await self._idle.wait()
        return self._pending == 0
