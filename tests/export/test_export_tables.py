"""`mams export --format parquet|csv -o OUT_DIR` as a subprocess: the rooms and messages
tables read back with pyarrow match the log they came from."""

from __future__ import annotations

import subprocess
import uuid
from decimal import Decimal
from pathlib import Path

import asyncpg
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from mams.domain.events import BuyerSaid, BuyerWalkedAway, DealClosed, SellerReplied, decode_event
from mams.storage.tables import has_experiments
from tests.audit.conftest import Market, market
from tests.e2e.test_cli import base_env, mams_command, schema_dsn

__all__ = ["market"]
pytestmark = pytest.mark.e2e


def run(*args: str, database_url: str, schema: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = base_env(cwd / "data")
    env["DATABASE_URL"] = schema_dsn(database_url, schema)
    return subprocess.run(
        [*mams_command(), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _message_events(market: Market) -> dict[str, list[tuple[str, str]]]:
    """Each room's message events from the log: (sender, text), in log order."""
    out: dict[str, list[tuple[str, str]]] = {}
    for room in market.rooms:
        started = room.state.started
        assert started is not None
        rows = await market.store.read(room.negotiation_id)
        said: list[tuple[str, str]] = []
        for row in rows:
            event = decode_event(row.data)
            if isinstance(event, BuyerSaid | DealClosed | BuyerWalkedAway):
                said.append((started.buyer.agent_id, event.text))
            elif isinstance(event, SellerReplied):
                said.append((event.seller, event.text))
        out[str(room.negotiation_id)] = said
    return out


async def test_parquet_and_csv_tables_match_the_log(
    market: Market, database_url: str, pg_schema: str, tmp_path: Path
) -> None:
    said = await _message_events(market)
    for fmt in ("parquet", "csv"):
        out_dir = tmp_path / fmt
        proc = run(
            "export", "--format", fmt, "-o", str(out_dir),
            database_url=database_url, schema=pg_schema, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in out_dir.iterdir()) == [f"messages.{fmt}", f"rooms.{fmt}"]
        if fmt == "parquet":
            rooms = pq.read_table(out_dir / "rooms.parquet").to_pylist()
            messages = pq.read_table(out_dir / "messages.parquet").to_pylist()
        else:
            rooms = pa_csv.read_csv(out_dir / "rooms.csv").to_pylist()
            messages = pa_csv.read_csv(out_dir / "messages.csv").to_pylist()

        # One row per room, with the room's outcome and cast.
        assert len(rooms) == len(market.rooms)
        by_id = {r["negotiation_id"]: r for r in rooms}
        for room in market.rooms:
            row = by_id[str(room.negotiation_id)]
            started = room.state.started
            outcome = room.state.outcome
            assert started is not None
            assert outcome is not None
            assert row["session_id"] == str(started.session_id)
            assert row["item_name"] == started.item_name
            assert row["seed"] == started.seed
            assert row["status"] == "completed"
            assert row["outcome"] == outcome.type
            assert row["buyer_model"] == started.buyer.brain
            assert row["sellers"] == len(started.sellers)
            assert row["messages"] == len(said[str(room.negotiation_id)])
            assert row["arm"] is None
            assert row["experiment_id"] is None
            styles = [s.style for s in started.sellers]
            if fmt == "parquet":
                assert row["seller_styles"] == styles
                price = row["unit_price"]
            else:
                assert row["seller_styles"] == ";".join(styles)
                price = None if row["unit_price"] is None else Decimal(str(row["unit_price"]))
            if outcome.type == "deal":
                assert price == outcome.unit_price
            else:
                assert price is None

        # One row per message, in log order, with the texts the log holds.
        assert len(messages) == sum(len(v) for v in said.values())
        for nid, expected in said.items():
            got = [(m["sender"], m["text"] or "") for m in messages if m["negotiation_id"] == nid]
            assert got == expected
        assert all(m["round"] >= 1 for m in messages)


async def test_an_experiment_arm_is_exported_with_its_rooms(
    market: Market, database_url: str, pg_schema: str, tmp_path: Path
) -> None:
    async with market.pool.acquire() as conn:
        if not await has_experiments(conn):
            pytest.skip("this log has no experiment_arms table (migration 0013)")
        session = market.rooms[0].state.started
        assert session is not None
        experiment = uuid.uuid4()
        await conn.execute(
            "INSERT INTO experiments (experiment_id, name, spec) VALUES ($1, 'ab', '{}')",
            experiment,
        )
        await conn.execute(
            "INSERT INTO experiment_arms (experiment_id, arm, scenario, session_id)"
            " VALUES ($1, 'control', 'phone', $2)",
            experiment,
            session.session_id,
        )
    proc = run(
        "export", "--format", "parquet", "--experiment", str(experiment), "-o", str(tmp_path / "x"),
        database_url=database_url, schema=pg_schema, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rooms = pq.read_table(tmp_path / "x" / "rooms.parquet").to_pylist()
    assert len(rooms) == len(market.rooms)
    assert {(r["experiment_id"], r["arm"], r["scenario"]) for r in rooms} == {
        (str(experiment), "control", "phone")
    }


async def test_bad_table_exports_exit_2_and_jsonl_is_unchanged(
    market: Market, database_url: str, pg_schema: str, tmp_path: Path
) -> None:
    def mams(*args: str) -> subprocess.CompletedProcess[str]:
        return run(*args, database_url=database_url, schema=pg_schema, cwd=tmp_path)

    proc = mams("export", "--format", "parquet")
    assert proc.returncode == 2
    assert "-o OUT_DIR" in proc.stderr
    proc = mams("export", "--format", "csv", "--experiment", "nope", "-o", str(tmp_path / "y"))
    assert proc.returncode == 2
    proc = mams("export", "--experiment", str(uuid.uuid4()))
    assert proc.returncode == 2
    assert "--format parquet or csv" in proc.stderr
    (tmp_path / "file").write_text("")
    proc = mams("export", "--format", "csv", "-o", str(tmp_path / "file"))
    assert proc.returncode == 2
    # The archive export is as it was: one negotiation's stream as JSON Lines.
    nid = market.rooms[0].negotiation_id
    proc = mams("export", str(nid))
    assert proc.returncode == 0, proc.stderr
    assert str(nid) in proc.stdout
    # A table export of one negotiation (an id prefix, as the archive export takes).
    proc = mams("export", str(nid)[:8], "--format", "parquet", "-o", str(tmp_path / "one"))
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(tmp_path / "one" / "rooms.parquet").num_rows == 1
    conn = await asyncpg.connect(database_url, server_settings={"search_path": pg_schema})
    try:
        count = await conn.fetchval("SELECT count(*) FROM messages WHERE negotiation_id = $1", nid)
    finally:
        await conn.close()
    assert pq.read_table(tmp_path / "one" / "messages.parquet").num_rows == count
