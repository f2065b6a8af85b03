"""Defects a new user of the command line meets, each through the real `mams` processes
over real NATS and PostgreSQL: the buyer that goes on past a message it cannot print,
the buyer that says which sellers have not joined, `mams negotiations` that says when it
lists only the newest, `mams import` that keeps the log's times and session names,
`mams rerun` of a room it cannot re-execute, and `--json` errors on stdout."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import nats
import pytest
import structlog.testing
from rich.console import Console

from mams.cli import build_parser
from mams.domain.messages import Peer, RoomClosed, SellerMessage
from mams.processes import _Rooms, hear_safely
from tests.processes.helpers import (
    Cast,
    cast,
    last_json_line,
    mams_command,
    one_json_object,
    process_env,
    schema_dsn,
)

pytestmark = pytest.mark.e2e

SCENARIO = """
name = "two sellers, one outside"

[buyer]
handle = "@Buyer"

[[buyer.items]]
item_name = "USB-C cable"
quantity = 3
min_price = 4.00
max_price = 9.00

[[sellers]]
handle = "@TechMart"
style = "rude"
customer_retention_weight = 0.2
profit_maximization_weight = 0.8
[[sellers.inventory]]
item_name = "USB-C cable"
cost_price = 2.00
selling_price = 9.50
least_price = 5.50

[[sellers]]
handle = "@Outsider"
style = "neutral"
customer_retention_weight = 0.5
profit_maximization_weight = 0.5
[[sellers.inventory]]
item_name = "USB-C cable"
cost_price = 3.00
selling_price = 8.00
least_price = 6.00
"""


@pytest.fixture
def dsn(database_url: str, pg_schema: str) -> str:
    return schema_dsn(database_url, pg_schema)


@pytest.fixture
def procs(tmp_path: Path, nats_url: str, dsn: str) -> Any:
    with cast(tmp_path, process_env(nats_url, dsn, tmp_path / "mams-data")) as c:
        yield c


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "two-sellers.toml"
    path.write_text(SCENARIO, encoding="utf-8")
    return path


@pytest.fixture
def market() -> str:
    return f"d{uuid.uuid4().hex[:10]}"


def run_cli(procs: Cast, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [*mams_command(), *args],
        env={**procs.env, **(env or {})},
        cwd=procs.dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def flat(text: str) -> str:
    return " ".join(text.split())


async def outside_seller(
    url: str,
    market: str,
    text: str,
    *,
    agent: str = "outsider",
    task_status: Any = anyio.TASK_STATUS_IGNORED,
) -> None:
    """A seller outside MAMS (plain nats-py, brain "external"; @Outsider unless `agent`
    says otherwise): says hello until welcomed, then answers every buyer message with
    `text` and its asking price."""
    nc = await nats.connect(url, name=f"{market}-{agent}")
    outbox = f"{market}.broker.{agent}.outbox"
    welcomed = anyio.Event()
    asks: dict[str, str] = {}

    async def on_inbox(msg: Any) -> None:
        m = json.loads(msg.data)
        if m["type"] == "welcome":
            welcomed.set()
        elif m["type"] == "room.opened.seller":
            asks[m["negotiation_id"]] = m["terms"]["selling_price"]
        elif m["type"] == "buyer.message" and m["negotiation_id"] in asks:
            turn = {
                "type": "seller.turn",
                "negotiation_id": m["negotiation_id"],
                "round": m["round"],
                "message_id": str(uuid.uuid5(uuid.NAMESPACE_URL, m["message_id"])),
                "text": text,
                "offer": {"unit_price": asks[m["negotiation_id"]], "quantity": 3},
            }
            await nc.publish(outbox, json.dumps(turn).encode())

    sub = await nc.subscribe(f"{market}.agent.{agent}.inbox", cb=on_inbox)
    hello = json.dumps({"type": "hello", "role": "seller", "brain": "external"}).encode()
    try:
        with anyio.fail_after(60):
            while not welcomed.is_set():
                await nc.publish(outbox, hello)
                with anyio.move_on_after(0.5):
                    await welcomed.wait()
        task_status.started()
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await sub.unsubscribe()
            await nc.close()


async def start_broker(procs: Cast, market: str) -> None:
    broker = procs.mams("broker", "broker", "--market", market, "--configurer", "@Buyer")
    await broker.wait_for("broker ready")


# -- the buyer -------------------------------------------------------------------------------
async def test_buyer_prints_what_its_terminal_cannot_encode_as_escapes(
    procs: Cast, nats_url: str, scenario: Path, market: str
) -> None:
    """Its stdout takes ASCII only (PYTHONIOENCODING=ascii, as an ASCII or Latin-1
    locale): the seller's "café ☕" is shown as escapes, and the room ends as usual."""
    await start_broker(procs, market)
    procs.env["PYTHONIOENCODING"] = "ascii"
    async with anyio.create_task_group() as tg:
        await tg.start(outside_seller, nats_url, market, "café ☕, 8 each")
        await procs.seller(scenario, "@TechMart", market).wait_for("ready")
        buyer = procs.buyer(
            scenario, market, "--seed", "1", "--max-rounds", "2", "--round-timeout", "10"
        )
        assert await buyer.wait() == 0, buyer.describe()
        tg.cancel_scope.cancel()
    assert "r1 @Outsider: caf\\xe9 \\u2615, 8 each" in buyer.out(), buyer.describe()
    assert "completed:" in buyer.out(), buyer.describe()
    assert "Traceback" not in buyer.err()


def test_no_exception_from_one_message_leaves_the_buyers_handler() -> None:
    """A message the buyer cannot handle (here: its output fails) is logged with the
    reason; the next message is heard as usual."""
    nid = uuid.uuid4()
    rooms = _Rooms(resuming=False)
    rooms.ours.add(nid)
    broken = io.StringIO()
    broken.close()  # every write raises ValueError
    out = Console(file=broken)
    said = SellerMessage(
        negotiation_id=nid,
        round=1,
        message_id=uuid.uuid4(),
        seller=Peer(agent_id="outsider", handle="@Outsider"),
        text="hello",
    )
    closed = RoomClosed(negotiation_id=nid, status="completed", deal=False)
    with structlog.testing.capture_logs() as logs:
        assert hear_safely(rooms, said, out, "buyer")
        assert hear_safely(rooms, closed, out, "buyer")
    (failed,) = [e for e in logs if e["event"] == "buyer.message_failed"]
    assert failed["kind"] == "SellerMessage"
    assert failed["negotiation_id"] == str(nid)
    assert failed["reason"].startswith("ValueError: I/O operation on closed file")
    assert "outsider" in rooms.heard_from
    assert nid in rooms.closed  # the next message was heard


async def test_buyer_names_the_sellers_that_have_not_joined(
    procs: Cast, scenario: Path, market: str
) -> None:
    """The README's recipe with one seller of two started: the buyer says which one it has
    not heard from, and how to start it, instead of waiting in silence."""
    await start_broker(procs, market)
    await procs.seller(scenario, "@TechMart", market).wait_for("ready")
    buyer = procs.buyer(
        scenario, market, "--seed", "1", "--max-rounds", "2", "--round-timeout", "3"
    )
    assert await buyer.wait() == 0, buyer.describe()
    (note,) = [line for line in buyer.out().splitlines() if "have they joined" in line]
    assert "@Outsider" in note
    assert "@TechMart" not in note  # it answered
    assert f"mams seller --market {market} --scenario {scenario} --handle @Outsider" in note


# -- mams negotiations ------------------------------------------------------------------------
async def test_negotiations_says_when_it_lists_only_the_newest(procs: Cast, scenario: Path) -> None:
    run = run_cli(procs, "run", str(scenario), "--runs", "3", "--seed", "5", "--json")
    assert run.returncode == 0, run.stderr
    session = one_json_object(run.stdout)["session_id"]
    doc = one_json_object(run_cli(procs, "negotiations", "--limit", "2", "--json").stdout)
    assert doc["total"] == 3
    assert len(doc["negotiations"]) == 2
    everything = one_json_object(run_cli(procs, "negotiations", "--json").stdout)
    assert everything["total"] == 3
    assert len(everything["negotiations"]) == 3

    page = run_cli(procs, "negotiations", "--limit", "2")
    assert page.returncode == 0, page.stderr
    assert "2 of 3 negotiations (the newest); all of them: mams negotiations --limit 3" in flat(
        page.stdout
    )
    mine = flat(run_cli(procs, "negotiations", "--session", session, "--limit", "1").stdout)
    assert "1 of 3 negotiations (the newest); all of them: mams negotiations --session " in mine
    assert f"--session {session} --limit 3" in mine
    whole = run_cli(procs, "negotiations")
    assert " of 3 " not in flat(whole.stdout)  # all listed: nothing to say
    sessions = run_cli(procs, "sessions", "--limit", "1")
    assert "1 of 1" not in flat(sessions.stdout)

    helped = flat(run_cli(procs, "negotiations", "--help").stdout)
    assert "--limit N list the newest N (default 50); the output says when there are more" in (
        helped
    )
    assert '"total": N' in helped


# -- --json errors -----------------------------------------------------------------------------
# For every command with --json, bad input (exit 2), and what its error says.
BAD_INPUT = {
    "run": (["run"], "give a scenario file"),
    "replay": (["replay", "zzzzzzzz"], "no negotiation 'zzzzzzzz'"),
    "rerun": (["rerun", "zzzzzzzz"], "no negotiation 'zzzzzzzz'"),
    "sessions": (["sessions", "--limit", "0"], "--limit must be at least 1"),
    "negotiations": (["negotiations", "--session", "x"], "--session: 'x' is not an id"),
    "buyer": (["buyer"], "give --scenario FILE or --session SESSION_ID"),
    "audit": (["audit"], "give a negotiation id or --all"),
    "import": (["import", "/nonexistent/file.jsonl"], "cannot read /nonexistent/file.jsonl"),
    "analyze": (["analyze", "zzzzzzzz"], "no negotiation 'zzzzzzzz'"),
    "report": (["report", "--session", "x"], "--session: 'x' is not a session id"),
    "creds": (["creds", "--role", "seller"], "the following arguments are required: --conf"),
    "experiment": (["experiment"], "give a spec file"),
    "compare": (["compare", "x"], "EXPERIMENT_ID: 'x' is not an id"),
    "bench-models": (["bench-models"], "the following arguments are required: --model"),
    "play": (["play", "/nonexistent.toml"], "cannot read"),
    "voice": (["voice", "zzzzzzzz"], "no negotiation 'zzzzzzzz'"),
}


def commands_with_json() -> set[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {
        name
        for name, p in sub.choices.items()
        if any("--json" in a.option_strings for a in p._actions)
    }


def test_every_command_with_json_writes_its_bad_input_error_as_json(procs: Cast) -> None:
    assert commands_with_json() == BAD_INPUT.keys()
    for command, (args, says) in BAD_INPUT.items():
        proc = run_cli(procs, *args, "--json")
        assert proc.returncode == 2, f"{command}: exit {proc.returncode}\n{proc.stderr}"
        doc = one_json_object(proc.stdout)
        assert set(doc) == {"error"}, command
        assert says in doc["error"], (command, doc)
        assert says in flat(proc.stderr), (command, proc.stderr)
        # Without --json, stdout stays empty.
        plain = run_cli(procs, *args)
        assert plain.returncode == 2
        assert plain.stdout == "", (command, plain.stdout)


# -- mams rerun --------------------------------------------------------------------------------
async def test_rerun_of_a_room_with_an_outside_or_silent_seller_says_why_it_cannot(
    procs: Cast, nats_url: str, scenario: Path, market: str
) -> None:
    await start_broker(procs, market)
    await procs.seller(scenario, "@TechMart", market).wait_for("ready")
    async with anyio.create_task_group() as tg:
        await tg.start(outside_seller, nats_url, market, "8 each")
        answered = procs.buyer(scenario, market, "--seed", "1", "--max-rounds", "2", "--json")
        assert await answered.wait() == 0, answered.describe()
        tg.cancel_scope.cancel()
    # @Outsider gone: the next room waits out its deadline for it.
    silent = procs.buyer(
        scenario, market, "--seed", "1", "--max-rounds", "2", "--round-timeout", "2", "--json",
        name="buyer-silent",
    )  # fmt: skip
    assert await silent.wait() == 0, silent.describe()
    for buyer, why in (
        (answered, "its brain 'external"),
        (silent, "it never answered (brain 'external"),
    ):
        (room,) = last_json_line(buyer.out())["negotiations"]
        proc = run_cli(procs, "rerun", room["negotiation_id"])
        assert proc.returncode == 1, proc.stderr
        err = flat(proc.stderr)
        assert f"error: @Outsider cannot be re-executed: {why}" in err
        assert "A rerun re-executes baseline and LLM brains only" in err
        assert "_BASE_URL" not in proc.stderr
        assert "brain_failed" not in proc.stderr


# -- mams import -------------------------------------------------------------------------------
TIMES = (
    "SELECT stream_id, seq, recorded_at FROM events ORDER BY stream_id, seq",
    "SELECT negotiation_id, started_at, ended_at FROM negotiation_runs ORDER BY 1",
    "SELECT negotiation_id, seq, sent_at FROM messages ORDER BY 1, 2",
    "SELECT negotiation_id, decided_at FROM outcomes ORDER BY 1",
    "SELECT session_id, name, created_at FROM sessions ORDER BY 1",
)


async def times_of(database_url: str, schema: str) -> list[list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        return [[tuple(r.values()) for r in await conn.fetch(q)] for q in TIMES]
    finally:
        await conn.close()


@pytest.fixture
async def other_schema(database_url: str) -> Any:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        yield schema
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()


async def test_import_keeps_the_times_and_session_names_of_the_exported_log(
    procs: Cast, scenario: Path, tmp_path: Path, database_url: str, pg_schema: str,
    other_schema: str,
) -> None:  # fmt: skip
    run = run_cli(procs, "run", str(scenario), "--seed", "5", "--runs", "2", "--json")
    assert run.returncode == 0, run.stderr
    session = one_json_object(run.stdout)["session_id"]
    archive = tmp_path / "session.jsonl"
    exported = run_cli(procs, "export", "--session", session, "-o", str(archive))
    assert exported.returncode == 0, exported.stderr
    elsewhere = {"DATABASE_URL": schema_dsn(database_url, other_schema)}
    imported = run_cli(procs, "import", str(archive), "--json", env=elsewhere)
    assert imported.returncode == 0, imported.stderr
    original = await times_of(database_url, pg_schema)
    assert original[4][0][1] == "two sellers, one outside"
    assert await times_of(database_url, other_schema) == original
    listed = run_cli(procs, "sessions", env=elsewhere)
    assert "two sellers, one outside" in listed.stdout

    # A file without the session line (as exports were before): the events' times are
    # kept, and the session rebuilt from its rooms is dated by its first room.
    events_only = tmp_path / "events-only.jsonl"
    events_only.write_bytes(
        b"".join(line for line in archive.read_bytes().splitlines(keepends=True)
                 if not line.startswith(b'{"session_id"'))
    )  # fmt: skip
    third = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{third}"')
        again = run_cli(
            procs, "import", str(events_only), env={"DATABASE_URL": schema_dsn(database_url, third)}
        )
        assert again.returncode == 0, again.stderr
        rebuilt = await times_of(database_url, third)
        assert rebuilt[:4] == original[:4]
        ((sid, name, created),) = rebuilt[4]
        assert str(sid) == session
        assert name == f"imported from {events_only}"
        assert created == min(at for _, seq, at in original[0] if seq == 1)
    finally:
        await conn.execute(f'DROP SCHEMA "{third}" CASCADE')
        await conn.close()
