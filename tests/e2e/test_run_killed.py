"""A `mams run` killed with SIGKILL, then `mams run --resume`: the same rooms go on from
their log to an end, nothing is run twice, and a run still alive is never taken over.

Real OS processes, the real NATS and PostgreSQL; the run is frozen with SIGSTOP (alive,
its connections open) while rooms are open, so nothing here races the clock.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from tests.e2e.test_cli import Cli, cli, flat, ok, one_json_object, scenario_file
from tests.processes.helpers import mams_command

__all__ = ["cli", "scenario_file"]  # fixtures, used by name

RUNS = 100
ARGS = ("--runs", str(RUNS), "--seed", "3", "--max-rounds", "6")
WAIT = 60.0


async def _rows(cli: Cli, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(cli.database_url, server_settings={"search_path": cli.schema})
    try:
        return list(await conn.fetch(sql))
    except asyncpg.UndefinedTableError:  # the run has not created its tables yet
        return []
    finally:
        await conn.close()


def listed(cli: Cli, session: str) -> list[dict[str, Any]]:
    """`mams negotiations --json` of the session, every row."""
    rows = cli.json("negotiations", "--session", session, "--limit", "5000")["negotiations"]
    assert isinstance(rows, list)
    return rows


async def test_a_killed_run_is_gone_on_with_by_resume(cli: Cli, scenario_file: Path) -> None:
    run = await anyio.open_process(
        [*mams_command(), "run", str(scenario_file), *ARGS],
        env=cli.env,
        cwd=cli.cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + WAIT
        running: list[asyncpg.Record] = []
        while len(running) < 20:  # rooms open: freeze it there
            assert run.returncode is None, "the run ended before it could be stopped"
            assert time.monotonic() < deadline, "no room opened in time"
            running = await _rows(cli, "SELECT * FROM negotiation_runs WHERE status = 'running'")
            await anyio.sleep(0.02)
        run.send_signal(signal.SIGSTOP)
        session = str(running[0]["session_id"])
        resume = ("run", "--session", session, *ARGS, "--resume")
        # Alive (if frozen): its rooms are its own, and --resume says so, writing nothing.
        refused = cli(*resume)
        assert refused.returncode == 2, refused.stderr
        assert "still being run by another live process" in flat(refused.stderr)
        assert not any(r["interrupted"] for r in listed(cli, session))  # it is alive
        run.kill()  # SIGKILL
        with anyio.fail_after(WAIT):
            await run.wait()
    finally:
        if run.returncode is None:
            run.kill()
            await run.wait()
    interrupted = {
        str(r["negotiation_id"])
        for r in await _rows(cli, "SELECT * FROM negotiation_runs WHERE status = 'running'")
    }
    assert interrupted, "every room ended before the kill: nothing was interrupted"
    shown = {r["negotiation_id"] for r in listed(cli, session) if r["interrupted"]}
    assert shown == interrupted
    table = flat(ok(cli("negotiations", "--session", session, "--limit", "5000")).stdout)
    assert f"mams run --session {session} --resume" in table

    proc = ok(cli(*resume, "--json"))
    assert f"{len(interrupted)} interrupted to go on with" in flat(proc.stderr)
    doc = one_json_object(proc.stdout)
    got = {n["negotiation_id"]: n for n in doc["negotiations"]}
    assert interrupted <= got.keys()  # the same rooms, not new ones in their place
    assert {got[nid]["status"] for nid in interrupted} == {"completed"}

    rows = await _rows(cli, "SELECT item_name, seed, status FROM negotiation_runs")
    planned = RUNS * len({r["item_name"] for r in rows})
    assert Counter(r["status"] for r in rows) == {"completed": planned}
    assert len({(r["item_name"], r["seed"]) for r in rows}) == planned  # none run twice
    audit = cli("audit", "--all")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "all clean" in flat(audit.stdout)
    again = ok(cli(*resume, "--json"))
    assert one_json_object(again.stdout)["negotiations"] == []
