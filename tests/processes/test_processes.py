"""MAMS as separate OS processes over the real NATS and PostgreSQL servers.

(a) `mams run --processes --json` supervises the cast and prints the documented JSON;
(b) broker, buyer and two sellers started here as four processes reach the same outcome
    and the same log (per acting agent, ids aside) as the in-process `mams run`;
(c) a buyer that asks to open a session it does not own is refused: exit 2, the reason;
(d) a seller killed with SIGKILL mid-negotiation: the round deadline closes its rounds,
    the negotiation ends; restarted with the same handle it is welcomed with its open room.
Every wait is bounded; every child is stopped (the `procs` fixture).
"""

from __future__ import annotations

import signal
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import asyncpg
import msgspec
import pytest

from mams.actors.rerun import compare
from mams.bus.nats import NatsBus
from mams.bus.subjects import AgentId, Subjects
from mams.domain.config import parse_scenario_text
from mams.domain.events import (
    Event,
    NegotiationEnded,
    NegotiationStarted,
    RoundClosed,
    SellerReplied,
    decode_event,
)
from mams.domain.messages import InboxMessage, Welcome, decode_committed, decode_inbox
from mams.domain.negotiation import replay
from mams.storage.pg import open_store
from mams.storage.readmodels import save_session
from tests.e2e.test_cli import flat
from tests.processes.helpers import Cast, Child, last_json_line, one_json_object

pytestmark = pytest.mark.e2e

SCENARIO = """
name = "processes"

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
handle = "@QuickTech"
style = "sweet"
customer_retention_weight = 0.7
profit_maximization_weight = 0.3
[[sellers.inventory]]
item_name = "USB-C cable"
cost_price = 3.00
selling_price = 8.00
least_price = 6.00
"""
# For (d): @QuickTech alone. The baseline buyer re-addresses only sellers that made an
# offer, so with a second seller answering, a silent one would be left out after round 1
# and the room would end at once; alone, every round waits for it until its deadline.
ONLY_QUICKTECH = (
    SCENARIO[: SCENARIO.index('[[sellers]]\nhandle = "@TechMart"')]
    + SCENARIO[SCENARIO.index('[[sellers]]\nhandle = "@QuickTech"') :]
)
ZERO = UUID(int=0)
BASELINE = ("--model", "baseline")


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "processes.toml"
    path.write_text(SCENARIO, encoding="utf-8")
    return path


async def read_log(database_url: str, schema: str, nid: UUID) -> list[Event]:
    pool, store = await open_store(database_url, schema)
    try:
        return [decode_event(e.data) for e in await store.read(nid)]
    finally:
        await pool.close()


async def start_market(
    procs: Cast,
    market: str,
    scenario: Path,
    handles: tuple[str, ...] = ("@TechMart", "@QuickTech"),
    *,
    broker_args: tuple[str, ...] = (),
    seller_args: tuple[str, ...] = (),
) -> Child:
    """`mams broker` and one `mams seller` per handle, all ready; returns the broker."""
    broker = procs.mams(
        "broker", "broker", "--market", market, "--configurer", "@Buyer", *broker_args
    )
    await broker.wait_for("broker ready")
    for handle in handles:
        seller = procs.seller(scenario, handle, market, *seller_args)
        await seller.wait_for("ready")
    return broker


# -- (a) -------------------------------------------------------------------------------------
async def test_run_processes_json(procs: Cast, scenario_file: Path) -> None:
    run = procs.mams("run", "run", str(scenario_file), "--processes", "--json", "--seed", "7")
    assert await run.wait() == 0, run.describe()
    doc = one_json_object(run.out())
    assert set(doc) == {"session_id", "brain", "negotiations"}
    UUID(doc["session_id"])
    assert isinstance(doc["brain"], str)
    assert doc["brain"]
    [n] = doc["negotiations"]
    assert set(n) == {"negotiation_id", "item", "seed", "status", "outcome", "flags"}
    assert n["seed"] == 7
    assert n["flags"] == {}, "baseline brains neither hallucinate nor leak"
    UUID(n["negotiation_id"])
    assert n["item"] == "USB-C cable"
    assert n["status"] == "completed"
    outcome = n["outcome"]
    assert set(outcome) == {"type", "seller", "unit_price", "quantity", "rounds"}
    assert outcome["type"] in {"deal", "no_deal", "max_rounds"}
    assert isinstance(outcome["rounds"], int)
    if outcome["type"] == "deal":
        assert outcome["seller"] in {"@TechMart", "@QuickTech"}
        assert Decimal("4.00") <= outcome["unit_price"] <= Decimal("9.00")
        assert outcome["quantity"] == 3
    # Every child the supervisor started has exited with it (none left behind).
    assert "process broker" in run.err()


async def most_open_at_once(database_url: str, schema: str, session_id: str | None = None) -> int:
    """The most rooms the log (or one session of it) has open at once (from each room's
    first event to its negotiation.ended, in commit order)."""
    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        rows = await conn.fetch(
            "SELECT min(e.global_pos) AS opened, "
            "max(e.global_pos) FILTER (WHERE e.type = 'negotiation.ended') AS ended "
            "FROM events e LEFT JOIN negotiation_runs n ON n.negotiation_id = e.stream_id "
            "WHERE $1::uuid IS NULL OR n.session_id = $1 GROUP BY e.stream_id",
            UUID(session_id) if session_id else None,
        )
    finally:
        await conn.close()
    steps = sorted([(r["opened"], 1) for r in rows] + [(r["ended"], -1) for r in rows])
    most = now = 0
    for _, step in steps:
        now += step
        most = max(most, now)
    return most


@pytest.mark.parametrize(("at_once", "most"), [(None, 3), (2, 2)])
async def test_run_processes_runs_each_item_n_times(
    procs: Cast,
    scenario_file: Path,
    database_url: str,
    pg_schema: str,
    at_once: int | None,
    most: int,
) -> None:
    """--runs through the buyer process: one open_rooms asking for 3 runs, or with
    --rooms-at-once one per room, the next as one ends."""
    cap = ["--rooms-at-once", str(at_once)] if at_once else []
    run = procs.mams(
        "run",
        "run",
        str(scenario_file),
        "--processes",
        "--json",
        "--seed",
        "7",
        "--runs",
        "3",
        *cap,
    )
    assert await run.wait() == 0, run.describe()
    negs = one_json_object(run.out())["negotiations"]
    assert sorted(n["seed"] for n in negs) == [7, 8, 9]
    assert {n["item"] for n in negs} == {"USB-C cable"}
    assert all(n["status"] == "completed" for n in negs)
    assert len({n["negotiation_id"] for n in negs}) == 3
    assert await most_open_at_once(database_url, pg_schema) == most
    if at_once:
        return
    bad = procs.mams("bad-runs", "buyer", "--scenario", str(scenario_file), "--runs", "0")
    assert await bad.wait() == 2
    assert "--runs must be from 1 to 10000, got 0" in flat(bad.err())
    # A skip file that is not a list of [item, seed] pairs: named, with the fix.
    skip = scenario_file.parent / "skip.json"
    for text, why in (("[[", "not JSON"), ('[["USB-C cable", "x"]]', "[item, seed] pairs")):
        skip.write_text(text)
        bad = procs.mams(
            "bad-skip", "buyer", "--scenario", str(scenario_file), "--skip-file", str(skip)
        )
        assert await bad.wait() == 2
        said = flat(bad.err())
        assert f"--skip-file {skip}" in said
        assert why in said
    both = procs.mams("bad-broker", "broker", "--no-resume", "--resume-session", str(uuid.uuid4()))
    assert await both.wait() == 2
    assert "--no-resume or --resume-session, not both" in both.err()


async def test_a_buyer_with_rooms_at_once_stores_its_scenario_once(
    procs: Cast, market: str, scenario_file: Path, database_url: str, pg_schema: str
) -> None:
    """`mams buyer --scenario F --rooms-at-once 1`: the first open_rooms stores the
    scenario as a session, every later one opens its room in that session."""
    await start_market(procs, market, scenario_file)
    buyer = procs.buyer(
        scenario_file, market, "--seed", "3", "--runs", "3", "--rooms-at-once", "1", "--json"
    )
    assert await buyer.wait() == 0, buyer.describe()
    doc = last_json_line(buyer.out())
    assert len(doc["negotiations"]) == 3
    assert {n["status"] for n in doc["negotiations"]} == {"completed"}
    conn = await asyncpg.connect(database_url, server_settings={"search_path": pg_schema})
    try:
        sessions = await conn.fetch("SELECT DISTINCT session_id, seed FROM negotiation_runs")
    finally:
        await conn.close()
    assert {str(r["session_id"]) for r in sessions} == {doc["session_id"]}
    assert sorted(r["seed"] for r in sessions) == [3, 4, 5]
    assert await most_open_at_once(database_url, pg_schema) == 1
    # With a stored session the buyer cannot list its items: it says to name them.
    unnamed = procs.mams(
        "unnamed", "buyer", "--session", doc["session_id"], "--market", market,
        "--rooms-at-once", "2",
    )  # fmt: skip
    assert await unnamed.wait() == 2
    assert "--rooms-at-once with --session needs the items named" in flat(unnamed.err())


# -- (b) -------------------------------------------------------------------------------------
def normalised(events: list[Event]) -> list[Event]:
    """The log with the run's own ids (negotiation, session) zeroed; `compare` already
    ignores message ids and latencies, and events carry no timestamps."""
    out: list[Event] = []
    for e in events:
        if isinstance(e, NegotiationStarted):
            e = msgspec.structs.replace(e, negotiation_id=ZERO, session_id=ZERO)
        out.append(e)
    return out


async def test_four_processes_match_the_single_process_run(
    procs: Cast, market: str, scenario_file: Path, database_url: str, pg_schema: str
) -> None:
    await start_market(procs, market, scenario_file)
    buyer = procs.buyer(
        scenario_file,
        market,
        "--seed",
        "7",
        "--json",
        *BASELINE,
    )
    assert await buyer.wait() == 0, buyer.describe()
    [split] = one_json_object(buyer.out())["negotiations"]
    assert split["status"] == "completed"

    single = procs.mams(
        "single",
        "run",
        str(scenario_file),
        "--seed",
        "7",
        "--json",
        "--buyer-model",
        "baseline",
        "--seller-model",
        "baseline",
    )
    assert await single.wait() == 0, single.describe()
    [whole] = one_json_object(single.out())["negotiations"]

    a = await read_log(database_url, pg_schema, UUID(split["negotiation_id"]))
    b = await read_log(database_url, pg_schema, UUID(whole["negotiation_id"]))
    assert compare(normalised(b), normalised(a)) == []
    assert len(a) == len(b)
    sa, sb = replay(a), replay(b)
    assert sa.outcome == sb.outcome
    assert sa.ended is not None
    assert sb.ended is not None
    assert sa.ended.status == sb.ended.status == "completed"
    # The buyer's own JSON says the same as the log.
    assert split["outcome"]["type"] == whole["outcome"]["type"]
    assert split["outcome"]["rounds"] == whole["outcome"]["rounds"]


# -- (c) -------------------------------------------------------------------------------------
async def test_buyer_cannot_open_a_session_it_does_not_own(
    procs: Cast, market: str, database_url: str, pg_schema: str
) -> None:
    broker = procs.mams("broker", "broker", "--market", market)
    await broker.wait_for("broker ready")  # migrated: the session tables exist
    session_id = uuid.uuid4()
    conn = await asyncpg.connect(database_url, server_settings={"search_path": pg_schema})
    try:
        await save_session(conn, session_id, parse_scenario_text(SCENARIO, fmt="toml"))
    finally:
        await conn.close()

    impostor = procs.mams(
        "impostor",
        "buyer",
        "--session",
        str(session_id),
        "--agent",
        "techmart",
        "--market",
        market,
        *BASELINE,
    )
    assert await impostor.wait(within=60) == 2, impostor.describe()
    err = " ".join(impostor.err().split())
    assert "the broker refused to open the rooms" in err
    assert "only the session's buyer (@Buyer) may open its rooms" in err

    unknown = procs.mams(
        "unknown", "buyer", "--session", str(uuid.uuid4()), "--market", market, *BASELINE
    )
    assert await unknown.wait(within=60) == 2, unknown.describe()
    assert "no session" in unknown.err()
    # Nothing was opened for either request.
    conn = await asyncpg.connect(database_url, server_settings={"search_path": pg_schema})
    try:
        assert await conn.fetchval("SELECT count(*) FROM negotiation_runs") == 0
    finally:
        await conn.close()


# -- (d) -------------------------------------------------------------------------------------
async def test_killed_seller_deadline_then_rejoin(
    procs: Cast,
    market: str,
    tmp_path: Path,
    nats_url: str,
    database_url: str,
    pg_schema: str,
) -> None:
    scenario = tmp_path / "only-quicktech.toml"
    scenario.write_text(ONLY_QUICKTECH, encoding="utf-8")
    subjects = Subjects(prefix=market)
    tap = await NatsBus.connect(nats_url, name="test-tap")
    committed: list[tuple[UUID, Event]] = []
    inbox: list[InboxMessage] = []
    try:
        events_sub = await tap.subscribe(subjects.all_events(), max_pending=100_000)
        inbox_sub = await tap.subscribe(subjects.inbox(AgentId("quicktech")))
        await tap.flush()

        async def read_events() -> None:
            async for msg in events_sub:
                c = decode_committed(msg.data)
                committed.append((c.negotiation_id, c.event))

        async def read_inbox() -> None:
            async for msg in inbox_sub:
                inbox.append(decode_inbox(msg.data))

        async def until(pred: Any, within: float = 60.0) -> None:
            with anyio.fail_after(within):
                while not pred():  # noqa: ASYNC110 - polling what the readers collect
                    await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_events)
            tg.start_soon(read_inbox)
            await start_market(procs, market, scenario, ("@QuickTech",))
            [quicktech] = [c for c in procs.children if c.name == "@QuickTech"]
            quicktech.signal(signal.SIGSTOP)  # in the room, never answering
            buyer = procs.buyer(
                scenario,
                market,
                "--seed",
                "7",
                "--round-timeout",
                "1",
                "--max-rounds",
                "20",
                "--json",
                *BASELINE,
            )

            def deadline_closed() -> bool:
                return any(
                    isinstance(e, RoundClosed)
                    and e.reason == "deadline"
                    and "quicktech" in e.unanswered
                    for _, e in committed
                )

            await until(deadline_closed)  # a round closed at its deadline without @QuickTech
            quicktech.signal(signal.SIGKILL)
            assert await quicktech.wait(within=10) == -signal.SIGKILL
            welcomes_before = sum(isinstance(m, Welcome) for m in inbox)
            restarted = procs.mams(
                "@QuickTech again",
                "seller",
                "--scenario",
                str(scenario),
                "--handle",
                "@QuickTech",
                "--market",
                market,
            )
            await restarted.wait_for("ready")
            assert await buyer.wait() == 0, buyer.describe()
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await tap.close()

    [result] = one_json_object(buyer.out())["negotiations"]
    assert result["status"] == "completed"
    nid = UUID(result["negotiation_id"])
    log = await read_log(database_url, pg_schema, nid)
    assert isinstance(log[-1], NegotiationEnded)
    assert log[-1].status == "completed"
    closed = [e for e in log if isinstance(e, RoundClosed)]
    assert any(e.reason == "deadline" and e.unanswered == ("quicktech",) for e in closed)
    # The restarted seller was welcomed with its open room (and caught up on it).
    rejoin = [m for m in inbox if isinstance(m, Welcome)][welcomes_before:]
    assert rejoin, "the restarted seller got no welcome"
    assert rejoin[0].rooms == (nid,), rejoin
    # Agents say hello again every few seconds; once the room has ended, no rooms.
    assert all(w.rooms in ((nid,), ()) for w in rejoin), rejoin
    assert any(isinstance(e, SellerReplied) and e.seller == "quicktech" for e in log), (
        "the restarted seller never answered in its room"
    )


async def test_a_relaxed_broker_says_so_and_serves(
    procs: Cast,
    market: str,
    scenario_file: Path,
) -> None:
    broker = await start_market(
        procs, market, scenario_file, broker_args=("--durability", "relaxed")
    )
    assert "durability relaxed" in broker.out()
    buyer = procs.buyer(scenario_file, market, *BASELINE, "--json")
    assert await buyer.wait() == 0, buyer.describe()
    doc = last_json_line(buyer.out())
    assert [n["status"] for n in doc["negotiations"]] == ["completed"]


@pytest.mark.parametrize(("flags", "left"), [((), "running"), (("--abort-on-exit",), "aborted")])
async def test_a_broker_asked_to_stop_aborts_open_rooms_only_with_abort_on_exit(
    procs: Cast,
    market: str,
    scenario_file: Path,
    database_url: str,
    pg_schema: str,
    flags: tuple[str, ...],
    left: str,
) -> None:
    """SIGTERM: open rooms are recorded as aborted with --abort-on-exit (as `mams run
    --processes` runs it, so that Ctrl-C ends its rooms), else left open for the next
    broker to resume. (Stopped any other way, it always leaves them open: see
    tests/e2e/test_run_killed.py.)"""
    broker = procs.mams("broker", "broker", "--market", market, "--configurer", "@Buyer", *flags)
    await broker.wait_for("broker ready")
    # No sellers: the rooms open and wait for them (30 s deadlines).
    buyer = procs.buyer(scenario_file, market, *BASELINE, "--runs", "3")
    conn = await asyncpg.connect(database_url, server_settings={"search_path": pg_schema})
    try:
        with anyio.fail_after(30):
            while await conn.fetchval("SELECT count(*) FROM negotiation_runs") < 3:  # noqa: ASYNC110 (polling the log)
                await anyio.sleep(0.05)
        broker.signal(signal.SIGTERM)
        assert await broker.wait(within=30) == 0, broker.describe()
        rows = await conn.fetch("SELECT status FROM negotiation_runs")
    finally:
        await conn.close()
        buyer.stop()
    assert [r["status"] for r in rows] == [left] * 3
