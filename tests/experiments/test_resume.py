"""`mams experiment` killed (SIGKILL) halfway, then `--resume`: every room of every arm runs
once, the open ones going on from their log; `mams compare` then reads them all.

Real OS processes, the real NATS and PostgreSQL. The run is killed once rooms are open
in the log (a condition, polled), never after a delay.
"""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from pathlib import Path

import anyio
import asyncpg
from anyio.abc import Process

from mams.domain.experiment import METRICS
from tests.e2e.test_cli import Cli, cli, flat, ok, one_json_object
from tests.experiments.helpers import EXAMPLE, spec_text
from tests.processes.helpers import mams_command

__all__ = ["cli"]  # the fixture, used by name

REPEATS = 60  # x 2 items x 2 arms = 240 rooms, 10 at a time
WAIT = 60.0
_ROOMS = (
    "SELECT a.arm, a.scenario, r.item_name, r.seed, r.status FROM negotiation_runs r "
    "JOIN experiment_arms a USING (session_id)"
)


async def _rows(cli: Cli, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(cli.database_url, server_settings={"search_path": cli.schema})
    try:
        return list(await conn.fetch(sql))
    except asyncpg.UndefinedTableError:  # the run has not created its tables yet
        return []
    finally:
        await conn.close()


async def _killed_halfway(cli: Cli, run: Process) -> None:
    """SIGKILL `run` once it has completed rooms and has others open."""
    with anyio.fail_after(WAIT):
        while True:
            statuses = Counter(r["status"] for r in await _rows(cli, _ROOMS))
            if statuses["completed"] >= 40 and statuses["running"]:
                break
            assert run.returncode is None, "the experiment ended before it could be killed"
            await anyio.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    with anyio.fail_after(WAIT):
        await run.wait()


async def test_a_killed_experiment_resumes_and_runs_no_room_twice(cli: Cli) -> None:
    spec = cli.cwd / "spec.toml"
    spec.write_text(
        spec_text(("a", ""), ("b", "max_rounds = 3"), repeats=REPEATS, extra="rooms_at_once = 10"),
        encoding="utf-8",
    )
    log = cli.cwd / "experiment.err"
    with log.open("wb") as stderr:
        run = await anyio.open_process(
            [*mams_command(), "experiment", str(spec)],
            env=cli.env,
            cwd=cli.cwd,
            stdout=stderr,
            stderr=subprocess.STDOUT,
        )
    try:
        await _killed_halfway(cli, run)
    finally:
        if run.returncode is None:
            run.kill()
            await run.wait()
    before = await _rows(cli, _ROOMS)
    interrupted = [r for r in before if r["status"] == "running"]
    assert interrupted, "nothing was open at the kill"
    experiment_id = next(
        line.split()[1]
        for line in log.read_text(encoding="utf-8").splitlines()
        if line.startswith("experiment:")
    )

    doc = cli.json("experiment", "--resume", experiment_id)
    planned = 2 * 2 * REPEATS
    assert doc["rooms_planned"] == planned
    assert doc["rooms_completed"] == planned
    done = sum(r["status"] == "completed" for r in before)
    assert doc["rooms_run"] == planned - done  # the interrupted ones and those never opened
    rows = await _rows(cli, _ROOMS)
    assert Counter(r["status"] for r in rows) == {"completed": planned}
    per_room = Counter((r["arm"], r["scenario"], r["item_name"], r["seed"]) for r in rows)
    assert len(per_room) == planned
    assert set(per_room.values()) == {1}  # none run twice
    assert {r["seed"] for r in rows} == set(range(1, 1 + REPEATS))

    again = cli.json("experiment", str(spec), "--resume", experiment_id)  # the same spec
    assert again["rooms_run"] == 0
    other = cli.cwd / "other.toml"
    other.write_text(spec.read_text(encoding="utf-8").replace("max_rounds = 3", "max_rounds = 4"))
    refused = cli("experiment", str(other), "--resume", experiment_id)
    assert refused.returncode == 2
    assert "is not the spec experiment" in flat(refused.stderr)

    report = cli.cwd / "report.md"
    compared = cli.json(
        "compare", experiment_id, "--markdown", str(report), "--plots", str(cli.cwd / "plots")
    )
    assert compared["rooms"] == {"a": 2 * REPEATS, "b": 2 * REPEATS}
    assert {s["metric"] for s in compared["arms"]} == {k for k, _ in METRICS}
    assert {c["arm"] for c in compared["comparisons"]} == {"b"}
    assert [Path(p).name for p in compared["plots"]] == ["arms.png", "differences.png"]
    sizes = [(await anyio.Path(p).stat()).st_size for p in compared["plots"]]
    assert all(sizes)
    text = await anyio.Path(report).read_text(encoding="utf-8")
    assert "| rounds | b |" in text
    assert "Holm" in text
    shown = flat(ok(cli("compare", experiment_id)).stdout)
    assert "significant" in shown
    assert one_json_object(ok(cli("compare", experiment_id, "--json")).stdout) == compared | {
        "plots": [],
        "markdown": None,
    }


async def test_an_experiment_over_a_stored_session(cli: Cli) -> None:
    run = cli.json("run", str(EXAMPLE), "--buyer-model", "baseline", "--seller-model", "baseline")
    session = run["session_id"]
    text = spec_text(("a", ""), ("b", 'buyer_strategy = "accept_first"'), repeats=3)
    spec = cli.cwd / "spec.toml"
    spec.write_text(text.replace(f'scenarios = ["{EXAMPLE}"]', f'session = "{session}"'))
    doc = cli.json("experiment", str(spec))
    assert doc["rooms_planned"] == doc["rooms_completed"] == 2 * 2 * 3
    assert {(a["arm"], a["scenario"]) for a in doc["arms"]} == {("a", session), ("b", session)}
    assert session not in {a["session_id"] for a in doc["arms"]}  # a session per arm

    missing = "3f2b6c1e-8d4a-4b7e-9c1d-2a5e6f7a8b9c"
    spec.write_text(text.replace(f'scenarios = ["{EXAMPLE}"]', f'session = "{missing}"'))
    refused = cli("experiment", str(spec))
    assert refused.returncode == 2
    assert f"session: no session {missing}" in flat(refused.stderr)
