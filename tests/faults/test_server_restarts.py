"""PostgreSQL or NATS restarted under a running market (real `mams` processes).

(a) PostgreSQL (our own, on a data dir in tmp_path) is stopped after the first
    seller.replied is committed, while round 1's deadline is due: the broker waits and
    retries (DatabaseUnavailable), delivers nothing uncommitted, and the negotiation
    completes once the server is back on the same socket.
(b) nats-server (our own, on a fixed port) is killed with SIGKILL mid-negotiation and
    started again on that port: every client reconnects, the agents' hellos and the
    broker's catch-up re-send what was lost, and the negotiation completes.
Afterwards `mams audit --all` is clean, seqs are 1..n, event ids unique.
In both, @QuickTech is frozen (SIGSTOP) until the server is back, so round 1 is still open
(waiting for it until its 2 s deadline) when the server goes away.
"""

from __future__ import annotations

import json
import re
import signal
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from uuid import UUID

import anyio
import asyncpg
import pytest

from tests.faults.servers import OwnNats, OwnPostgres, audit_all, check_log
from tests.faults.test_broker_crash import all_events, poll
from tests.processes.helpers import Cast, Child, cast, mams_command, process_env, schema_dsn
from tests.processes.test_processes import SCENARIO


@pytest.fixture
def own_pg() -> Iterator[OwnPostgres]:
    # Not under tmp_path: as root, pgserver runs PostgreSQL as its own user, which needs
    # o+rx on every parent directory, and pytest keeps its temp root private (0700).
    with tempfile.TemporaryDirectory(prefix="mams-faults-pg-") as tmp:
        pg = OwnPostgres(Path(tmp) / "pg")
        try:
            pg.start()
            yield pg
        finally:
            pg.close()


async def _market(c: Cast, market: str, scenario: Path) -> tuple[Child, Child, Child]:
    """The broker, both sellers ready (@QuickTech then frozen), and the buyer started.
    Returns (broker, @QuickTech, buyer)."""
    broker = c.mams("broker", "broker", "--market", market, "--configurer", "@Buyer")
    await broker.wait_for("broker ready")
    sellers = {}
    for handle in ("@TechMart", "@QuickTech"):
        sellers[handle] = c.seller(scenario, handle, market)
        await sellers[handle].wait_for("ready")
    sellers["@QuickTech"].signal(signal.SIGSTOP)
    buyer = c.buyer(
        scenario,
        market,
        "--seed",
        "7",
        "--round-timeout",
        "2",
        "--max-rounds",
        "4",
        "--model",
        "baseline",
    )
    return broker, sellers["@QuickTech"], buyer


async def _first_reply(dsn: str, search_path: str | None = None) -> list[asyncpg.Record]:
    """Wait until a seller.replied is committed; the log at that moment."""
    settings = {"search_path": search_path} if search_path else None
    conn = await asyncpg.connect(dsn, server_settings=settings)
    try:

        async def replied() -> bool:
            n = await conn.fetchval("SELECT count(*) FROM events WHERE type = 'seller.replied'")
            return bool(n)

        await poll(replied)
        before = await all_events(conn)
    finally:
        await conn.close()
    assert "negotiation.ended" not in {r["type"] for r in before}, "ended too early"
    return before


async def _after(
    dsn: str, search_path: str | None = None
) -> tuple[list[asyncpg.Record], dict[str, int], set[tuple[int, str]]]:
    settings = {"search_path": search_path} if search_path else None
    conn = await asyncpg.connect(dsn, server_settings=settings)
    try:
        rows = await conn.fetch(
            "SELECT data->>'round' AS r, data->>'seller' AS s FROM events "
            "WHERE type = 'seller.replied'"
        )
        return await all_events(conn), await check_log(conn), {(int(r["r"]), r["s"]) for r in rows}
    finally:
        await conn.close()


def _seen_replies(buyer_out: str) -> set[tuple[int, str]]:
    """(round, seller id) of every seller message the buyer printed (`r<n> @Handle: ...`)."""
    return {
        (int(m[1]), m[2].lower())
        for m in re.finditer(r"^r(\d+) @(\w+): ", buyer_out, flags=re.MULTILINE)
    }


def _check(
    buyer: Child,
    before: list[asyncpg.Record],
    after: list[asyncpg.Record],
    counts: dict[str, int],
    committed: set[tuple[int, str]],
) -> None:
    # Without --json the buyer prints each seller message, then `<id>: <status>: ...`.
    [(nid, status)] = re.findall(r"^([0-9a-f-]{36}): (\w+): ", buyer.out(), flags=re.MULTILINE)
    assert status == "completed"
    assert {r["stream_id"] for r in after} == {UUID(nid)}
    keys = {(r["stream_id"], r["seq"], r["event_id"]) for r in after}
    assert keys >= {(r["stream_id"], r["seq"], r["event_id"]) for r in before}
    assert len(after) > len(before)
    assert after[-1]["type"] == "negotiation.ended"
    assert counts["ended"] == 1
    # Log, then deliver: every seller message the buyer saw is a committed seller.replied.
    seen = _seen_replies(buyer.out())
    assert seen, buyer.out()
    assert seen <= committed


# -- (a) -------------------------------------------------------------------------------------
@pytest.mark.e2e
async def test_postgres_restarted_mid_negotiation(
    own_pg: OwnPostgres, nats_url: str, market: str, tmp_path: Path
) -> None:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    env = process_env(nats_url, own_pg.dsn, tmp_path / "mams-data")
    with cast(tmp_path, env) as c:
        broker, quicktech, buyer = await _market(c, market, scenario)
        before = await _first_reply(own_pg.dsn)
        await anyio.to_thread.run_sync(own_pg.stop)
        # Round 1's deadline falls while the server is down: the broker waits and retries.
        await broker.wait_for("broker.database_unavailable", within=30, err=True)
        assert "negotiation.ended" not in buyer.out()
        await anyio.to_thread.run_sync(own_pg.start)
        # The restart ended the broker's lease connection: it takes its lock back, and
        # no other broker took its room meanwhile.
        await broker.wait_for("leases.lock_taken_again", within=30, err=True)
        assert "rooms_lost=0" in broker.err(), broker.describe()
        quicktech.signal(signal.SIGCONT)
        assert await buyer.wait(within=60) == 0, buyer.describe() + broker.describe()
        assert broker.popen.poll() is None, broker.describe()  # it waited, never died
        after, counts, committed = await _after(own_pg.dsn)
        audit_all(env, tmp_path)
    _check(buyer, before, after, counts, committed)


# -- (b) -------------------------------------------------------------------------------------
@pytest.mark.e2e
async def test_nats_restarted_mid_negotiation(
    own_nats: OwnNats, database_url: str, pg_schema: str, market: str, tmp_path: Path
) -> None:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    env = process_env(own_nats.url, schema_dsn(database_url, pg_schema), tmp_path / "mams-data")
    with cast(tmp_path, env) as c:
        broker, quicktech, buyer = await _market(c, market, scenario)
        before = await _first_reply(database_url, pg_schema)
        await anyio.to_thread.run_sync(own_nats.kill)
        await anyio.to_thread.run_sync(own_nats.start)
        quicktech.signal(signal.SIGCONT)
        assert await buyer.wait(within=60) == 0, buyer.describe() + broker.describe()
        assert broker.popen.poll() is None, broker.describe()
        after, counts, committed = await _after(database_url, pg_schema)
        audit_all(env, tmp_path)
    _check(buyer, before, after, counts, committed)


# -- (c), (d): the main job, one process ---------------------------------------------------
async def _in_process_run_through(
    outage: Callable[[], Awaitable[None]], env: dict[str, str], dsn: str, tmp_path: Path
) -> str:
    """Run `mams run` of 200 rooms as one process; once 20 rooms are open, `outage`; the
    run must complete every room, and the audit be clean. Returns the run's log."""
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    out, err = tmp_path / "run.out", tmp_path / "run.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        run = await anyio.open_process(
            [*mams_command(), "run", str(scenario), "--runs", "200", "--seed", "1", "--json"],
            env=env,
            cwd=tmp_path,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        conn = await asyncpg.connect(dsn)
        try:
            with anyio.fail_after(60):
                while True:
                    try:
                        n = await conn.fetchval(
                            "SELECT count(*) FROM negotiation_runs WHERE status = 'running'"
                        )
                    except asyncpg.UndefinedTableError:  # not migrated yet
                        n = 0
                    if n >= 20:
                        break
                    assert run.returncode is None, err.read_text()
                    await anyio.sleep(0.02)
        finally:
            await conn.close()
        await outage()
        with anyio.fail_after(120):
            code = await run.wait()
    finally:
        if run.returncode is None:
            run.kill()
            await run.wait()
    log = err.read_text(encoding="utf-8")
    assert code == 0, log[-4000:]
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert {n["status"] for n in doc["negotiations"]} == {"completed"}
    assert len(doc["negotiations"]) == 200  # one item, 200 runs
    audit_all(env, tmp_path)
    return log


@pytest.mark.e2e
async def test_postgres_restarted_under_an_in_process_mams_run(
    own_pg: OwnPostgres, nats_url: str, tmp_path: Path
) -> None:
    """PostgreSQL goes away for 2 s with rooms open (well inside the 30 s round deadline):
    the run waits (its broker retries, its lease keeper takes the lock back) and completes."""

    async def outage() -> None:
        await anyio.to_thread.run_sync(own_pg.stop)
        await anyio.sleep(2)
        await anyio.to_thread.run_sync(own_pg.start)

    env = process_env(nats_url, own_pg.dsn, tmp_path / "mams-data")
    log = await _in_process_run_through(outage, env, own_pg.dsn, tmp_path)
    assert "broker.database_unavailable" in log  # it did wait and retry
    assert "leases.lock_taken_again" in log  # and held its rooms again, losing none
    assert "rooms_lost=0" in log


@pytest.mark.e2e
async def test_nats_restarted_under_an_in_process_mams_run(
    own_nats: OwnNats, database_url: str, pg_schema: str, tmp_path: Path
) -> None:
    """nats-server killed (SIGKILL) and started again on its port with rooms open: every
    connection of the run comes back, what the outage swallowed is sent again, and it
    completes."""

    async def outage() -> None:
        await anyio.to_thread.run_sync(own_nats.kill)
        await anyio.to_thread.run_sync(own_nats.start)

    dsn = schema_dsn(database_url, pg_schema)
    env = process_env(own_nats.url, dsn, tmp_path / "mams-data")
    log = await _in_process_run_through(outage, env, dsn, tmp_path)
    assert "broker.redelivered" in log  # its broker re-sent every open room on reconnect
