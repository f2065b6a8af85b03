"""`mams serve --voice`: a person's message is answered with each seller reply's
audio_url, and that URL serves the reply read aloud (espeak-ng here: no key set) once it
is made, off the round's path; a reply of another room, or a made-up id, is a 404."""

from __future__ import annotations

import io
import wave

import anyio
import httpx
import pytest

from tests.api.conftest import serve
from tests.api.test_flow import NEEDS, SELLERS, ok
from tests.processes.helpers import Cast

pytestmark = pytest.mark.e2e


async def test_replies_carry_an_audio_url_that_serves_them_read_aloud(procs: Cast) -> None:
    base = await serve(procs, "--voice")
    async with httpx.AsyncClient(base_url=base, timeout=60) as api:
        sid = ok(await api.post("/api/sessions", json={"description": "voices"}), 201)
        sid = sid["session_id"]
        ok(await api.post(f"/api/sessions/{sid}/buyer-config", json=NEEDS))
        voiced = {**SELLERS[0], "voice": "rachel"}
        ok(await api.post(f"/api/sessions/{sid}/sellers", json=voiced), 201)
        ok(await api.post(f"/api/sessions/{sid}/sellers", json=SELLERS[1]), 201)
        start = {"session_id": sid, "item_name": "USB-C cable", "buyer": "human", "seed": 1}
        nid = ok(await api.post("/api/negotiations/start", json=start), 201)["negotiation_id"]
        said = ok(await api.post(f"/api/negotiations/{nid}/message", json={"text": "Price?"}))
        replies = said["seller_responses"]
        assert len(replies) == 2
        for reply in replies:
            assert reply["audio_url"] == f"/api/negotiations/{nid}/audio/{reply['message_id']}"
            # Read aloud a moment after it was said: ask again as Retry-After says, bounded.
            with anyio.fail_after(30):
                while (got := await api.get(reply["audio_url"])).status_code == 404:
                    assert "no audio yet" in got.json()["error"]
                    await anyio.sleep(float(got.headers["retry-after"]) / 10)
            assert got.status_code == 200, got.text
            assert got.headers["content-type"] == "audio/wav"
            with wave.open(io.BytesIO(got.content)) as audio:
                seconds = audio.getnframes() / audio.getframerate()
            assert seconds > 0.3
        missing = await api.get(f"/api/negotiations/{nid}/audio/{sid}")
        assert missing.status_code == 404
        assert "no seller reply" in missing.json()["error"]
