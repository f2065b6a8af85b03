"""A `mams run` killed with SIGKILL, then `mams run --resume`: the same rooms go on from
their log to an end, nothing is run twice, and a run still alive is never taken over.

Real OS processes, the real NATS and PostgreSQL; the run is frozen with SIGSTOP (alive,
its connections open) while rooms are open, so nothing here races the clock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from anyio.abc import Process

from mams.processes import ORPHAN_EXIT_WITHIN
from tests.e2e.test_cli import Cli, cli, flat, ok, one_json_object, scenario_file
from tests.processes.helpers import mams_command, process_running

__all__ = ["cli", "scenario_file"]  # fixtures, used by name

RUNS = 100
_RUNNING = "SELECT * FROM negotiation_runs WHERE status = 'running'"
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


async def _start(
    cli: Cli, *argv: str, stdout: Any = None, stderr: Any = None, env: dict[str, str] | None = None
) -> Process:
    """`mams *argv` against the test's servers (or `env`); output discarded unless a file
    is given."""
    return await anyio.open_process(
        [*mams_command(), *argv],
        env=env or cli.env,
        cwd=cli.cwd,
        stdout=stdout or subprocess.DEVNULL,
        stderr=stderr or subprocess.DEVNULL,
    )


async def _rooms_open(cli: Cli, run: Process, what: str) -> list[asyncpg.Record]:
    """Wait until `run` has 20 rooms open (while it runs); their rows."""
    with anyio.fail_after(WAIT):
        while len(rows := await _rows(cli, _RUNNING)) < 20:
            assert run.returncode is None, f"the run ended before it could be {what}"
            await anyio.sleep(0.02)
    return rows


async def broker_ready_line(cli: Cli) -> str:
    """Start `mams broker` on the test's database, return its ready line, stop it."""
    out = cli.cwd / "broker.out"
    with out.open("wb") as stdout:
        broker = await _start(cli, "broker", "--market", f"m{uuid.uuid4().hex[:8]}", stdout=stdout)
    try:
        with anyio.fail_after(WAIT):
            while "broker ready" not in out.read_text(encoding="utf-8"):
                assert broker.returncode is None, out.read_text(encoding="utf-8")
                await anyio.sleep(0.05)
        broker.terminate()
        with anyio.fail_after(WAIT):
            await broker.wait()
    finally:
        if broker.returncode is None:
            broker.kill()
            await broker.wait()
    return flat(out.read_text(encoding="utf-8"))


async def _ended_by_ctrl_c(
    cli: Cli, code: int, err: str
) -> tuple[list[asyncpg.Record], Counter[str]]:
    """A run that Ctrl-C ended (`err`: its stderr, flattened): exit 130, said so, open
    rooms aborted, none left running. The runs' rows and their statuses."""
    assert code == 130, err
    assert "interrupted: open negotiations were recorded as aborted" in err
    rows = await _rows(cli, "SELECT session_id, status FROM negotiation_runs")
    statuses = Counter(r["status"] for r in rows)
    assert statuses["aborted"] > 0, (statuses, err)
    assert "running" not in statuses, (statuses, err)  # as said: none left open
    return rows, statuses


def listed(cli: Cli, session: str) -> list[dict[str, Any]]:
    """`mams negotiations --json` of the session, every row."""
    rows = cli.json("negotiations", "--session", session, "--limit", "5000")["negotiations"]
    assert isinstance(rows, list)
    return rows


async def test_a_killed_run_is_gone_on_with_by_resume(cli: Cli, scenario_file: Path) -> None:
    run = await _start(cli, "run", str(scenario_file), *ARGS)
    try:
        running = await _rooms_open(cli, run, "stopped")  # rooms open: freeze it there
        run.send_signal(signal.SIGSTOP)
        session = str(running[0]["session_id"])
        # No --runs, --seed, --max-rounds: --resume takes the study's plan from the log.
        resume = ("run", "--session", session, "--resume")
        # Alive (if frozen): its rooms are its own, and --resume says so, writing nothing.
        refused = cli(*resume)
        assert refused.returncode == 2, refused.stderr
        assert "still being run by another live process" in flat(refused.stderr)
        assert not any(r["interrupted"] for r in listed(cli, session))  # it is alive
        # A mams broker started on the same database leaves the live run's rooms alone.
        frozen = len(await _rows(cli, "SELECT 1 FROM negotiation_runs WHERE status = 'running'"))
        ready = await broker_ready_line(cli)
        assert "resumed" not in ready, ready
        assert f"{frozen} open negotiation(s) left to live brokers" in ready, ready
        run.kill()  # SIGKILL
        with anyio.fail_after(WAIT):
            await run.wait()
    finally:
        if run.returncode is None:
            run.kill()
            await run.wait()
    interrupted = {str(r["negotiation_id"]) for r in await _rows(cli, _RUNNING)}
    assert interrupted, "every room ended before the kill: nothing was interrupted"
    shown = {r["negotiation_id"] for r in listed(cli, session) if r["interrupted"]}
    assert shown == interrupted
    table = flat(ok(cli("negotiations", "--session", session, "--limit", "5000")).stdout)
    assert f"mams run --session {session} --resume" in table
    report = flat(ok(cli("report", "--session", session, "--no-plots")).stdout)
    assert f"{len(interrupted)} of the unfinished are interrupted" in report
    assert f"mams run --session {session} --resume" in report

    proc = ok(cli(*resume, "--json"))
    assert f"{len(interrupted)} interrupted to go on with" in flat(proc.stderr)
    assert f"as planned on {date.today():%Y-%m-%d}" in flat(proc.stderr)
    assert " ".join(ARGS) in flat(proc.stderr)
    doc = one_json_object(proc.stdout)
    got = {n["negotiation_id"]: n for n in doc["negotiations"]}
    assert interrupted <= got.keys()  # the same rooms, not new ones in their place
    assert {got[nid]["status"] for nid in interrupted} == {"completed"}

    rows = await _rows(cli, "SELECT item_name, seed, status FROM negotiation_runs")
    planned = RUNS * len({r["item_name"] for r in rows})
    assert Counter(r["status"] for r in rows) == {"completed": planned}
    assert len({(r["item_name"], r["seed"]) for r in rows}) == planned  # none run twice
    seeds = {n["seed"] for n in doc["negotiations"]}
    assert seeds <= set(range(3, 3 + RUNS))  # the plan's seeds, no others
    rounds = await _rows(
        cli,
        "SELECT DISTINCT data->>'max_rounds' AS m FROM events WHERE type = 'negotiation.started'",
    )
    assert [r["m"] for r in rounds] == ["6"]  # new rooms too took the plan's --max-rounds
    audit = cli("audit", "--all")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "all clean" in flat(audit.stdout)
    again = ok(cli(*resume, "--json"))
    assert one_json_object(again.stdout)["negotiations"] == []


async def test_ctrl_c_records_open_rooms_as_aborted_and_resume_opens_them_afresh(
    cli: Cli, scenario_file: Path
) -> None:
    log = cli.cwd / "interrupted-run.err"
    with log.open("wb") as stderr:
        run = await _start(cli, "run", str(scenario_file), *ARGS, stderr=stderr)
    try:
        await _rooms_open(cli, run, "interrupted")
        run.send_signal(signal.SIGINT)
        with anyio.fail_after(WAIT):
            code = await run.wait()
    finally:
        if run.returncode is None:
            run.kill()
            await run.wait()
    err = flat(log.read_text(encoding="utf-8"))
    rows, statuses = await _ended_by_ctrl_c(cli, code, err)
    session = str(rows[0]["session_id"])
    assert f"mams run --session {session} --resume" in err

    before = await _rows(cli, "SELECT item_name, seed, status FROM negotiation_runs")
    aborted = {(r["item_name"], r["seed"]) for r in before if r["status"] == "aborted"}
    doc = cli.json("run", "--session", session, "--resume")
    again = {(n["item"], n["seed"]) for n in doc["negotiations"]}
    assert aborted <= again  # each aborted room opened afresh (with those never opened)
    assert len(again) == len(doc["negotiations"]) == RUNS * 3 - statuses["completed"]
    rows = await _rows(cli, "SELECT item_name, seed, status FROM negotiation_runs")
    done = {(r["item_name"], r["seed"]) for r in rows if r["status"] == "completed"}
    assert len(done) == RUNS * 3  # the scenario's 3 items


async def _all_gone(children: list[int]) -> None:
    """Every one of these processes ends within ORPHAN_EXIT_WITHIN (and some slack);
    else fail naming the ones left."""
    with anyio.move_on_after(ORPHAN_EXIT_WITHIN + 10):
        while [c for c in children if process_running(c)]:  # noqa: ASYNC110 (polling /proc)
            await anyio.sleep(0.1)
    alive = [c for c in children if process_running(c)]
    assert not alive, {c: _cmdline(c) for c in alive}


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


@pytest.mark.parametrize("bus", ["shared", "embedded"])
async def test_a_killed_run_processes_takes_its_children_with_it_and_resume_ends_its_rooms(
    cli: Cli, scenario_file: Path, bus: str
) -> None:
    # With its embedded NATS the bus dies with it too, and the children's own stop can
    # hang on it (nats-py's close waiting on a reconnect): they still end, in bounded time.
    env = {k: v for k, v in cli.env.items() if bus == "shared" or k != "NATS_URL"}
    run = await _start(cli, "run", str(scenario_file), "--processes", *ARGS, env=env)
    try:
        rows = await _rooms_open(cli, run, "killed")
        children = _children(run.pid)
        assert len(children) >= 3, children  # broker, sellers, buyer
        run.kill()  # SIGKILL: it cannot stop them itself
        await run.wait()
        await _all_gone(children)
    finally:
        if run.returncode is None:
            run.kill()
            await run.wait()
    session = str(rows[0]["session_id"])
    # Its broker left the open rooms open (not aborted): a --resume goes on with them.
    listed_rows = listed(cli, session)
    assert {r["status"] for r in listed_rows} <= {"running", "completed"}
    interrupted = {r["negotiation_id"] for r in listed_rows if r["interrupted"]}
    assert interrupted
    completed = {(r["item"], r["seed"]) for r in listed_rows if r["status"] == "completed"}
    # Resumed as processes too, with the study grown by 10 runs: its broker goes on with
    # the interrupted rooms, its buyer takes them back and opens only the rooms not had.
    proc = ok(
        cli(
            "run",
            "--session",
            session,
            "--resume",
            "--processes",
            "--runs",
            str(RUNS + 10),
            "--json",
        )
    )
    to_open = (RUNS + 10) * 3 - len(completed) - len(interrupted)
    said = flat(proc.stderr)
    assert f"{len(interrupted)} interrupted to go on with; {to_open} to open" in said
    assert f"resuming {len(interrupted)} open room(s) of buyer" in said  # the buyer process
    doc = one_json_object(proc.stdout)
    got = {n["negotiation_id"]: n for n in doc["negotiations"]}
    assert interrupted <= got.keys()  # the same rooms, not new ones in their place
    assert {got[nid]["status"] for nid in interrupted} == {"completed"}
    assert not completed & {(n["item"], n["seed"]) for n in got.values()}  # none run again
    rows = await _rows(cli, "SELECT item_name, seed, status FROM negotiation_runs")
    assert {r["status"] for r in rows} == {"completed"}
    assert len({(r["item_name"], r["seed"]) for r in rows}) == (RUNS + 10) * 3 == len(rows)
    assert len(got) == len(rows) - len(completed)
    audit = cli("audit", "--all")
    assert audit.returncode == 0, audit.stdout + audit.stderr


async def test_ctrl_c_at_the_terminal_stops_a_run_processes_in_order(
    cli: Cli, scenario_file: Path
) -> None:
    """Ctrl-C signals the terminal's whole foreground process group. The children (and
    the embedded NATS) have sessions of their own, so only `mams run` hears it, and it
    stops them in order: the broker records the open rooms as aborted while the bus and
    the database are still up, as the message then says."""
    env = {k: v for k, v in cli.env.items() if k != "NATS_URL"}  # its embedded NATS
    log = cli.cwd / "interrupted-processes.err"
    with log.open("wb") as stderr:
        run = await anyio.open_process(
            [*mams_command(), "run", str(scenario_file), "--processes", *ARGS],
            env=env,
            cwd=cli.cwd,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # its own process group, as a terminal's job is
        )
    try:
        await _rooms_open(cli, run, "interrupted")
        children = _children(run.pid)
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C does
        with anyio.fail_after(WAIT):
            code = await run.wait()
        await _all_gone(children)
    finally:
        if run.returncode is None:
            run.kill()
            await run.wait()
    await _ended_by_ctrl_c(cli, code, flat(log.read_text(encoding="utf-8")))
