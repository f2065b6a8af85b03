"""Seller voices from the command line: `mams voice` and what `mams run --voice` starts.

`mams voice NEGOTIATION_ID [-o FILE]` reads a stored negotiation's lines aloud into one
WAV file: each seller in its voice (the session's scenario says which: `domain/voices.py`),
the buyer in a neutral one, with silence between lines. Lines already spoken (live, or by
an earlier `mams voice`) come from the audio store; the sellers' lines are recorded as
`voice.synthesized` in the companion stream, as the live observer records them.

`mams run --voice` starts the voice observer (`actors/voice.py`) with the run (`speaking`):
each seller's line is played as it arrives when this machine has an audio output (paplay
with a PulseAudio server, or aplay with a sound card), and otherwise only written to the
audio store, which the run says. ElevenLabs reads when ELEVENLABS_API_KEY is set, else the
local espeak-ng; the run says which.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream
from rich.console import Console

from mams.cli_render import untrusted
from mams.domain.config import Scenario
from mams.domain.errors import MamsError
from mams.domain.events import (
    BuyerSaid,
    BuyerWalkedAway,
    DealClosed,
    NegotiationStarted,
    SellerReplied,
    VoiceSynthesized,
    decode_event,
)
from mams.domain.voices import BUYER_VOICE, VOICES, cast_voices

if TYPE_CHECKING:  # the engines and the store are imported by the commands that use them
    from mams.actors.voice import Line, Spoken, TTSEngine, VoiceOptions

GAP_SECONDS = 0.4  # silence between two lines of a rendered negotiation
PLAY_QUEUE = 64  # lines waiting to be played at most; beyond, a line is only written


def add_parser(sub: Any) -> None:
    """The voice subcommand."""
    p = sub.add_parser(
        "voice",
        help="read a negotiation aloud into one WAV file (each seller in its voice)",
    )
    p.add_argument("negotiation_id", help="negotiation id (or its first characters)")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="the WAV file to write (default: negotiation-<id>.wav here)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def check_engine(env: Mapping[str, str]) -> None:
    """Fail fast (VoiceConfigError, exit 2) when no engine can read: before a run starts."""
    if not env.get("ELEVENLABS_API_KEY", "").strip():
        from mams.actors.voice import engine_for

        engine_for(env)  # espeak-ng must be installed


def scenario_voices(
    scenario: Scenario | None, started: NegotiationStarted | None = None
) -> dict[str, str]:
    """Each seller's voice by agent id: the scenario's cast (its `voice` fields and its
    sellers kept apart), else the room's own."""
    if scenario is not None:
        return cast_voices((s.handle, s.style, s.voice) for s in scenario.sellers)
    sellers = started.sellers if started is not None else ()
    return cast_voices((s.handle, s.style, None) for s in sellers)


# -- mams voice ------------------------------------------------------------------------------
async def cmd_voice(args: argparse.Namespace, out: Console) -> int:
    from mams.actors.voice import Synthesizer, engine_for
    from mams.audit import resolve_negotiation
    from mams.infra import servers
    from mams.storage.audio import AudioStore, join_wavs, seconds_of
    from mams.storage.observations import record_observations
    from mams.storage.readmodels import load_session

    engine = engine_for(os.environ)
    synth = Synthesizer(engine, AudioStore())
    try:
        async with servers(need_bus=False) as srv:
            async with srv.pool.acquire() as conn:
                nid = await resolve_negotiation(conn, args.negotiation_id)
                events = [decode_event(row.data) for row in await srv.store.read(nid)]
                if not events or not isinstance(events[0], NegotiationStarted):
                    raise MamsError(f"negotiation {nid} has no stored opening")
                started = events[0]
                scenario = await load_session(conn, started.session_id)
            voices = scenario_voices(scenario, started)
            names = {s.agent_id: s.handle for s in started.sellers}
            out.print(f"[dim]voice:[/dim] {engine.label}")
            parts: list[bytes] = []
            spoken_lines: list[VoiceSynthesized] = []
            cached = 0
            for event in events:
                agent, text = _speaker(event)
                if agent is None or not text.strip():
                    continue
                voice = VOICES[voices.get(agent, BUYER_VOICE) if agent else BUYER_VOICE]
                spoken = await synth.render(text, voice)
                cached += spoken.cached
                parts.append(await anyio.to_thread.run_sync(spoken.path.read_bytes))
                if isinstance(event, SellerReplied):
                    spoken_lines.append(_observed(nid, event, voice.name, engine, spoken))
            if spoken_lines:
                await record_observations(srv.store, nid, spoken_lines)
    finally:
        await synth.aclose()
    target = Path(args.output) if args.output else Path(f"negotiation-{nid}.wav")
    joined = join_wavs(parts, gap=GAP_SECONDS)
    await anyio.to_thread.run_sync(target.write_bytes, joined)
    seconds = seconds_of(joined)
    cast = ", ".join(f"{untrusted(names[a])} {v}" for a, v in voices.items() if a in names)
    out.print(
        f"wrote {untrusted(str(target))}: {len(parts)} lines, {seconds:.1f} s "
        f"({cached} from the audio store)\n[dim]voices:[/dim] {cast}; the buyer {BUYER_VOICE}"
    )
    if args.json:
        import sys

        sys.stdout.write(
            msgspec.json.encode(
                {
                    "negotiation_id": str(nid),
                    "file": str(target),
                    "lines": len(parts),
                    "seconds": round(seconds, 3),
                    "engine": engine.name,
                    "model": engine.model,
                    "voices": {names[a]: v for a, v in voices.items() if a in names},
                    "buyer_voice": BUYER_VOICE,
                }
            ).decode()
            + "\n"
        )
    return 0


def _speaker(event: object) -> tuple[str | None, str]:
    """(agent id, or "" for the buyer; None: no line) and the text of a message event."""
    if isinstance(event, SellerReplied):
        return event.seller, event.text
    if isinstance(event, BuyerSaid | DealClosed | BuyerWalkedAway):
        return "", event.text
    return None, ""


def _observed(
    nid: UUID, event: SellerReplied, voice: str, engine: TTSEngine, spoken: Spoken
) -> VoiceSynthesized:
    return VoiceSynthesized(
        negotiation_id=nid,
        message_id=event.message_id,
        agent=event.seller,
        voice=voice,
        engine=engine.name,
        model=engine.model,
        audio=spoken.key,
        seconds=round(spoken.seconds, 3),
    )


# -- mams run --voice ------------------------------------------------------------------------
def audio_player(env: Mapping[str, str] | None = None) -> list[str] | None:
    """The command that plays a WAV here, or None when this machine has no audio output:
    paplay with a PulseAudio (or PipeWire) server answering, else aplay with a sound card."""
    environ = os.environ if env is None else env
    paplay, pactl = shutil.which("paplay"), shutil.which("pactl")
    if paplay and pactl and _succeeds([pactl, "info"], environ):
        return [paplay]
    aplay = shutil.which("aplay")
    if aplay:
        try:
            cards = subprocess.run(
                [aplay, "-l"], capture_output=True, text=True, timeout=5, check=False, env=environ
            )
        except (OSError, subprocess.SubprocessError):
            return None
        if cards.returncode == 0 and "card " in cards.stdout:
            return [aplay, "-q"]
    return None


def _succeeds(args: list[str], env: Mapping[str, str]) -> bool:
    try:
        done = subprocess.run(args, capture_output=True, timeout=5, check=False, env=dict(env))
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@asynccontextmanager
async def speaking(
    out: Console, scenario: Scenario, *, enabled: bool
) -> AsyncIterator[VoiceOptions | None]:
    """For `mams run --voice`: the voice observer's options (None without --voice), a
    player while the run lasts when there is an audio output, and a summary at the end."""
    if not enabled:
        yield None
        return
    from mams.actors.voice import Synthesizer, VoiceOptions, engine_for
    from mams.storage.audio import AudioStore

    engine = engine_for(os.environ)
    audio = AudioStore()
    synth = Synthesizer(engine, audio)
    player = await anyio.to_thread.run_sync(audio_player)
    if player:
        where = f"playing each seller's line as it arrives ({Path(player[0]).name})"
    else:
        where = f"no audio output here: each seller's line is written under {audio.root}"
    out.print(f"[dim]voice:[/dim] {engine.label}; {where}")
    failures: list[str] = []
    send, receive = anyio.create_memory_object_stream[Path](PLAY_QUEUE)

    def on_audio(line: Line, outcome: VoiceSynthesized, spoken: Spoken | None) -> None:
        if spoken is None:
            if not failures:  # once: the rest say the same
                out.print(f"[yellow]voice failed:[/yellow] {untrusted(outcome.error)}")
            failures.append(outcome.error)
        elif player:
            # A long backlog is not worth hearing late: the file is kept all the same.
            with contextlib.suppress(anyio.WouldBlock):
                send.send_nowait(spoken.path)

    options = VoiceOptions(synth, voices=scenario_voices(scenario), on_audio=on_audio)
    try:
        async with anyio.create_task_group() as tg:
            if player:
                tg.start_soon(_play, player, receive)
            try:
                yield options
            finally:
                send.close()
                if not player:
                    receive.close()
    finally:
        await synth.aclose()
        stats = synth.stats
        out.print(
            f"[dim]voice:[/dim] {stats.syntheses} line(s) synthesised, {stats.cache_hits} from "
            f"the audio store, {len(failures)} failed; one negotiation as one file: "
            "mams voice NEGOTIATION_ID"
        )


async def _play(player: list[str], paths: MemoryObjectReceiveStream[Path]) -> None:
    async with paths:
        async for path in paths:
            try:
                await anyio.run_process([*player, str(path)], check=False)
            except OSError:
                return  # the player went away: the files are still written
