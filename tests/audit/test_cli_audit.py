"""`mams audit`, `mams export` and `mams import` as subprocesses against the test's schema."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import anyio
import asyncpg
import pytest

from tests.audit.conftest import Market
from tests.e2e.test_cli import base_env, mams_command, one_json_object, schema_dsn

pytestmark = pytest.mark.e2e


def run(
    *args: str,
    database_url: str,
    schema: str,
    tmp_path: Path,
    stdin: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = base_env(tmp_path / "data")
    env["DATABASE_URL"] = schema_dsn(database_url, schema)
    env.update(extra_env or {})
    return subprocess.run(
        [*mams_command(), *args],
        env=env,
        cwd=tmp_path,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def read_models(database_url: str, schema: str, nid: UUID) -> list[list[tuple[object, ...]]]:
    """A run's read-model rows, without the timestamps of when they were written."""
    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        queries = (
            "SELECT item_name, status, brain, max_rounds, seed, rounds, buyer, sellers"
            " FROM negotiation_runs WHERE negotiation_id = $1",
            "SELECT seq, message_id, round, sender, recipients, text, offer_unit_price,"
            " offer_quantity FROM messages WHERE negotiation_id = $1 ORDER BY seq",
            "SELECT type, seller, unit_price, quantity, total, rounds FROM outcomes"
            " WHERE negotiation_id = $1",
        )
        return [[tuple(r.values()) for r in await conn.fetch(q, nid)] for q in queries]
    finally:
        await conn.close()


async def test_audit_export_import_over_the_cli(
    market: Market,
    database_url: str,
    pg_schema: str,
    other_schema: str,
    tmp_path: Path,
) -> None:
    nid = market.rooms[0].negotiation_id

    def mams(*args: str, schema: str = pg_schema) -> subprocess.CompletedProcess[str]:
        return run(*args, database_url=database_url, schema=schema, tmp_path=tmp_path)

    # Clean: by id prefix, and --all --json.
    proc = mams("audit", str(nid)[:8])
    assert proc.returncode == 0, proc.stderr
    assert "chain verified" in proc.stdout
    proc = mams("audit", "--all", "--json")
    assert proc.returncode == 0, proc.stderr
    report = one_json_object(proc.stdout)
    assert report["ok"] is True
    assert {s["negotiation_id"] for s in report["streams"]} == {
        str(r.negotiation_id) for r in market.rooms
    }
    assert all(s["first_broken"] is None and s["ended"] for s in report["streams"])

    # Export to a file through stdout, import into an empty schema, audit it there.
    proc = mams("export", str(nid), "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr
    archive = tmp_path / "room.jsonl"
    archive.write_text(proc.stdout)
    lines = proc.stdout.splitlines()
    assert len(lines) == await market.store.last_seq(nid) + 1  # and its session's line
    proc = mams("import", str(archive), "--json", schema=other_schema)
    assert proc.returncode == 0, proc.stderr
    result = one_json_object(proc.stdout)
    imported = result["imported"]
    original = await market.store.read(nid)
    assert imported == [
        {"negotiation_id": str(nid), "events": len(original), "head": original[-1].hash.hex()}
    ]
    proc = mams("audit", str(nid), "--json", schema=other_schema)
    assert proc.returncode == 0, proc.stderr
    assert one_json_object(proc.stdout)["streams"][0]["head"] == original[-1].hash.hex()
    # Its read models are there too (so it is listed and reported like any run), under
    # its session as the file carries it (the phone scenario: 2 items, 3 sellers).
    started = market.rooms[0].state.started
    assert started is not None
    assert result["sessions_rebuilt"] == [
        {"session_id": str(started.session_id), "items": 2, "sellers": 3}
    ]
    assert await read_models(database_url, other_schema, nid) == await read_models(
        database_url, pg_schema, nid
    )
    proc = mams("negotiations", schema=other_schema)
    assert proc.returncode == 0, proc.stderr
    assert str(nid)[:8] in proc.stdout
    # The same file again writes nothing: the log holds that very chain.
    proc = mams("import", str(archive), "--json", schema=other_schema)
    assert proc.returncode == 0, proc.stderr
    again = one_json_object(proc.stdout)
    assert again["imported"] == []
    assert again["identical"] == [{"negotiation_id": str(nid), "head": original[-1].hash.hex()}]
    assert "already in this log with the same chain" in proc.stderr

    # Tamper: change a price by SQL; audit exits 1 and names the first broken link.
    seq = next(e.seq for e in original if e.type == "seller.replied" and b"offer" in e.data)
    await market.pool.execute(
        "UPDATE events SET data = jsonb_set(data, '{text}', '\"edited\"') "
        "WHERE stream_id = $1 AND seq = $2",
        nid,
        seq,
    )
    proc = mams("audit", "--all", "--json")
    assert proc.returncode == 1, proc.stderr
    streams = {s["negotiation_id"]: s for s in one_json_object(proc.stdout)["streams"]}
    broken = streams[str(nid)]
    assert broken["ok"] is False
    assert broken["first_broken"]["seq"] == seq
    assert broken["first_broken"]["check"] == "hash"
    proc = mams("audit", str(nid))
    assert proc.returncode == 1
    assert f"first broken link at seq {seq}" in " ".join(proc.stdout.split())

    # Bad input exits 2.
    assert mams("audit").returncode == 2
    assert mams("audit", "ffffffff").returncode == 2


async def test_audit_all_lists_what_is_broken_and_finds_a_deleted_run(
    market: Market, database_url: str, pg_schema: str, tmp_path: Path
) -> None:
    def mams(*args: str) -> subprocess.CompletedProcess[str]:
        return run(*args, database_url=database_url, schema=pg_schema, tmp_path=tmp_path)

    kept, deleted = (r.negotiation_id for r in market.rooms[:2])
    # Clean: one summary line; each stream's line only with --each.
    proc = mams("audit", "--all")
    assert proc.returncode == 0, proc.stderr
    assert "2 stream(s) audited" in proc.stdout
    assert "all clean" in proc.stdout
    assert str(kept) not in proc.stdout
    proc = mams("audit", "--all", "--each")
    assert proc.returncode == 0, proc.stderr
    assert f"ok     {kept}" in proc.stdout

    # Every row of a run deleted: the read models still know it, so the log is broken.
    await market.pool.execute("DELETE FROM events WHERE stream_id = $1", deleted)
    proc = mams("audit", "--all", "--jobs", "1")
    assert proc.returncode == 1, proc.stderr
    out = " ".join(proc.stdout.split())
    assert f"BROKEN {deleted} first broken link at seq 0 (missing)" in out
    assert "rows were deleted" in out
    assert str(kept) not in out
    assert "1 broken" in out
    proc = mams("audit", str(deleted), "--json")
    assert proc.returncode == 1, proc.stderr
    (stream,) = one_json_object(proc.stdout)["streams"]
    assert stream["first_broken"]["check"] == "missing"
    # A run nobody knows is still bad input; so is --jobs 0.
    assert mams("audit", str(uuid4())).returncode == 2
    proc = mams("audit", "--all", "--jobs", "0")
    assert proc.returncode == 2
    assert "--jobs must be at least 1" in proc.stderr


async def test_export_a_session_or_the_whole_log_and_import_it_elsewhere(
    market: Market, database_url: str, pg_schema: str, other_schema: str, tmp_path: Path
) -> None:
    def mams(*args: str, schema: str = pg_schema) -> subprocess.CompletedProcess[str]:
        return run(*args, database_url=database_url, schema=schema, tmp_path=tmp_path)

    started = market.rooms[0].state.started
    assert started is not None
    rooms = {str(r.negotiation_id) for r in market.rooms}
    total = sum([await market.store.last_seq(r.negotiation_id) for r in market.rooms])

    # A session's negotiations, to stdout.
    proc = mams("export", "--session", str(started.session_id))
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == total + 1  # and the session's line
    assert f"exported {total} events of 2 stream(s) of session" in proc.stderr

    # The whole log, to a file (no .partial left behind), then into an empty schema.
    archive = tmp_path / "log.jsonl"
    proc = mams("export", "--all", "-o", str(archive))
    assert proc.returncode == 0, proc.stderr
    assert [p.name async for p in anyio.Path(tmp_path).glob("log.jsonl*")] == ["log.jsonl"]
    assert len(archive.read_bytes().splitlines()) == total + 1  # and the session's line
    proc = mams("import", str(archive), "--json", schema=other_schema)
    assert proc.returncode == 0, proc.stderr
    imported = one_json_object(proc.stdout)["imported"]
    assert {s["negotiation_id"] for s in imported} == rooms
    proc = mams("audit", "--all", "--json", schema=other_schema)
    assert proc.returncode == 0, proc.stderr
    audited = one_json_object(proc.stdout)
    heads = {s["negotiation_id"]: s["head"] for s in audited["streams"]}
    assert heads == {s["negotiation_id"]: s["head"] for s in imported}
    proc = mams("audit", "--all", "--json")
    assert proc.returncode == 0, proc.stderr
    assert audited["digest"] == one_json_object(proc.stdout)["digest"]  # the same log
    # The same archive again, from stdin: every stream is there already.
    proc = run(
        "import",
        "-",
        "--json",
        database_url=database_url,
        schema=other_schema,
        tmp_path=tmp_path,
        stdin=archive.read_text(),
    )
    assert proc.returncode == 0, proc.stderr
    again = one_json_object(proc.stdout)
    assert (again["imported"], len(again["identical"])) == ([], len(rooms))

    # Bad input exits 2 and writes nothing.
    assert mams("export").returncode == 2
    assert mams("export", "--all", "--session", str(started.session_id)).returncode == 2
    proc = mams("export", "--session", "nope")
    assert proc.returncode == 2
    assert "not a session id" in proc.stderr
    proc = mams("export", "--session", str(uuid4()))
    assert proc.returncode == 2
    assert "no negotiations of session" in proc.stderr
    proc = mams("export", "--all", "-o", str(tmp_path / "missing" / "x.jsonl"))
    assert proc.returncode == 2
    assert "cannot write" in proc.stderr
    assert not (tmp_path / "missing").exists()


async def test_a_saved_audit_pins_the_log_against_whole_runs_deleted(
    market: Market, database_url: str, pg_schema: str, tmp_path: Path
) -> None:
    def mams(*args: str) -> subprocess.CompletedProcess[str]:
        return run(*args, database_url=database_url, schema=pg_schema, tmp_path=tmp_path)

    proc = mams("audit", "--all", "--json")
    assert proc.returncode == 0, proc.stderr
    saved = one_json_object(proc.stdout)
    pin = tmp_path / "pin.json"
    pin.write_text(proc.stdout)
    proc = mams("audit", "--all", "--against", str(pin), "--json")
    assert proc.returncode == 0, proc.stderr
    assert one_json_object(proc.stdout)["digest"] == saved["digest"]
    assert "against 2 pinned stream(s)" in proc.stderr

    # A whole run removed, read models and all: per-stream chains cannot tell...
    gone = market.rooms[0].negotiation_id
    for table in ("messages", "outcomes", "negotiation_runs"):
        await market.pool.execute(f"DELETE FROM {table} WHERE negotiation_id = $1", gone)
    await market.pool.execute("DELETE FROM events WHERE stream_id = $1", gone)
    proc = mams("audit", "--all", "--json")
    assert proc.returncode == 0, proc.stderr
    assert one_json_object(proc.stdout)["digest"] != saved["digest"]
    # ...the pin does.
    proc = mams("audit", "--all", "--against", str(pin))
    assert proc.returncode == 1, proc.stderr
    out = " ".join(proc.stdout.split())
    assert f"BROKEN {gone} first broken link at seq 0 (pin)" in out
    assert "1 broken" in out

    # A pin that is not a saved audit is bad input.
    (tmp_path / "bad.json").write_text('{"streams": [{"negotiation_id": 1}]}')
    proc = mams("audit", "--all", "--against", str(tmp_path / "bad.json"))
    assert proc.returncode == 2
    assert "is not the output of `mams audit --all --json`" in proc.stderr
    assert mams("audit", "--all", "--against", str(tmp_path / "none.json")).returncode == 2


async def test_audit_and_report_in_worker_processes_keep_stdout_json(
    market: Market, database_url: str, pg_schema: str, tmp_path: Path
) -> None:
    """The CLI's own worker path (spawned from the `mams` script) on a small log: the
    same results as in one process, and stdout still exactly one JSON object."""

    def mams(*args: str, parallel_from: str) -> dict[str, Any]:
        proc = run(
            *args,
            "--json",
            database_url=database_url,
            schema=pg_schema,
            tmp_path=tmp_path,
            extra_env={"MAMS_PARALLEL_FROM": parallel_from},
        )
        assert proc.returncode == 0, proc.stderr
        return one_json_object(proc.stdout)

    for command in (("audit", "--all"), ("report", "--no-plots")):
        in_workers = mams(*command, "--jobs", "2", parallel_from="0")
        here = mams(*command, "--jobs", "1", parallel_from="0")
        assert in_workers == here
    assert len(in_workers["rooms"]) == len(market.rooms)
