"""Seller voices: the one map of the voices MAMS speaks with, and which seller gets which.

A voice has a stable name (what a scenario writes: `voice = "rachel"`) and how each engine
renders it: an ElevenLabs premade voice id, and an espeak-ng voice (language and variant,
pitch, words per minute) for the local engine, so a seller sounds like itself on either.

A seller's default voice comes from its style and handle: each style has a pool of voices
(rude sellers speak faster and lower, sweet ones slower and higher) and the handle picks
one by a stable hash, so the same handle always gets the same voice. In one scenario,
`cast_voices` keeps sellers apart: a seller whose voice an earlier seller already has takes
the next free one of its pool (then of any pool). A voice set in the scenario always wins.
The buyer's lines are read in a neutral voice of their own (`BUYER_VOICE`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Final

import msgspec

from mams.domain.ids import AgentId, AgentIdError

__all__ = [
    "BUYER_VOICE",
    "STYLE_POOLS",
    "VOICES",
    "Voice",
    "cast_voices",
    "check_voice",
    "default_voice",
]


class Voice(msgspec.Struct, frozen=True, kw_only=True):
    """One voice, as each engine renders it."""

    name: str
    elevenlabs_id: str  # an ElevenLabs premade voice
    espeak: str  # espeak-ng's -v: language, then +variant
    pitch: int  # espeak-ng's -p, 0..99
    speed: int  # espeak-ng's -s, words per minute


def _v(name: str, elevenlabs_id: str, espeak: str, pitch: int, speed: int) -> Voice:
    return Voice(name=name, elevenlabs_id=elevenlabs_id, espeak=espeak, pitch=pitch, speed=speed)


VOICES: Final[Mapping[str, Voice]] = {
    v.name: v
    for v in (
        # rude: quick and low
        _v("callum", "N2lVS1w4EtoT3dr4eOWO", "en-gb-scotland+m3", 35, 185),
        _v("brian", "nPczCjzI2devNBz1zQrb", "en-us+m1", 25, 180),
        _v("roger", "CwhRBWXzGAHq8TQ4Fs17", "en-us+m7", 40, 190),
        _v("jessica", "cgSgspJ2msm6clMCkdW9", "en-us+f2", 45, 190),
        _v("alice", "Xb7hH8MSUJpSbSDYk0k2", "en-gb+f3", 50, 185),
        _v("daniel", "onwK4e9ZLuTAKqWW03F9", "en-gb-x-rp+m2", 35, 175),
        # neutral: even
        _v("george", "JBFqnCBsd6RMkjVDRZzb", "en-gb+m4", 45, 165),
        _v("liam", "TX3LPaxmHKxFdv7VOQHJ", "en-us+m2", 50, 170),
        _v("eric", "cjVigY5qzO86Huf0OWal", "en-us+m5", 45, 165),
        _v("sarah", "EXAVITQu4vr4xnAQqYvc", "en-us+f1", 55, 165),
        _v("laura", "FGY2WhTYpPnrIDTdsKH5", "en-us+f5", 60, 170),
        _v("bill", "pqHfZKP75CvOlQylNhV4", "en-us+m6", 30, 160),
        # sweet: slower and higher
        _v("rachel", "21m00Tcm4TlvDq8ikWAM", "en-us+f3", 65, 160),
        _v("matilda", "XrExE9yKIg1WjnnlVkGX", "en-gb+f4", 65, 155),
        _v("lily", "pFZP5JQG7iQjIQuC4Bku", "en-gb-x-rp+f2", 70, 155),
        _v("charlotte", "XB0fDUnXU5powFXDhCwa", "en-gb+f1", 60, 150),
        _v("will", "bIHbv24MWmeRgasZH58o", "en-us+m4", 60, 160),
        _v("chris", "iP95p4xoKVk53GoZ742B", "en-us+m3", 55, 165),
        _v("charlie", "IKne3meq5aSn9XLyUdCD", "en-029+m1", 55, 160),
        # the buyer, and a spare
        _v("river", "SAz9YHcvj6GT2YYXdXww", "en-us", 50, 170),
        _v("adam", "pNInz6obpgDQGcFmaJgB", "en-us+m7", 20, 160),
    )
}

STYLE_POOLS: Final[Mapping[str, tuple[str, ...]]] = {
    "rude": ("callum", "brian", "roger", "jessica", "alice", "daniel"),
    "neutral": ("george", "liam", "eric", "sarah", "laura", "bill"),
    "sweet": ("rachel", "matilda", "lily", "charlotte", "will", "chris", "charlie"),
}

BUYER_VOICE: Final = "river"
_SELLER_VOICES: Final = tuple(n for pool in STYLE_POOLS.values() for n in pool)


def check_voice(raw: object) -> str:
    """A voice name as a scenario may give it; raises ValueError naming the known ones."""
    if isinstance(raw, str) and raw.strip().lower() in VOICES:
        return raw.strip().lower()
    raise ValueError(f"must be one of {', '.join(sorted(VOICES))}, got {raw!r}")


def _agent(handle: str) -> str:
    try:
        return AgentId.from_handle(handle).value
    except AgentIdError:
        return handle.lower()


def _pool(style: str) -> tuple[str, ...]:
    return STYLE_POOLS.get(style, STYLE_POOLS["neutral"])


def _start(style: str, handle: str) -> int:
    digest = hashlib.sha256(_agent(handle).encode()).digest()
    return int.from_bytes(digest[:8], "big") % len(_pool(style))


def default_voice(style: str, handle: str) -> str:
    """The voice a seller of this style and handle speaks with unless told otherwise
    (stable: the same handle always gets the same voice)."""
    return _pool(style)[_start(style, handle)]


def cast_voices(sellers: Iterable[tuple[str, str, str | None]]) -> dict[str, str]:
    """Each seller's voice by agent id, from (handle, style, voice set or None), in order.

    A voice set wins; the others take their default unless an earlier seller has it, then
    the next free voice of their pool, then any free seller voice (with more sellers than
    voices, the default again).
    """
    entries = list(sellers)
    cast: dict[str, str] = {}
    used = {voice for _, _, voice in entries if voice is not None}
    for handle, style, voice in entries:
        agent = _agent(handle)
        if voice is not None:
            cast[agent] = voice
            continue
        pool, start = _pool(style), _start(style, handle)
        ring = [pool[(start + i) % len(pool)] for i in range(len(pool))]
        free = [n for n in (*ring, *_SELLER_VOICES) if n not in used]
        chosen = free[0] if free else ring[0]
        used.add(chosen)
        cast[agent] = chosen
    return cast
