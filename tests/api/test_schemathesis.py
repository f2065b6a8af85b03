"""schemathesis against a live `mams serve` (with an operator token, real NATS and
PostgreSQL): every operation of `GET /api/openapi.json`, from its examples, the coverage
of its schema's edges and fuzzed inputs (valid and invalid), must answer without a 5xx,
with a status, content type, headers and body the document allows."""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from mams.api.openapi import ROUTES
from tests.api.conftest import serve
from tests.api.test_flow import NEEDS, SELLERS, ok
from tests.processes.helpers import Cast

pytestmark = pytest.mark.e2e

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)
EXAMPLES = 15  # per operation and phase: the whole run stays well under a minute


CONFIG = """
headers = {{ Authorization = "Bearer ${{MAMS_API_TOKEN}}" }}
max-stream-events = 50
request-timeout = 30

# A session being assembled, for the session's routes and those that take a session_id.
[parameters]
session_id = "{draft}"

# A live room with a person as the buyer, for the buyer's turns.
[[operations]]
include-path-regex = "^/api/negotiations/\\\\{{nid\\\\}}/(message|decide)$"
parameters = {{ nid = "{human}" }}

# A room the agents play, for what reads a room (it ends within seconds).
[[operations]]
include-path-regex = "^/api/negotiations/\\\\{{nid\\\\}}(/(analytics|replay|events))?$"
parameters = {{ nid = "{agent}" }}
"""


async def rooms(api: httpx.AsyncClient) -> dict[str, str]:
    """A draft session, and a configured one with a human-buyer room and an agent room."""
    draft = ok(await api.post("/api/sessions", json={"description": "fuzzed"}), 201)
    sid = ok(await api.post("/api/sessions", json={"description": "rooms"}), 201)["session_id"]
    ok(await api.post(f"/api/sessions/{sid}/buyer-config", json=NEEDS))
    for seller in SELLERS:
        ok(await api.post(f"/api/sessions/{sid}/sellers", json=seller), 201)
    start = {"session_id": sid, "item_name": "USB-C cable", "seed": 1}
    human = ok(await api.post("/api/negotiations/start", json={**start, "buyer": "human"}), 201)
    agent = ok(await api.post("/api/negotiations/start", json={**start, "buyer": "agent"}), 201)
    return {
        "draft": draft["session_id"],
        "human": human["negotiation_id"],
        "agent": agent["negotiation_id"],
    }


@pytest.mark.timeout(180)
async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    procs: Cast, tmp_path: Path
) -> None:
    token = secrets.token_urlsafe(32)
    path = tmp_path / "api-token"
    path.write_text(token)
    path.chmod(0o600)
    base = await serve(procs, "--token-file", str(path), "--rate-limit", "10000/second")
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers) as api:
        document = ok(await api.get("/api/openapi.json"))
        ids = await rooms(api)
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(document))
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(**ids))
    st = Path(sys.executable).parent / "st"
    done = await anyio.run_process(
        [
            str(st),
            "--config-file",
            str(config),
            "run",
            str(schema),
            "--url",
            base,
            "--checks",
            CHECKS,
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            "18",
            "--workers",
            "1",  # CPython 3.11's ast.parse is not thread-safe; hypothesis calls it
            "--suppress-health-check",
            "all",
            "--no-color",
        ],
        cwd=tmp_path,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MAMS_API_TOKEN": token},
    )
    report = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    print(report)  # shown by pytest -s, or with a failure
    assert done.returncode == 0, report
    assert f"Operations:       {len(ROUTES)} selected / {len(ROUTES)} total" in report, report


async def test_paging_queries_past_what_the_database_takes_are_422(api: httpx.AsyncClient) -> None:
    """Once 500s: an offset past PostgreSQL's bigint, and a digit that is not ASCII ('²'
    passes str.isdigit, not int)."""
    for path in ("/api/sessions", "/api/negotiations"):
        for query in ({"offset": str(2**70)}, {"limit": "²"}, {"offset": "١"}):
            refused = await api.get(path, params=query)
            assert refused.status_code == 422, (path, query, refused.text)
            assert refused.json()["problems"][0]["path"] in query
