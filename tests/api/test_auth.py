"""Who may do what on the HTTP API: the operator's token, the tokens it mints (stored as
hashes only), a non-loopback bind, request size limits and rate limits per token. Against
`mams serve` as a real process, with real NATS and PostgreSQL."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from mams.api.bodies import MAX_BODY
from tests.api.conftest import serve
from tests.api.test_flow import NEEDS, SELLERS, ok
from tests.processes.helpers import Cast

pytestmark = pytest.mark.e2e


def token_file(directory: Path) -> tuple[str, Path]:
    token = secrets.token_urlsafe(32)
    path = directory / "api-token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token, path


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def operator(procs: Cast, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a `mams serve` with an operator token, sending that token."""
    token, path = token_file(tmp_path)
    base = await serve(procs, "--token-file", str(path))
    async with httpx.AsyncClient(base_url=base, timeout=60, headers=bearer(token)) as client:
        yield client


async def session(api: httpx.AsyncClient) -> str:
    """A session with the buyer's needs and three sellers."""
    sid = ok(await api.post("/api/sessions", json={"description": "auth"}), 201)["session_id"]
    assert isinstance(sid, str)
    ok(await api.post(f"/api/sessions/{sid}/buyer-config", json=NEEDS))
    for seller in SELLERS:
        ok(await api.post(f"/api/sessions/{sid}/sellers", json=seller), 201)
    return sid


async def mint(api: httpx.AsyncClient, sid: str | None, **body: Any) -> dict[str, Any]:
    path = f"/api/sessions/{sid}/tokens" if sid else "/api/tokens"
    return ok(await api.post(path, json=body), 201)


async def test_a_server_with_a_token_refuses_every_request_without_it(
    operator: httpx.AsyncClient,
) -> None:
    base = str(operator.base_url)
    async with httpx.AsyncClient(base_url=base, timeout=60) as anyone:
        for headers in ({}, bearer("not-the-token"), {"Authorization": "Basic b3A6cHc="}):
            for method, path in (
                ("GET", "/api/sessions"),
                ("POST", "/api/sessions"),
                ("GET", "/api/openapi.json"),
            ):
                refused = await anyone.request(method, path, headers=headers, json={})
                assert refused.status_code == 401, (headers, path, refused.text)
                assert refused.headers["www-authenticate"] == "Bearer"
                error = refused.json()["error"]
                assert "Authorization: Bearer <token>" in error  # says what to send
        # A minted-looking token that was never minted.
        fake = f"mams_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
        assert (await anyone.get("/api/sessions", headers=bearer(fake))).status_code == 401
    ok(await operator.get("/api/sessions"))


async def test_minted_tokens_have_their_role_and_session_and_only_a_hash_is_stored(
    operator: httpx.AsyncClient, dsn: str
) -> None:
    sid = await session(operator)
    other = await session(operator)
    buyer = await mint(operator, sid, role="buyer")
    assert buyer["role"] == "buyer"
    assert buyer["session_id"] == sid
    assert buyer["agent"] == "buyer"
    seller = await mint(operator, sid, role="seller", handle="@techstore")
    assert seller["agent"] == "techstore"
    watcher = await mint(operator, sid, role="observer")
    everyone = await mint(operator, None, role="observer")
    assert everyone["session_id"] is None

    # What a mint refuses: a seller without a handle or with one not in the session, a
    # player without a session, an unknown session, a mint by anyone but the operator.
    for body in ({"role": "seller"}, {"role": "seller", "handle": "@Nobody"}):
        refused = await operator.post(f"/api/sessions/{sid}/tokens", json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["problems"][0]["path"] == "handle"
    refused = await operator.post("/api/tokens", json={"role": "buyer"})
    assert refused.status_code == 422
    missing = await operator.post(
        "/api/sessions/00000000-0000-0000-0000-000000000000/tokens", json={"role": "buyer"}
    )
    assert missing.status_code == 404

    base = str(operator.base_url)

    async def as_(token: dict[str, Any], method: str, path: str, **kw: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=base, timeout=60) as c:
            return await c.request(method, path, headers=bearer(token["token"]), **kw)

    for player in (buyer, seller, watcher, everyone):
        forbidden = await as_(player, "POST", "/api/sessions", json={"description": "x"})
        assert forbidden.status_code == 403, forbidden.text
        forbidden = await as_(player, "POST", f"/api/sessions/{sid}/tokens", json={"role": "buyer"})
        assert forbidden.status_code == 403
    for player in (buyer, seller, watcher):
        assert (await as_(player, "GET", f"/api/sessions/{other}")).status_code == 403
        assert (await as_(player, "GET", "/api/sessions")).status_code == 403
        report = await as_(player, "GET", f"/api/sessions/{other}/report")
        assert report.status_code == 403
        listed = await as_(player, "GET", "/api/negotiations", params={"session_id": other})
        assert listed.status_code == 403
    # A player sees its session's sellers by handle only; an observer sees their terms.
    mine_ = ok(await as_(buyer, "GET", f"/api/sessions/{sid}"))
    assert mine_["sellers"] == [{"handle": s["handle"]} for s in SELLERS]
    assert "inventory" in ok(await as_(watcher, "GET", f"/api/sessions/{sid}"))["sellers"][0]
    # The observer minted without a session reads every session, and configures nothing.
    seen = ok(await as_(everyone, "GET", "/api/sessions"))
    assert {sid, other} <= {s["session_id"] for s in seen["sessions"]}
    ok(await as_(everyone, "GET", f"/api/sessions/{other}"))
    # A human-buyer room of the buyer's own session: the buyer token may start it, not
    # another session's, and the seller token may not start one at all.
    start = {"session_id": sid, "item_name": "USB-C cable", "buyer": "human", "seed": 1}
    assert (await as_(seller, "POST", "/api/negotiations/start", json=start)).status_code == 403
    elsewhere = {**start, "session_id": other}
    assert (await as_(buyer, "POST", "/api/negotiations/start", json=elsewhere)).status_code == 403
    agent_room = {**start, "buyer": "agent"}
    assert (await as_(buyer, "POST", "/api/negotiations/start", json=agent_room)).status_code == 403

    # Only the SHA-256 of each secret is stored; no column holds a token.
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT * FROM api_tokens")
    finally:
        await conn.close()
    assert len(rows) == 4
    stored = {r["token_id"]: r for r in rows}
    for token in (buyer, seller, watcher, everyone):
        _, token_id, secret = token["token"].split("_", 2)
        assert token_id == token["token_id"]
        row = stored[token_id]
        assert bytes(row["secret_sha256"]) == hashlib.sha256(secret.encode()).digest()
        assert all(secret not in str(value) for value in row.values())


async def test_binding_beyond_loopback_needs_a_token(procs: Cast, tmp_path: Path) -> None:
    refused = procs.mams("serve-open", "serve", "--host", "0.0.0.0", "--port", "0")
    assert await refused.wait() == 2
    assert "no API token is configured" in refused.err() + refused.out()

    short = tmp_path / "short"
    short.write_text("letmein")
    refused = procs.mams("serve-short", "serve", "--port", "0", "--token-file", str(short))
    assert await refused.wait() == 2
    assert "at least 24" in refused.err() + refused.out()

    token = secrets.token_urlsafe(32)
    procs.env["MAMS_API_TOKEN"] = token  # the environment, as the docs say: never argv
    base = await serve(procs, "--host", "0.0.0.0", name="serve-token")
    port = httpx.URL(base).port
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        assert (await client.get("/api/sessions")).status_code == 401
        ok(await client.get("/api/sessions", headers=bearer(token)))


async def test_bodies_over_the_limit_are_refused_before_they_are_read(
    operator: httpx.AsyncClient,
) -> None:
    big = b'{"description": "' + b"x" * MAX_BODY + b'"}'
    refused = await operator.post(
        "/api/sessions", content=big, headers={"content-type": "application/json"}
    )
    assert refused.status_code == 413, refused.text
    assert "larger than" in refused.json()["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        yield b'{"description": "'
        for _ in range(MAX_BODY // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    refused = await operator.post(
        "/api/sessions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert refused.status_code == 413, refused.text
    assert refused.json()["problems"] == [{"path": "$", "message": f"at most {MAX_BODY} bytes"}]
    # Just under the limit is read (and refused for what it says, not for its size).
    fits = b'{"description": 1, "x": "' + b"y" * (MAX_BODY - 100) + b'"}'
    read = await operator.post(
        "/api/sessions", content=fits, headers={"content-type": "application/json"}
    )
    assert read.status_code == 422, read.text


async def test_each_token_has_its_own_rate_limit(procs: Cast, tmp_path: Path) -> None:
    token, path = token_file(tmp_path)
    base = await serve(procs, "--token-file", str(path), "--rate-limit", "4/minute")
    async with httpx.AsyncClient(base_url=base, timeout=60, headers=bearer(token)) as api:
        sid = ok(await api.post("/api/sessions", json={"description": "rate"}), 201)["session_id"]
        watcher = await mint(api, sid, role="observer")
        ok(await api.get("/api/sessions"))
        ok(await api.get("/api/sessions"))
        refused = await api.get("/api/sessions")  # the operator's 5th in a minute
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "too many requests" in refused.json()["error"]
        # Another token has its own budget.
        theirs = await api.get(f"/api/sessions/{sid}", headers=bearer(watcher["token"]))
        ok(theirs)


async def test_a_revoked_token_is_refused_from_its_next_request(
    operator: httpx.AsyncClient,
) -> None:
    sid = ok(await operator.post("/api/sessions", json={"description": "revoke"}), 201)
    watcher = await mint(operator, sid["session_id"], role="observer")
    other = await mint(operator, None, role="observer")
    base = str(operator.base_url)
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        path = f"/api/sessions/{sid['session_id']}"
        ok(await c.get(path, headers=bearer(watcher["token"])))
        forbidden = await c.delete(
            f"/api/tokens/{other['token_id']}", headers=bearer(watcher["token"])
        )
        assert forbidden.status_code == 403  # only the operator revokes
        revoked = ok(await operator.delete(f"/api/tokens/{watcher['token_id']}"))
        assert revoked == {"token_id": watcher["token_id"], "revoked": True}
        refused = await c.get(path, headers=bearer(watcher["token"]))
        assert refused.status_code == 401
        assert "revoked" in refused.json()["error"]
        again = await operator.delete(f"/api/tokens/{watcher['token_id']}")
        assert again.status_code == 404
        ok(await c.get(path, headers=bearer(other["token"])))  # the others still work


async def test_a_token_id_that_cannot_be_one_is_404(operator: httpx.AsyncClient) -> None:
    for token_id in ("%00", "x" * 5000, "%E2%80%AE"):
        refused = await operator.delete(f"/api/tokens/{token_id}")
        assert refused.status_code == 404, (token_id, refused.text)


async def test_without_a_token_configured_a_minted_token_still_binds_its_caller(
    api: httpx.AsyncClient,
) -> None:
    sid = await session(api)  # no header: the operator, on loopback
    buyer = await mint(api, sid, role="buyer")
    as_buyer = bearer(buyer["token"])
    forbidden = await api.post("/api/sessions", json={"description": "x"}, headers=as_buyer)
    assert forbidden.status_code == 403
    ok(await api.get(f"/api/sessions/{sid}", headers=as_buyer))
    wrong = await api.get("/api/sessions", headers=bearer("not-a-token"))
    assert wrong.status_code == 401  # a token sent is checked, configured or not
