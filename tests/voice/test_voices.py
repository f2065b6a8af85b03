"""Which seller speaks with which voice (domain/voices.py), and the scenario's `voice`."""

from __future__ import annotations

import pytest

from mams.domain.config import ScenarioError, parse_scenario, parse_scenario_text, scenario_to_raw
from mams.domain.voices import (
    BUYER_VOICE,
    STYLE_POOLS,
    VOICES,
    cast_voices,
    check_voice,
    default_voice,
)
from tests.integration.scenarios import PHONE


def test_every_voice_of_a_pool_exists_and_pools_do_not_share() -> None:
    pooled = [v for pool in STYLE_POOLS.values() for v in pool]
    assert set(pooled) <= set(VOICES)
    assert len(pooled) == len(set(pooled))
    assert BUYER_VOICE in VOICES
    assert BUYER_VOICE not in pooled
    assert len({v.elevenlabs_id for v in VOICES.values()}) == len(VOICES)
    assert len({(v.espeak, v.pitch, v.speed) for v in VOICES.values()}) == len(VOICES)


def test_the_default_voice_is_stable_and_from_the_style_pool() -> None:
    for style, pool in STYLE_POOLS.items():
        for handle in ("@TechMart", "@GadgetHub", "@QuickTech", "@A", "@zz_9"):
            voice = default_voice(style, handle)
            assert voice in pool
            assert default_voice(style, handle) == voice
            assert default_voice(style, handle.lower()) == voice  # the handle's agent id
    # Pinned: the same handle gets the same voice in every process and release.
    assert default_voice("rude", "@TechMart") == "alice"
    assert default_voice("sweet", "@QuickTech") == "matilda"


def test_sellers_of_one_scenario_get_voices_of_their_own() -> None:
    sellers = [(f"@Shop{i}", "rude", None) for i in range(10)]
    cast = cast_voices(sellers)
    assert len(set(cast.values())) == 10
    assert all(v in STYLE_POOLS["rude"] for v in list(cast.values())[:6])  # the pool first
    # A voice set wins, and the defaults keep away from it.
    chosen = cast_voices(
        [("@A", "neutral", None), ("@B", "neutral", default_voice("neutral", "@A"))]
    )
    assert chosen["b"] == default_voice("neutral", "@A") != chosen["a"]
    # More sellers than voices: every seller still has one.
    many = cast_voices((f"@S{i}", "sweet", None) for i in range(40))
    assert len(many) == 40
    assert set(many.values()) <= set(VOICES)


def test_a_scenario_may_set_a_seller_voice() -> None:
    text = PHONE.replace('style = "neutral"', 'style = "neutral"\nvoice = "Rachel"', 1)
    scenario = parse_scenario_text(text, fmt="toml")
    voices = {s.agent_id: s.voice for s in scenario.sellers}
    assert voices == {"techmart": None, "gadgethub": "rachel", "quicktech": None}
    raw = scenario_to_raw(scenario)
    assert "voice" not in raw["sellers"][0]
    assert raw["sellers"][1]["voice"] == "rachel"
    assert parse_scenario(raw) == scenario


def test_an_unknown_voice_is_rejected_with_its_path() -> None:
    text = PHONE.replace('style = "neutral"', 'style = "neutral"\nvoice = "hal9000"', 1)
    with pytest.raises(ScenarioError) as caught:
        parse_scenario_text(text, fmt="toml")
    (problem,) = caught.value.problems
    assert problem.path == "sellers[1].voice"
    assert problem.message.startswith("must be one of adam, alice, bill")
    assert "'hal9000'" in problem.message
    with pytest.raises(ValueError, match="must be one of"):
        check_voice(3)
