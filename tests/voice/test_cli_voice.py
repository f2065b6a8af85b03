"""`mams run --voice` and `mams voice` as subprocesses, over real NATS and PostgreSQL.

The run reads each seller line with the local engine (no key set) and says so and where
the audio goes; `mams voice` then joins the whole negotiation into one WAV, the sellers'
lines coming from the audio store the run filled.
"""

from __future__ import annotations

import io
import wave
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.test_cli import (
    SCENARIO,
    Cli,
    base_env,
    flat,
    mams,
    ok,
    one_json_object,
    schema_dsn,
)
from tests.voice.fake_elevenlabs import FakeElevenLabs

pytestmark = pytest.mark.e2e


@pytest.fixture
def cli(tmp_path: Path, pg_schema: str, database_url: str, nats_url: str) -> Cli:
    env = base_env(tmp_path / "mams-data")
    env.pop("ELEVENLABS_API_KEY", None)  # the local engine
    env["DATABASE_URL"] = schema_dsn(database_url, pg_schema)
    env["NATS_URL"] = nats_url
    return Cli(env, tmp_path, database_url, pg_schema)


async def test_run_with_voice_then_render_the_negotiation(cli: Cli, tmp_path: Path) -> None:
    scenario = tmp_path / "phone.toml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    run = ok(cli("run", str(scenario), "--voice", "--seed", "3", "--item", "USB-C cable", "--json"))
    said = flat(run.stderr)
    assert "voice: espeak-ng" in said
    assert "(local engine, no network)" in said
    assert "playing each seller's line" in said or "written under" in said
    (room,) = one_json_object(run.stdout)["negotiations"]
    nid = room["negotiation_id"]

    conn = await asyncpg.connect(cli.database_url, server_settings={"search_path": cli.schema})
    try:
        lines = await conn.fetchval(
            "SELECT count(*) FROM events WHERE stream_id = $1 AND type = 'seller.replied'",
            nid,
        )
        messages = await conn.fetchval(
            "SELECT count(*) FROM events WHERE stream_id = $1 AND type IN "
            "('seller.replied', 'buyer.said', 'deal.closed', 'buyer.walked_away')",
            nid,
        )
        voiced = await conn.fetchval(
            "SELECT count(*) FROM events WHERE type = 'voice.synthesized'"
            " AND data->>'negotiation_id' = $1 AND data->>'status' = 'ok'",
            nid,
        )
    finally:
        await conn.close()
    assert lines > 0
    assert voiced == lines, "every seller line was read and recorded in the companion stream"
    assert f"{lines} line(s) synthesised, 0 from the audio store, 0 failed" in said

    target = tmp_path / "out.wav"
    rendered = ok(cli("voice", nid[:8], "-o", str(target), "--json"))
    doc = one_json_object(rendered.stdout)
    assert doc["lines"] == messages
    assert doc["engine"] == "espeak-ng"
    assert f"({lines} from the audio store)" in flat(rendered.stderr)
    with wave.open(io.BytesIO(target.read_bytes())) as w:
        seconds = w.getnframes() / w.getframerate()
    assert abs(Decimal(str(seconds)) - doc["seconds"]) < Decimal("0.01")
    assert doc["seconds"] > messages * 0.5

    # With a key, ElevenLabs reads the same negotiation (a loopback server speaking its API).
    with FakeElevenLabs() as fake:
        env = {**cli.env, "ELEVENLABS_API_KEY": "k", "ELEVENLABS_BASE_URL": fake.url}
        again = ok(mams("voice", nid, "-o", str(target), "--json", env=env, cwd=tmp_path))
    doc = one_json_object(again.stdout)
    assert (doc["engine"], doc["model"]) == ("elevenlabs", "eleven_flash_v2_5")
    assert "voice: ElevenLabs eleven_flash_v2_5" in flat(again.stderr)
    assert len(fake.requests) == messages  # nothing of espeak-ng's audio is reused
    assert {r.headers["xi-api-key"] for r in fake.requests} == {"k"}


def test_voice_is_not_for_processes(cli: Cli, tmp_path: Path) -> None:
    scenario = tmp_path / "phone.toml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    proc = cli("run", str(scenario), "--voice", "--processes")
    assert proc.returncode == 2
    assert "--voice reads the rooms of this process: not with --processes" in flat(proc.stderr)
