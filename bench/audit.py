"""Audit and archive throughput: `mams audit --all`, `mams export --all` and `mams import`
over a log of N negotiations with S sellers each.

Usage: python bench/audit.py [--negotiations 2000] [--sellers 10] [--jobs 1 2]
       [--nats URL] [--dsn DSN]

Builds a real log in a throwaway schema (baseline brains over real NATS and PostgreSQL,
NATS_URL / DATABASE_URL, defaults to 127.0.0.1; about 100 events per negotiation with 10
sellers), then, in the same run:

1. the raw read: the same rows read by the same queries, a chunk of streams at a time
   (`mams.storage.auditlog.CHUNK`), with nothing checked: the ceiling an audit is held to;
2. the audit (`mams.storage.auditlog.audit_log`, what `mams audit --all` runs) with each
   `--jobs` value: hash chains recomputed, seq order, every stream replayed and its
   guardrail and visibility invariants checked;
3. the export of every stream (`mams export --all`, into memory), against the raw read;
4. into a second, empty schema: the raw COPY of the exported rows into a bare events-shaped
   table, then the import of the export (`mams import`: parse, chain checks, appends
   through the event store with its read models, sessions rebuilt), against the COPY.

Prints events/s and streams/s for each, and each ratio to its raw baseline. Asserts
nothing (it does check that every stream came back clean, and says so if not).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import anyio
import asyncpg
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.market import run_session, scenario
from mams.audit import import_archive
from mams.bus.base import Bus
from mams.bus.nats import NatsBus
from mams.storage.auditlog import CHUNK, audit_log, default_jobs
from mams.storage.eventstore import PostgresEventStore
from mams.storage.export import IMPORT_BATCH, Archive, export_streams, iter_events, parse_lines
from mams.storage.model import StoredEvent
from mams.storage.pg import create_pool, init_connection, open_store
from mams.storage.readmodels import ReadModelProjector

ROOMS_PER_RUN = 1000  # negotiations per market run while building the log


def schema_dsn(dsn: str, schema: str) -> str:
    """`dsn` with `options=-csearch_path=<schema>`: what the audit's workers connect to."""
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


async def build_log(nats_url: str, dsn: str, schema: str, negotiations: int, sellers: int) -> None:
    """Run `negotiations` rooms with baseline brains into the schema's log."""
    pool, store = await open_store(dsn, schema, projector=ReadModelProjector())
    try:
        done = 0
        while done < negotiations:
            k = min(ROOMS_PER_RUN, negotiations - done)

            async def connect(name: str) -> Bus:
                return await NatsBus.connect(nats_url, name=name)

            await run_session(pool, store, scenario(k, sellers), connect, seed=done)
            done += k
            print(f"  log: {done:,}/{negotiations:,} negotiations", flush=True)
    finally:
        await pool.close()


async def raw_read(dsn: str, ids: list[uuid.UUID]) -> tuple[float, int]:
    """Seconds to read every event of `ids` a chunk at a time, and how many there were."""
    conn = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)
        start, rows = time.perf_counter(), 0
        for i in range(0, len(ids), CHUNK):
            rows += len(
                await conn.fetch(
                    "SELECT stream_id, seq, event_id, type, data, recorded_at, prev_hash, hash"
                    " FROM events WHERE stream_id = ANY ($1::uuid[]) ORDER BY stream_id, seq",
                    ids[i : i + CHUNK],
                )
            )
        return time.perf_counter() - start, rows
    finally:
        await conn.close()


async def audited(dsn: str, ids: list[uuid.UUID], jobs: int) -> tuple[float, int, int]:
    """Seconds to audit `ids` with `jobs` processes, events audited, broken streams."""
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        store = PostgresEventStore(pool, dsn=dsn)
        start, events, broken = time.perf_counter(), 0, 0
        async for chunk in audit_log(store, ids, dsn=dsn, jobs=jobs):
            events += sum(r.events for r in chunk)
            broken += sum(not r.ok for r in chunk)
        return time.perf_counter() - start, events, broken
    finally:
        await pool.close()


async def exported(dsn: str, ids: list[uuid.UUID]) -> tuple[float, int, bytes]:
    """Seconds to export `ids` (as `mams export --all` does, into memory), events, lines."""
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        store = PostgresEventStore(pool, dsn=dsn)
        start, events, parts = time.perf_counter(), 0, list[bytes]()
        async for _, chunk, lines in export_streams(store, ids):
            events += len(chunk)
            parts.append(lines)
        return time.perf_counter() - start, events, b"".join(parts)
    finally:
        await pool.close()


async def raw_copy(dsn: str, events: list[StoredEvent]) -> float:
    """Seconds to COPY the rows into a bare events-shaped table, IMPORT_BATCH at a time."""
    conn = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)
        await conn.execute(
            "CREATE TABLE raw_events (stream_id uuid, seq integer, event_id uuid NOT NULL"
            " UNIQUE, type text NOT NULL, data jsonb NOT NULL, prev_hash bytea, hash bytea,"
            " PRIMARY KEY (stream_id, seq))"
        )
        rows = [
            (e.stream_id, e.seq, e.event_id, e.type, e.data, e.prev_hash, e.hash) for e in events
        ]
        columns = ["stream_id", "seq", "event_id", "type", "data", "prev_hash", "hash"]
        start = time.perf_counter()
        for i in range(0, len(rows), IMPORT_BATCH):
            await conn.copy_records_to_table(
                "raw_events", records=rows[i : i + IMPORT_BATCH], columns=columns
            )
        return time.perf_counter() - start
    finally:
        await conn.close()


async def imported(dsn: str, lines: bytes) -> tuple[float, int]:
    """Seconds to import `lines` as `mams import` does: read twice, a line at a time (chains
    checked, then appended with the read models)."""
    pool, store = await open_store(dsn, projector=ReadModelProjector())
    try:
        start = time.perf_counter()
        archive = Archive(lambda: iter_events(lines.splitlines(), source="bench"))
        archive.scan()
        result, _ = await import_archive(pool, store, archive, source="bench")
        return time.perf_counter() - start, sum(result.appended.values())
    finally:
        await pool.close()


def row(label: str, seconds: float, events: int, streams: int, baseline: float | None) -> None:
    rate = events / seconds
    ratio = f"{rate / baseline:10.3f}" if baseline else ""
    print(f"{label:>16} {seconds:7.2f} {rate:10,.0f} {streams / seconds:10,.0f} {ratio}")


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--negotiations", type=int, default=2000)
    p.add_argument("--sellers", type=int, default=10)
    p.add_argument("--jobs", type=int, nargs="+", default=sorted({1, default_jobs()}))
    p.add_argument("--nats", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument(
        "--dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    args = p.parse_args()
    logging.disable(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        print(f"building a log of {args.negotiations:,} negotiations, {args.sellers} sellers each")
        await build_log(args.nats, args.dsn, schema, args.negotiations, args.sellers)
        dsn = schema_dsn(args.dsn, schema)
        ids = [
            r["stream_id"]
            for r in await admin.fetch(
                f'SELECT stream_id FROM "{schema}".events GROUP BY stream_id '
                "ORDER BY min(global_pos)"
            )
        ]
        seconds, rows = await raw_read(dsn, ids)
        raw_rate = rows / seconds
        print(f"\n{'run':>16} {'secs':>7} {'events/s':>10} {'streams/s':>10} {'/raw':>10}")
        row("raw read", seconds, rows, len(ids), None)
        for jobs in args.jobs:
            seconds, events, broken = await audited(dsn, ids, jobs)
            row(f"audit, {jobs} job{'s' if jobs > 1 else ''}", seconds, events, len(ids), raw_rate)
            if broken or events != rows:
                print(f"  !! {broken} broken streams, {events:,} events audited of {rows:,}")
        seconds, events, lines = await exported(dsn, ids)
        row("export", seconds, events, len(ids), raw_rate)
        # Import into a second, empty schema: against a bare COPY of the same rows.
        target = f"{schema}_import"
        await admin.execute(f'CREATE SCHEMA "{target}"')
        try:
            parsed = parse_lines(lines.splitlines(), source="bench")
            copy_seconds = await raw_copy(schema_dsn(args.dsn, target), parsed)
            row("raw COPY", copy_seconds, len(parsed), len(ids), None)
            seconds, events = await imported(schema_dsn(args.dsn, target), lines)
            row("import", seconds, events, len(ids), len(parsed) / copy_seconds)
        finally:
            await admin.execute(f'DROP SCHEMA "{target}" CASCADE')
        print(
            f"\n{len(ids):,} streams, {rows:,} events ({len(lines) / 1e6:,.0f} MB exported); "
            f"{os.cpu_count()} cores. Audit and export are against the raw read, import "
            "against the raw COPY."
        )
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


if __name__ == "__main__":
    anyio.run(main)
