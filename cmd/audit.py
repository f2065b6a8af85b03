"""`mams audit`, `mams export` and `mams import`: tamper evidence and archiving of the log.

`mams audit NEGOTIATION_ID` (an id or its first characters) or `mams audit --all` checks
each stream's hash chain, seq order, and the guardrail and visibility invariants over the
stored events (see `mams.storage.audit`), and reports the first broken link. Exit status:
0 when every audited stream is clean, 1 when something is broken, 2 for bad input.

`--json` prints one object on stdout:

    {"ok": false,
     "streams": [
       {"negotiation_id": "...", "ok": false, "events": 17, "last_seq": 17,
        "ended": true, "kind": "negotiation", "head": "<hex hash of the last event>",
        "first_broken": {"seq": 5, "check": "hash", "why": "..."},
        "problems": [{"seq": 5, "check": "hash", "why": "..."}, ...]}]}

`check` is one of: seq (gap or duplicate), unhashed (row from before the chain), hash
(row content changed), link (prev_hash is not the previous row's hash), decode, type,
order (stream shape), guardrail, visibility, replay, missing (the read models record the
run, the log holds none of its events; `events` is 0), pin (with `--against`: the stream no
longer holds the event the saved audit ended at, or holds it with another hash).
`first_broken` is null when clean. With `--all`, `"digest"` is one sha256 over every
stream's id, last seq and head: two audits with the same digest saw the same log.

`--against FILE` takes a saved `mams audit --all --json` (the pin) and checks that every
stream it lists still holds, with the same hash, the event it ended at: per-stream chains
cannot show a stream deleted whole (read models included) or cut back to an earlier end,
a pin can. Streams may have grown since; new streams are audited as usual.

`--all` audits every stream of the log and every run the read models record, a chunk of
streams per query, in `--jobs` worker processes (default: one per core, at most 8;
`mams.storage.auditlog`), with a progress bar on a terminal. It prints the broken streams
and a summary line (`--each`: a line for every stream); `--json` lists every stream.
`kind` is "negotiation", or "observations" for a negotiation's companion stream of quality
flags and analyst reviews (its id is then the stream's; chain, seq and decoding are
checked). `mams audit ID` audits both the negotiation and, once graded, its companion.

`mams export ... --format parquet|csv -o OUT_DIR` writes tables for analysis instead (rooms
and messages; `mams.export_table` says what each column holds), of a negotiation, a
session (`--session`), an experiment (`--experiment`) or every room (no selector, or
`--all`); `mams import` does not read them.

`mams export NEGOTIATION_ID --format jsonl [-o FILE]` writes the session of its rooms (its
name, time and scenario, one line each, first) then the stream and its companion
(when it has one), one JSON object per line (`mams.storage.export`), to FILE (written as
FILE.partial, renamed once complete) or stdout; `--session SESSION_ID` writes every
negotiation of a session with their companions, `--all` every stream of the log.
`mams import FILE` (or `-` for stdin, spooled to a temporary file) reads the file twice,
a line at a time (`mams.storage.export.Archive`: first every stream's chain is checked,
then the streams are appended), a batch of whole streams per transaction, and checks the
recomputed chains equal the file's. Each stream's lines must be in seq order, as
`mams export` writes them; streams may interleave. A stream the
log already holds with the same chain is skipped (listed under "identical"); one it holds
with other events is refused before anything is written (exit 1). `--json` prints
`{"imported": [{"negotiation_id": "...", "events": N, "head": "<hex>"}],
  "identical": [{"negotiation_id": "...", "head": "<hex>"}],
  "sessions_rebuilt": [{"session_id": "...", "items": N, "sellers": N}]}`.
Imported negotiations get their read models, so `mams negotiations`, `mams report` and
`mams sessions` list them like any other, with the times of the original log (each
event's `recorded_at` from the file; a run's start, end, messages and outcome from its
events). A run needs its session: a session the log lacks is stored as the file's
session line has it (its name and time kept) or, from a file without one, rebuilt from
the opening events of its rooms (the buyer's items and the sellers' terms they show;
named "imported from FILE", dated by its first room).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from functools import partial
from typing import IO, Any
from uuid import UUID

import anyio
import asyncpg
import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from mams.cli_render import untrusted
from mams.domain.config import Scenario, ScenarioError, parse_scenario
from mams.domain.errors import ConfigError
from mams.domain.events import NegotiationStarted, decode_event, observation_stream_id
from mams.infra import servers
from mams.storage.audit import Pin, StreamReport, log_digest
from mams.storage.auditlog import audit_chunk, audit_log, default_jobs
from mams.storage.eventstore import EventStore, PostgresEventStore
from mams.storage.export import (
    Archive,
    Imported,
    export_session_line,
    export_streams,
    import_scanned,
    iter_records,
    restamp,
)
from mams.storage.model import StoredEvent
from mams.storage.readmodels import (
    Queries,
    ReadModelProjector,
    find_negotiation,
    finished_runs,
    has_session,
    rename_session,
    restamp_session,
    restore_sessions,
    save_session,
    session_negotiation_ids,
    sessions_of_runs,
)

_json = msgspec.json.Encoder()
_LIST_UP_TO = 20  # streams an import lists one by one; beyond, a summary line


class AuditUsageError(ConfigError):
    """Bad command-line input for audit/export/import; the CLI exits with status 2."""


def add_parsers(sub: Any) -> None:
    """Add the audit, export and import subcommands to the CLI's subparsers."""
    aud = sub.add_parser(
        "audit", help="verify hash chains, seq order and invariants of the stored log"
    )
    aud.add_argument("negotiation_id", nargs="?", help="negotiation id (or its first characters)")
    aud.add_argument("--all", action="store_true", help="audit every stream in the log")
    aud.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    aud.add_argument(
        "--each",
        action="store_true",
        help="with --all, print a line for every stream (by default only the broken ones)",
    )
    aud.add_argument(
        "--against",
        metavar="FILE",
        help="a saved `mams audit --all --json`: every stream it lists must still hold the "
        "event it ended at (finds streams deleted whole or cut back)",
    )
    aud.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="with --all, audit in N processes (default: one per core, at most 8)",
    )

    exp = sub.add_parser(
        "export", help="write negotiations' full event streams (one, a session's, or all)"
    )
    exp.add_argument("negotiation_id", nargs="?", help="negotiation id (or its first characters)")
    exp.add_argument("--session", metavar="SESSION_ID", help="every negotiation of a session")
    exp.add_argument(
        "--experiment",
        metavar="EXPERIMENT_ID",
        help="every room of an experiment (--format parquet or csv)",
    )
    exp.add_argument("--all", action="store_true", help="every stream of the log")
    exp.add_argument(
        "--format",
        choices=["jsonl", "parquet", "csv"],
        default="jsonl",
        help="jsonl: the event streams, an archive `mams import` reads (the default); "
        "parquet or csv: tables of rooms and messages for analysis, into -o OUT_DIR",
    )
    exp.add_argument(
        "-o",
        "--output",
        help="write to this file instead of stdout (parquet, csv: this directory)",
    )

    imp = sub.add_parser("import", help="append an exported stream file into the log")
    imp.add_argument("file", help="a file written by `mams export` (- for stdin)")
    imp.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _dump(obj: object) -> None:
    sys.stdout.write(_json.encode(obj).decode() + "\n")
    sys.stdout.flush()


async def resolve_negotiation(conn: Queries, text: str) -> UUID:
    """A negotiation id from an id or a unique prefix of one (at least 4 characters);
    anything else is bad input, saying where to look."""
    try:
        return UUID(text)
    except ValueError:
        pass
    matches = await find_negotiation(conn, text) if len(text) >= 4 else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise AuditUsageError(f"{text!r} matches several negotiations; give more characters")
    raise AuditUsageError(f"no negotiation {text!r}; `mams negotiations` lists them")


def _report_json(r: StreamReport) -> dict[str, Any]:
    first = r.first
    return {
        "negotiation_id": str(r.stream_id),
        "ok": r.ok,
        "events": r.events,
        "last_seq": r.last_seq,
        "ended": r.ended,
        "kind": r.kind,
        "head": r.head,
        "first_broken": msgspec.to_builtins(first) if first else None,
        "problems": msgspec.to_builtins(r.problems),
    }


async def cmd_audit(args: argparse.Namespace, out: Console) -> int:
    """Audit one stream or all; 0 when clean, 1 when anything is broken."""
    if bool(args.all) == bool(args.negotiation_id):
        raise AuditUsageError("give a negotiation id or --all (not both)")
    if args.jobs is not None and args.jobs < 1:
        raise AuditUsageError(f"--jobs must be at least 1 (got {args.jobs})")
    pins = await _load_pins(args.against) if args.against else {}
    started = time.perf_counter()
    reports: list[StreamReport] = []
    async with servers(need_bus=False) as srv:
        async with srv.pool.acquire() as conn:
            if args.all:
                runs = await finished_runs(conn)
                ids = await srv.store.stream_ids()
                logged = set(ids)
                # A run the read models know, or a stream an earlier audit saw, but the log
                # does not: its rows were deleted.
                for sid in [*runs, *pins]:
                    if sid not in logged:
                        logged.add(sid)
                        ids.append(sid)
            else:
                nid = await resolve_negotiation(conn, args.negotiation_id)
                runs = await finished_runs(conn, nid)
                # Its companion stream of quality flags and reviews, when it has one.
                ids = _with_companion(nid)
        finished = {nid for nid, done in runs.items() if done}
        recorded = set(runs)
        if not args.all:
            reports = await audit_chunk(
                srv.store, ids, finished=finished, recorded=recorded, pins=pins
            )
            if _never_written(reports[1]):
                del reports[1]  # a negotiation nobody graded yet
            if _never_written(reports[0]):
                raise AuditUsageError(
                    f"no events for negotiation {ids[0]}; `mams negotiations` lists them"
                )
        else:
            jobs, seen = args.jobs or default_jobs(), 0
            with _progress("auditing", len(ids)) as (progress, task):
                async for chunk in audit_log(
                    srv.store,
                    ids,
                    dsn=srv.dsn,
                    jobs=jobs,
                    finished=finished,
                    recorded=recorded,
                    pins=pins,
                ):
                    reports += chunk
                    seen += sum(r.events for r in chunk)
                    progress.update(task, advance=len(chunk), events=seen)
    seconds = time.perf_counter() - started
    broken = [r for r in reports if not r.ok]
    listed = reports if (args.each or not args.all) else broken
    for r in listed:
        _print_report(out, r)
    if not reports:
        out.print("no negotiations in the log")
    events = sum(r.events for r in reports)
    digest = log_digest(reports)
    against = f" against {len(pins):,} pinned stream(s)" if pins else ""
    out.print(
        f"{len(reports):,} stream(s) audited{against}, {events:,} events in {seconds:.1f} s: "
        + (f"[bold red]{len(broken)} broken[/bold red]" if broken else "[green]all clean[/green]")
        + (f"; log digest {digest[:16]}" if args.all else "")
    )
    if args.json:
        body: dict[str, Any] = {"ok": not broken, "streams": [_report_json(r) for r in reports]}
        if args.all:
            body["digest"] = digest
        _dump(body)
    return 1 if broken else 0


def _never_written(r: StreamReport) -> bool:
    """A stream with no events that nothing says should have any."""
    return not r.events and [p.check for p in r.problems] == ["order"]


async def _load_pins(path: str) -> dict[UUID, Pin]:
    """The streams' last seq and head from a saved `mams audit --json` output."""
    try:
        raw = await anyio.Path(path).read_bytes()
    except OSError as exc:
        raise AuditUsageError(f"--against: cannot read {path}: {exc.strerror}") from exc
    try:
        saved = _saved_audit.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise AuditUsageError(
            f"--against: {path} is not the output of `mams audit --all --json` ({exc}); "
            "save one with `mams audit --all --json > FILE`"
        ) from None
    pins: dict[UUID, Pin] = {}
    for s in saved.streams:
        if s.last_seq > 0:
            try:
                pins[s.negotiation_id] = Pin(seq=s.last_seq, head=bytes.fromhex(s.head))
            except ValueError:
                raise AuditUsageError(
                    f"--against: {path}: stream {s.negotiation_id} has a head that is not "
                    f"hex: {s.head!r}"
                ) from None
    return pins


class _SavedStream(msgspec.Struct):
    negotiation_id: UUID
    last_seq: int
    head: str


class _SavedAudit(msgspec.Struct):
    streams: list[_SavedStream]


_saved_audit = msgspec.json.Decoder(_SavedAudit)


@contextmanager
def _progress(label: str, total: int) -> Iterator[tuple[Progress, TaskID]]:
    """A progress bar on stderr over `total` streams (only on a terminal)."""
    err = Console(stderr=True)
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("streams, {task.fields[events]:,} events"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as progress:
        yield progress, progress.add_task("audit", total=total, events=0)


def _print_report(out: Console, r: StreamReport) -> None:
    if r.ok:
        what = " (quality observations)" if r.kind == "observations" else ""
        out.print(
            f"[green]ok[/green]     {r.stream_id}  {r.events} events{what}, chain verified, "
            f"head {r.head[:16]}"
        )
        return
    first = r.first
    assert first is not None
    out.print(
        f"[bold red]BROKEN[/bold red] {r.stream_id}  first broken link at seq {first.seq} "
        f"({first.check}): {untrusted(first.why)}"
    )
    for p in r.problems[1:6]:
        out.print(f"         then seq {p.seq} ({p.check}): {untrusted(p.why)}")
    if len(r.problems) > 6:
        out.print(f"         ... and {len(r.problems) - 6} more")


async def cmd_export(args: argparse.Namespace, out: Console) -> int:
    """Write streams as JSON Lines to a file or stdout: one negotiation, a session's or all
    (with --format parquet or csv, tables for analysis: `mams.export_table`)."""
    if args.format != "jsonl":
        from mams.export_table import export_tables

        return await export_tables(args, out)
    if args.experiment:
        raise AuditUsageError("--experiment exports tables: add --format parquet or csv")
    chosen = sum(bool(x) for x in (args.negotiation_id, args.session, args.all))
    if chosen != 1:
        raise AuditUsageError("give a negotiation id, --session SESSION_ID or --all (one of them)")
    session = _session_id(args.session) if args.session else None
    note = Console(stderr=True, highlight=False)
    streams = events = 0
    head = ""
    async with servers(need_bus=False) as srv:
        async with srv.pool.acquire() as conn:
            if args.all:
                ids = await srv.store.stream_ids()
                what = "the log"
            elif session is not None:
                in_session = await session_negotiation_ids(conn, session)
                if not in_session:
                    raise AuditUsageError(
                        f"no negotiations of session {session}; `mams sessions` lists them"
                    )
                ids = [sid for nid in in_session for sid in _with_companion(nid)]
                what = f"session {session}"
            else:
                nid = await resolve_negotiation(conn, args.negotiation_id)
                ids = _with_companion(nid)
                what = f"negotiation {nid}"
            # The sessions of these rooms, so an import keeps their names and times.
            sessions = await sessions_of_runs(conn, ids)
        async with _archive(args.output) as write:
            await write(
                b"".join(
                    export_session_line(r.session_id, r.name, r.created_at, r.scenario)
                    for r in sessions
                )
            )
            with _progress("exporting", len(ids)) as (progress, task):
                async for covered, chunk, lines in export_streams(srv.store, ids):
                    await write(lines)
                    if chunk:
                        streams += len({e.stream_id for e in chunk})
                        events += len(chunk)
                        head = chunk[-1].hash.hex()
                    progress.update(task, advance=covered, events=events)
            if not events:
                raise AuditUsageError(f"no events for {what}; `mams negotiations` lists them")
    tail = f" (head {head[:16]})" if streams == 1 else ""
    note.print(f"[dim]exported {events:,} events of {streams:,} stream(s) of {what}{tail}[/dim]")
    return 0


@asynccontextmanager
async def _archive(output: str | None) -> AsyncIterator[Callable[[bytes], Awaitable[object]]]:
    """Where an export goes: stdout, or `output`, written under a temporary name and
    renamed once complete, so a failed or interrupted export never leaves a file that
    looks like a whole archive."""
    if output is None:

        async def to_stdout(data: bytes) -> None:
            sys.stdout.buffer.write(data)

        yield to_stdout
        sys.stdout.buffer.flush()
        return
    path = anyio.Path(output)
    partial = path.with_name(path.name + ".partial")
    try:
        sink = await anyio.open_file(partial, "wb")
    except OSError as exc:
        raise AuditUsageError(f"cannot write {output}: {exc.strerror}") from exc
    try:
        async with sink:
            yield sink.write
        await partial.rename(path)
    finally:
        with contextlib.suppress(OSError):
            await partial.unlink()  # only left when the export failed


def _with_companion(nid: UUID) -> list[UUID]:
    """A negotiation's stream and its companion stream of quality observations (exported
    when it holds any)."""
    return [nid, observation_stream_id(nid)]


def _session_id(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise AuditUsageError(
            f"--session: {text!r} is not a session id; `mams sessions` lists them"
        ) from None


async def import_archive(
    pool: asyncpg.Pool,
    store: EventStore,
    archive: Archive,
    *,
    source: str,
    on_progress: Callable[[int, int], object] | None = None,
) -> tuple[Imported, list[tuple[UUID, Scenario]]]:
    """`import_scanned` with the read models, keeping the file's times and names: a run's
    rows need its session, so a session this log lacks is first stored as the file's
    session line has it (name, time, scenario) or, for a file without one (written before
    they were), rebuilt from its rooms' opening events (named "imported from SOURCE",
    dated by its first room). The appended events, and the runs, messages and outcomes
    projected from them, get the file's times (`restamp`). Returns what was imported and
    the sessions stored."""
    restored: list[tuple[UUID, Scenario]] = []

    async def sessions_first(firsts: dict[UUID, StoredEvent]) -> None:
        opened = [(decode_event(first.data), first.recorded_at) for first in firsts.values()]
        rooms = [e for e, _ in opened if isinstance(e, NegotiationStarted)]
        began: dict[UUID, datetime] = {}
        for e, at in opened:
            if isinstance(e, NegotiationStarted):
                began[e.session_id] = min(at, began.get(e.session_id, at))
        async with pool.acquire() as conn:
            try:
                for sid in {room.session_id for room in rooms}:
                    line = archive.sessions.get(sid)
                    if line is None or await has_session(conn, sid):
                        continue
                    scenario = parse_scenario(
                        msgspec.json.decode(line.scenario), source=f"{source}: session {sid}"
                    )
                    await save_session(conn, sid, scenario)
                    await rename_session(conn, sid, line.name, line.created_at)
                    restored.append((sid, scenario))
                rebuilt = await restore_sessions(conn, rooms, name=f"imported from {source}")
                for sid, _ in rebuilt:
                    await restamp_session(conn, sid, began[sid])
                restored.extend(rebuilt)
            except ScenarioError as exc:
                raise AuditUsageError(
                    f"{source}: its negotiations do not make a session to list them under: {exc}"
                ) from exc

    result = await import_scanned(
        store,
        archive,
        before_append=sessions_first,
        after_append=partial(restamp, pool),
        on_progress=on_progress,
    )
    return result, restored


def _file_lines(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from f


def _spooled(stream: IO[bytes]) -> IO[bytes]:
    """`stream` copied into a temporary file, which an import reads twice."""
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - the caller closes it
    shutil.copyfileobj(stream, spool)
    return spool


def _rewound(spool: IO[bytes]) -> IO[bytes]:
    spool.seek(0)
    return spool


async def cmd_import(args: argparse.Namespace, out: Console) -> int:
    """Append an export file's streams into the log and check the chain comes out equal.
    The file is read twice, a line at a time (never held whole): once to check every
    stream's chain, once to append."""
    with contextlib.ExitStack() as stack:
        lines: Callable[[], Iterable[bytes]]
        if args.file == "-":
            spool = stack.enter_context(_spooled(sys.stdin.buffer))
            lines, source = partial(_rewound, spool), "stdin"
        else:
            try:
                stack.enter_context(open(args.file, "rb"))  # noqa: ASYNC230 - a check only
            except OSError as exc:
                raise AuditUsageError(f"cannot read {args.file}: {exc.strerror}") from exc
            lines, source = partial(_file_lines, args.file), args.file
        archive = Archive(lambda: iter_records(lines(), source=source))
        with Console(stderr=True).status(f"checking the chains of {source}"):
            archive.scan()
        async with servers(need_bus=False) as srv:
            with _progress("importing", len(archive.streams)) as (progress, task):
                result, restored = await import_archive(
                    srv.pool,
                    PostgresEventStore(srv.pool, ReadModelProjector(), dsn=srv.dsn),
                    archive,
                    source=source,
                    on_progress=lambda done, n: progress.update(task, completed=done, events=n),
                )
    for session_id, scenario in restored:
        out.print(
            f"session {session_id} ({untrusted(scenario.name or '')}) restored from the file: "
            f"{len(scenario.buyer.items)} item(s), {len(scenario.sellers)} seller(s)"
        )
    appended = result.appended
    if len(appended) <= _LIST_UP_TO:
        for sid, n in appended.items():
            out.print(
                f"imported {n} events of negotiation {sid}; chain verified "
                f"(head {result.heads[sid].hex()[:16]})"
            )
    else:
        out.print(
            f"imported {sum(appended.values()):,} events of {len(appended):,} streams; "
            "every chain verified"
        )
    if result.identical:
        out.print(
            f"{len(result.identical):,} stream(s) already in this log with the same chain: "
            "left as they are"
        )
    if args.json:
        _dump(
            {
                "imported": [
                    {"negotiation_id": str(sid), "events": n, "head": result.heads[sid].hex()}
                    for sid, n in appended.items()
                ],
                "identical": [
                    {"negotiation_id": str(sid), "head": result.heads[sid].hex()}
                    for sid in result.identical
                ],
                "sessions_rebuilt": [
                    {
                        "session_id": str(session_id),
                        "items": len(scenario.buyer.items),
                        "sellers": len(scenario.sellers),
                    }
                    for session_id, scenario in restored
                ],
            }
        )
    return 0
