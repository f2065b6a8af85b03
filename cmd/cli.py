"""The `mams` command line: run, replay, sessions, negotiations.

Exit codes: 0 success; 2 bad input (scenario, ids, options), nothing written; 1 a runtime
failure (message says what to do); 130 interrupted (open rooms recorded as aborted).
With --json, stdout carries exactly one JSON object and everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import uuid
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from uuid import UUID

import anyio
import msgspec
import structlog
from rich.console import Console

from mams import benchmodels
from mams.actors.brains.base import BASELINE_LABEL
from mams.actors.market import (
    RoomResult,
    RunOptions,
    brain_label,
    check_brains,
    run_market,
)
from mams.actors.monitor import grade_events, stored_flags
from mams.analyze import add_parsers as add_analyze_parsers
from mams.analyze import cmd_analyze
from mams.audit import add_parsers as add_audit_parsers
from mams.audit import cmd_audit, cmd_export, cmd_import, resolve_negotiation
from mams.bus.base import Bus
from mams.bus.nats import NatsBus
from mams.cli_render import (
    TABLE_ROOMS,
    TRANSCRIPT_ROOMS,
    LLMUsage,
    RunProgress,
    flag_counts,
    items_table,
    outcome_json,
    outcomes_table,
    print_entry,
    print_flag,
    quality_summary,
    room_tag,
    status_of,
    untrusted,
    untrusted_text,
)
from mams.creds import add_creds_parser, cmd_creds
from mams.domain.config import (
    BuyerItem,
    Scenario,
    ScenarioError,
    check_model,
    load_scenario,
)
from mams.domain.errors import ConfigError, MamsError
from mams.domain.events import Event, QualityFlagged, decode_event
from mams.domain.negotiation import NegotiationState, replay
from mams.domain.plan import (
    DEFAULT_MAX_ROUNDS,
    DEFAULT_ROUND_TIMEOUT,
    LLM_ROOMS_AT_ONCE,
    LLM_ROUND_TIMEOUT,
    Plan,
    PlanError,
    pick_items,
    plan_rooms,
)
from mams.domain.transcript import Renderer, render
from mams.experiment import add_parsers as add_experiment_parsers
from mams.experiment import cmd_compare, cmd_experiment
from mams.infra import Servers, servers
from mams.play import add_parser as add_play_parser
from mams.play import cmd_play
from mams.processes import DURABLE, add_durability, cmd_broker, cmd_buyer, cmd_monitor, cmd_seller
from mams.processes import add_parsers as add_process_parsers
from mams.report import add_parsers as add_report_parsers
from mams.report import cmd_report
from mams.serve import add_parser as add_serve_parser
from mams.serve import cmd_serve
from mams.storage.eventstore import read_in_chunks
from mams.storage.leases import PgLeases
from mams.storage.readmodels import (
    Conn,
    count_runs,
    count_sessions,
    database_now,
    list_runs,
    list_sessions,
    load_session,
    runs_started_since,
    save_session,
)
from mams.study import (
    Progress,
    StudyFlags,
    last_plan,
    merge,
    progress_of,
    run_options,
    save_plan,
)
from mams.telemetry import init_sentry, report
from mams.version import __version__
from mams.voice import add_parser as add_voice_parser
from mams.voice import check_engine, cmd_voice, speaking

_json = msgspec.json.Encoder(decimal_format="number")
LIST_LIMIT = 50  # rows `mams sessions` and `mams negotiations` list unless --limit


class UsageError(MamsError):
    """Bad command-line input; exits with status 2."""


def _dump(obj: object) -> None:
    sys.stdout.write(_json.encode(obj).decode() + "\n")
    sys.stdout.flush()


def _configure_logging(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    level = getattr(logging, os.environ.get("MAMS_LOG_LEVEL", "").upper(), level)
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            _shown_in_log,
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        cache_logger_on_first_use=False,
    )


def _shown_in_log(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Log lines carry what agents sent (reasons, texts): their control and bidi
    characters are shown escaped, never sent to the terminal as they are."""
    return {k: untrusted_text(v).plain if isinstance(v, str) else v for k, v in event.items()}


# -- run -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RunCommand:
    """`mams run`'s command line, parsed and checked: what `run_study` runs."""

    scenario: Path | None
    session: UUID | None
    resume: bool = False
    processes: bool = False
    json: bool = False
    transcript: bool = False
    durability: str = DURABLE
    flags: StudyFlags = field(default_factory=StudyFlags)
    voice: bool = False

    @classmethod
    def of(cls, args: argparse.Namespace) -> RunCommand:
        """The command these arguments give; UsageError for a combination that cannot run
        or a flag out of range (nothing is read or written yet)."""
        if not args.scenario and not args.session:
            raise UsageError(
                "give a scenario file (mams run examples/phone-accessories.toml) "
                "or --session SESSION_ID"
            )
        if args.scenario and args.session:
            raise UsageError("give a scenario file or --session, not both")
        if args.resume and not args.session:
            raise UsageError(
                "--resume needs --session SESSION_ID: the study to complete (`mams sessions` "
                "lists them)"
            )
        flags = StudyFlags(**{name: getattr(args, name) for name in StudyFlags.__struct_fields__})
        for flag, value in (
            ("--buyer-model", flags.buyer_model),
            ("--seller-model", flags.seller_model),
        ):
            if value is not None:
                try:
                    check_model(value)
                except ValueError as exc:
                    raise UsageError(f"{flag}: {exc}") from None
        _check_options(run_options(flags), given=flags)
        if args.voice:
            if args.processes:
                raise UsageError("--voice reads the rooms of this process: not with --processes")
            check_engine(os.environ)  # no engine (no key, no espeak-ng): say so before a run
        return cls(
            scenario=Path(args.scenario) if args.scenario else None,
            session=_parse_uuid(args.session, "--session") if args.session else None,
            resume=args.resume,
            processes=args.processes,
            json=args.json,
            transcript=args.transcript,
            durability=args.durability,
            flags=flags,
            voice=args.voice,
        )


def _check_options(options: RunOptions, given: StudyFlags | None = None) -> None:
    """UsageError naming the flag of each plan option out of range (of those `given`, if
    named: a --resume checks the rest once it has read the stored plan)."""
    for problem in options.problems():
        if given is not None and getattr(given, problem.path) is None:
            continue
        raise UsageError(f"--{problem.path.replace('_', '-')} {problem.message}")


def _pick_items(scenario: Scenario, names: Sequence[str]) -> list[BuyerItem]:
    try:
        return pick_items(scenario, names)
    except PlanError as exc:
        raise UsageError(f"--item {exc.problems[0].message}") from None


@dataclass(slots=True)
class _Study:
    """What a `mams run` runs, once read from the database: the scenario and session, the
    items, the options, every agent's model, the rooms planned and what the session
    already has of them."""

    scenario: Scenario
    session_id: UUID
    items: list[BuyerItem]
    options: RunOptions
    models: dict[str, str]
    plan: Plan
    progress: Progress

    @property
    def labels(self) -> set[str]:
        return {brain_label(m) for m in self.models.values()}


async def _open_study(
    command: RunCommand, scenario_file: Scenario | None, conn: Conn, out: Console
) -> _Study:
    """Read (or store) the session, merge a --resume's flags with the study's stored plan,
    plan the rooms and find what the session already has of them; store the plan the next
    --resume completes."""
    flags = command.flags
    if scenario_file is not None:
        scenario, session_id, new = scenario_file, uuid.uuid4(), True
    else:
        assert command.session is not None
        session_id, new = command.session, False
        stored_scenario = await load_session(conn, session_id)
        if stored_scenario is None:
            raise UsageError(f"no session {session_id}; `mams sessions` lists stored sessions")
        scenario = stored_scenario
    if command.resume:  # the flags not given are the study's, as last planned
        stored = await last_plan(conn, session_id)
        if stored is None:
            out.print("[dim]no plan stored for this session: using the flags given[/dim]")
        else:
            flags, taken = merge(flags, stored[0])
            _check_options(run_options(flags))
            if taken:
                when = stored[1].strftime("%Y-%m-%d %H:%M")
                out.print(f"[dim]the study as planned on {when}:[/dim] {' '.join(taken)}")
    items = _pick_items(scenario, flags.item or [])
    # Fail fast (nothing written) if a model's provider is not configured. A check only:
    # the brains are built once, where they run (here or in the processes).
    models = check_brains(scenario, items, run_options(flags))
    options = run_options(flags, llm={brain_label(m) for m in models.values()} != {BASELINE_LABEL})
    plan = plan_rooms([i.item_name for i in items], options)
    if new:
        await save_session(conn, session_id, scenario)
    progress = Progress()
    if command.resume:
        progress = await progress_of(
            conn, session_id, [(r.item_name, r.seed) for r in plan.planned]
        )
    if progress.elsewhere:
        raise UsageError(
            f"{progress.elsewhere} room(s) of session {session_id} are still being run "
            "by another live process (a mams run or mams broker on this database); "
            "let it finish or stop it, then run --resume again"
        )
    # What the next --resume completes: given flags, and the study's for the rest.
    await save_plan(conn, session_id, flags)
    plan = plan_rooms(plan.items, options, progress.skip)
    return _Study(scenario, session_id, items, options, models, plan, progress)


async def cmd_run(args: argparse.Namespace, out: Console) -> int:
    command = RunCommand.of(args)

    def running(session_id: UUID) -> None:
        args.session_running = session_id  # for the interrupted message

    return await run_study(command, out, on_session=running)


async def run_study(
    command: RunCommand, out: Console, *, on_session: Callable[[UUID], None] | None = None
) -> int:
    """Run a study as `mams run` does: in this process or as processes, printing its
    transcript or progress and then its outcomes (or one JSON object)."""
    # Validate the file before touching any server: a bad scenario writes nothing.
    scenario_file = load_scenario(command.scenario) if command.scenario else None
    if scenario_file is not None:
        items = _pick_items(scenario_file, command.flags.item or [])
        check_brains(scenario_file, items, run_options(command.flags))
    out.print("[dim]starting servers...[/dim]")
    async with servers(need_bus=True, durable=command.durability == DURABLE) as srv:
        out.print(f"[dim]bus:[/dim] {srv.nats_note}\n[dim]log:[/dim] {srv.db_note}")
        async with srv.pool.acquire() as conn:
            study = await _open_study(command, scenario_file, conn, out)
        if on_session is not None:
            on_session(study.session_id)
        options, plan, progress = study.options, study.plan, study.progress
        brain = " / ".join(sorted(study.labels))
        out.print(f"[dim]session:[/dim] {study.session_id}  [dim]brains:[/dim] {untrusted(brain)}")
        if study.labels == {BASELINE_LABEL}:
            out.print(
                "[dim]   rule-based negotiators, no LLM. To run on Claude: "
                "export ANTHROPIC_API_KEY=... (or OPENROUTER_API_KEY, OPENAI_API_KEY / "
                "OPENAI_BASE_URL)[/dim]"
            )
        total = len(plan.rooms) + len(progress.interrupted)
        if command.resume:
            described = progress.describe(len(plan.planned), len(plan.rooms))
            out.print(f"[dim]resuming:[/dim] {described}")
            if total == 0:
                out.print("nothing to run: every room of these runs is done")
                if command.json:
                    _dump({"session_id": str(study.session_id), "brain": brain, "negotiations": []})
                return 0
        transcript = command.transcript or total <= TRANSCRIPT_ROOMS
        if options.runs > 1:
            base = options.seed or 0
            out.print(f"[dim]runs:[/dim] {options.runs} (seeds {base}..{base + options.runs - 1})")
        at_once = options.rooms_at_once
        if at_once is not None and at_once < total:
            out.print(f"[dim]rooms at once:[/dim] {at_once} of {total}, the next as one ends")
        else:
            options = msgspec.structs.replace(options, rooms_at_once=None)
        # With --processes the buyer process prints what it hears, or with a progress bar
        # says as each room ends.
        progress_bar = None if transcript else RunProgress(out, total)
        usage = LLMUsage()
        with progress_bar if progress_bar is not None else contextlib.nullcontext():
            if command.processes:
                rooms, flags = await _run_as_processes(
                    srv,
                    study,
                    options,
                    command.durability,
                    out,
                    on_ended=None if progress_bar is None else progress_bar.room_ended,
                )
            else:
                rooms, flags = await _run_in_process(
                    srv, study, options, out, progress_bar, usage, voice=command.voice
                )
    _print_outcomes(out, study, options, rooms, flags, usage)
    if command.json:
        _dump(
            {
                "session_id": str(study.session_id),
                "brain": brain,
                "negotiations": [
                    {
                        "negotiation_id": str(r.negotiation_id),
                        "item": r.item_name,
                        "seed": r.state.started.seed if r.state.started else None,
                        "status": status_of(r.state),
                        "outcome": outcome_json(r.state),
                        "flags": flag_counts(flags.get(r.negotiation_id, [])),
                    }
                    for r in rooms
                ],
            }
        )
    return 0


async def _run_in_process(
    srv: Servers,
    study: _Study,
    options: RunOptions,
    out: Console,
    progress: RunProgress | None,
    usage: LLMUsage,
    *,
    voice: bool = False,
) -> tuple[list[RoomResult], dict[UUID, list[QualityFlagged]]]:
    """The study's rooms as actors of this process (`run_market`), printing every message
    (no `progress` bar) as it is committed; and what the live monitor recorded of each.
    With `voice`, each seller's line is read aloud as it arrives (`mams.voice.speaking`)."""
    nats_url = srv.nats_url
    assert nats_url is not None
    tags: dict[UUID, Any] = {}
    renderers: dict[UUID, Renderer] = {}

    async def connect(name: str) -> Bus:
        return await NatsBus.connect(nats_url, name=f"mams-{name}")

    def on_opened(rooms: list[RoomResult]) -> None:
        if progress is not None:
            return
        for i, room in enumerate(rooms):
            tags[room.negotiation_id] = room_tag(room.item_name, i) if len(rooms) > 1 else None
            renderers[room.negotiation_id] = Renderer()
            item = untrusted(room.item_name)
            out.print(f"[dim]negotiation {room.negotiation_id}: {item}[/dim]")

    def on_event(nid: UUID, seq: int, event: Event, state: NegotiationState) -> None:
        usage.add(event)
        if progress is not None:
            progress.event(event)
            return
        for entry in renderers[nid].entries(event):
            print_entry(out, entry, tags.get(nid))

    async with (
        speaking(out, study.scenario, enabled=voice) as voices,
        PgLeases(srv.pool, srv.dsn) as leases,
    ):
        rooms = await run_market(
            study.scenario,
            study.session_id,
            study.items,
            connect=connect,
            store=srv.store,
            options=options,
            on_event=on_event,
            on_opened=on_opened,
            on_flag=None
            if progress is not None
            else lambda flag: print_flag(out, flag, tags.get(flag.negotiation_id)),
            skip=study.progress.skip,
            leases=leases,
            resume=study.progress.interrupted,
            voice=voices,
        )
    flags: dict[UUID, list[QualityFlagged]] = {}
    for room in rooms if options.monitor else []:
        flags[room.negotiation_id] = await stored_flags(srv.store, room.negotiation_id)
    return rooms, flags


def _print_outcomes(
    out: Console,
    study: _Study,
    options: RunOptions,
    rooms: list[RoomResult],
    flags: dict[UUID, list[QualityFlagged]],
    usage: LLMUsage,
) -> None:
    out.print()
    if options.runs == 1 and len(rooms) <= TABLE_ROOMS:
        out.print(outcomes_table([(r.item_name, r.state) for r in rooms]))
    else:
        out.print(items_table([(r.item_name, r.state) for r in rooms]))
        out.print(f"[dim]every room:[/dim] mams negotiations --session {study.session_id}")
        out.print(f"[dim]figures:[/dim]    mams report --session {study.session_id}")
    if usage.calls:
        out.print(f"[dim]LLM:[/dim] {usage.summary()}")
    if options.monitor:
        out.print(f"[dim]quality:[/dim] {quality_summary(flags)}")
    out.print(f"[dim]replay one with:[/dim] mams replay {rooms[0].negotiation_id}")


async def _run_as_processes(
    srv: Servers,
    study: _Study,
    options: RunOptions,
    durability: str,
    out: Console,
    *,
    on_ended: Callable[[bool], None] | None,
) -> tuple[list[RoomResult], dict[UUID, list[QualityFlagged]]]:
    """Broker, sellers and buyer as OS processes; the outcomes read back from the log: the
    rooms it opened and, resuming, the interrupted ones it went on with. With the monitor
    on, each room's quality flags too, graded from the same read and recorded (no monitor
    watched them live)."""
    from mams.processes import supervise

    assert srv.nats_url is not None  # servers(need_bus=True) started or found one
    session_id, progress = study.session_id, study.progress
    started_after = await database_now(srv.pool)
    await supervise(
        scenario=study.scenario,
        session_id=session_id,
        items=[i.item_name for i in study.items],
        nats_url=srv.nats_url,
        dsn=srv.dsn,
        options=options,
        durability=durability,
        out=out,
        resume=bool(progress.interrupted),
        skip=progress.skip if study.plan.rooms else None,
        on_ended=on_ended,
    )
    runs = await runs_started_since(srv.pool, session_id, started_after, progress.interrupted)
    item_of = dict(runs)
    rooms = []
    flags: dict[UUID, list[QualityFlagged]] = {}
    async for streams in read_in_chunks(srv.store, list(item_of)):
        for nid, stored in streams:
            events = [decode_event(e.data) for e in stored]
            rooms.append(RoomResult(nid, item_of[nid], replay(events)))
            if options.monitor:
                flags[nid] = await grade_events(srv.store, nid, events)
    return rooms, flags


# -- replay, sessions, negotiations ---------------------------------------------------------
def _parse_uuid(text: str, what: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise UsageError(
            f"{what}: {text!r} is not an id like 3f2b6c1e-8d4a-4b7e-9c1d-2a5e6f7a8b9c"
        ) from None


async def cmd_replay(args: argparse.Namespace, out: Console) -> int:
    async with servers(need_bus=False) as srv:
        async with srv.pool.acquire() as conn:
            nid = await resolve_negotiation(conn, args.negotiation_id)
        stored = await srv.store.read(nid)
    if not stored:
        raise UsageError(f"no events for negotiation {nid}; `mams negotiations` lists them")
    events = [decode_event(e.data) for e in stored]
    state = replay(events)
    item = state.started.item_name if state.started else "?"
    out.print(f"[dim]replaying negotiation {nid} from {len(events)} logged events[/dim]")
    for entry in render(events):
        print_entry(out, entry)
    out.print()
    out.print(outcomes_table([(item, state)]))
    if args.json:
        rows = []
        for s, e in zip(stored, events, strict=True):
            row: dict[str, Any] = {"seq": s.seq}
            row.update(msgspec.to_builtins(e))
            rows.append(row)
        _dump(
            {
                "negotiation_id": str(nid),
                "item": item,
                "status": status_of(state),
                "outcome": outcome_json(state),
                "events": rows,
            }
        )
    return 0


async def cmd_rerun(args: argparse.Namespace, out: Console) -> int:
    from mams.actors.rerun import rerun

    async with servers(need_bus=False) as srv:
        async with srv.pool.acquire() as conn:
            nid = await resolve_negotiation(conn, args.negotiation_id)
        stored = await srv.store.read(nid)
    if not stored:
        raise UsageError(f"no events for negotiation {nid}; `mams negotiations` lists them")
    events = [decode_event(e.data) for e in stored]
    out.print(
        f"[dim]rerunning negotiation {nid} ({len(events)} logged events) with recorded "
        "model responses played back...[/dim]"
    )
    report = await rerun(events)
    if report.matches:
        out.print(
            f"[bold green]reproduced exactly[/bold green]: {report.rerun_events} events, "
            f"{report.llm_calls_replayed} model call(s) played back"
        )
    else:
        out.print(
            f"[bold red]differs[/bold red] from the original "
            f"({report.original_events} events originally, {report.rerun_events} now):"
        )
        for line in report.differences:
            out.print(f"  {untrusted(line)}")
    if args.json:
        _dump(
            {
                "negotiation_id": str(nid),
                "matches": report.matches,
                "original_events": report.original_events,
                "rerun_events": report.rerun_events,
                "llm_calls_replayed": report.llm_calls_replayed,
                "differences": report.differences,
            }
        )
    return 0 if report.matches else 1


async def cmd_sessions(args: argparse.Namespace, out: Console) -> int:
    from rich.table import Table

    async with servers(need_bus=False) as srv, srv.pool.acquire() as conn:
        rows = await list_sessions(conn, limit=args.limit)
        total = len(rows)
        if total == args.limit:  # there may be more than the page shows
            total = await count_sessions(conn)
    if args.json:
        _dump({"sessions": rows, "total": total})
        return 0
    table = Table(title="Sessions", header_style="bold")
    for col in ("session_id", "name", "created", "items", "sellers", "negotiations", "deals"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r.session_id),
            untrusted(r.name),
            r.created_at.strftime("%Y-%m-%d %H:%M"),
            str(r.items),
            str(r.sellers),
            str(r.negotiations),
            str(r.deals),
        )
    out.print(table if rows else "no sessions yet: `mams run examples/phone-accessories.toml`")
    _more(out, len(rows), total, "sessions", "mams sessions")
    return 0


def _more(out: Console, shown: int, total: int, what: str, command: str) -> None:
    """Say so when a listing shows only the newest `shown` of `total` rows."""
    if shown < total:
        out.print(
            f"[yellow]{shown} of {total} {what}[/yellow] (the newest); all of them: "
            f"{command} --limit {total}"
        )


async def cmd_negotiations(args: argparse.Namespace, out: Console) -> int:
    from rich.table import Table

    session = _parse_uuid(args.session, "--session") if args.session else None
    async with servers(need_bus=False) as srv, srv.pool.acquire() as conn:
        rows = await list_runs(conn, session_id=session, limit=args.limit)
        total = len(rows)
        if total == args.limit:  # there may be more than the page shows
            total = await count_runs(conn, session)
    if args.json:
        _dump({"negotiations": rows, "total": total})
        return 0
    table = Table(title="Negotiations", header_style="bold")
    for col in (
        "negotiation_id",
        "item",
        "status",
        "outcome",
        "seller",
        "unit price",
        "rounds",
        "started",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r.negotiation_id),
            untrusted(r.item_name),
            "interrupted" if r.interrupted else untrusted(r.status),
            untrusted(r.outcome or "-"),
            untrusted(r.seller or "-"),
            f"{r.unit_price}" if r.unit_price is not None else "-",
            str(r.rounds),
            r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    out.print(table if rows else "no negotiations yet")
    where = f" --session {session}" if session else ""
    _more(out, len(rows), total, "negotiations", f"mams negotiations{where}")
    stopped = {r.session_id for r in rows if r.interrupted}
    for sid in sorted(stopped, key=str):
        out.print(
            f"[dim]interrupted (their run was killed); go on with them:[/dim] "
            f"mams run --session {sid} --resume"
        )
    return 0


# -- entry point -----------------------------------------------------------------------------
class _ArgumentError(Exception):
    """argparse rejected the command line (`_Parser.error`): main reports it."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser (its subparsers too) whose errors reach `main`, which with --json
    also writes them as the JSON error object, instead of exiting on the spot."""

    def error(self, message: str) -> NoReturn:
        raise _ArgumentError(self, message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mams", description="Multi-Agent Marketplace Simulator")
    p.add_argument("--version", action="version", version=f"mams {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="show info logs on stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run every item of a scenario (or a stored session)")
    run.add_argument("scenario", nargs="?", help="scenario file (.toml or .json)")
    run.add_argument("--session", help="rerun a stored session's configuration")
    run.add_argument("--item", action="append", help="only this item (repeatable)")
    run.add_argument("--max-rounds", type=int, help=f"round limit (default {DEFAULT_MAX_ROUNDS})")
    run.add_argument(
        "--seed", type=int, default=None, help="seed: same seed + baseline brains = same transcript"
    )
    run.add_argument(
        "--round-timeout",
        type=float,
        default=None,
        help=f"seconds each side has per round (default {DEFAULT_ROUND_TIMEOUT:g}, or "
        f"{LLM_ROUND_TIMEOUT:g} "
        "when any agent is an LLM)",
    )
    run.add_argument(
        "--buyer-model",
        help='the buyer\'s brain: "baseline", "auto" or '
        '"provider:model" (anthropic:claude-sonnet-5, openai:gpt-5.5, '
        "openrouter:google/gemini-2.5-flash); overrides the scenario",
    )
    run.add_argument(
        "--seller-model", help="every seller's brain (same forms); overrides the scenario"
    )
    run.add_argument(
        "--processes",
        action="store_true",
        help="run broker, buyer and each seller as separate OS processes",
    )
    run.add_argument(
        "--no-monitor",
        action="store_true",
        default=None,
        help="do not grade the negotiations (quality flags; `mams analyze` can later)",
    )
    run.add_argument(
        "--runs",
        type=int,
        metavar="N",
        help="negotiate every item N times at once, run r with seed + r (default 1)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="with --session: complete the session's study as last planned (its --runs, "
        "--seed, --max-rounds... unless given): rooms it completed are left out, rooms a "
        "killed run left open go on from the log, and only the rest run",
    )
    run.add_argument(
        "--rooms-at-once",
        type=int,
        metavar="N",
        help=f"open at most N rooms at a time, the next as one ends (default: all; "
        f"{LLM_ROOMS_AT_ONCE} when any agent is an LLM, so rounds do not time out waiting "
        "for the model)",
    )
    run.add_argument(
        "--transcript",
        action="store_true",
        help=f"print every message even with more than {TRANSCRIPT_ROOMS} rooms (by default "
        "a progress bar then)",
    )
    add_durability(run)
    run.add_argument(
        "--voice",
        action="store_true",
        help="read each seller's line aloud as it arrives (ElevenLabs with "
        "ELEVENLABS_API_KEY, else the local espeak-ng); played when this machine has an "
        "audio output, else written to the audio store",
    )
    run.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    rep = sub.add_parser("replay", help="rebuild a negotiation's transcript from the log")
    rep.add_argument("negotiation_id", help="negotiation id (or its first characters)")
    rep.add_argument("--json", action="store_true")

    rer = sub.add_parser(
        "rerun",
        help="re-execute a logged negotiation (recorded LLM "
        "responses played back) and report whether it matches",
    )
    rer.add_argument("negotiation_id", help="negotiation id (or its first characters)")
    rer.add_argument("--json", action="store_true")

    ses = sub.add_parser("sessions", help="list stored sessions, newest first")
    ses.add_argument(
        "--limit",
        type=int,
        default=LIST_LIMIT,
        metavar="N",
        help=f"list the newest N (default {LIST_LIMIT}); the output says when there are more",
    )
    ses.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object: {"sessions": [...], "total": N} (total: all stored)',
    )

    add_process_parsers(sub)
    add_audit_parsers(sub)
    add_analyze_parsers(sub)
    add_report_parsers(sub)
    add_creds_parser(sub)
    add_serve_parser(sub)
    add_voice_parser(sub)
    add_experiment_parsers(sub)
    benchmodels.add_parser(sub)
    add_play_parser(sub)

    neg = sub.add_parser("negotiations", help="list negotiations and their outcomes, newest first")
    neg.add_argument("--session", help="only this session's")
    neg.add_argument(
        "--limit",
        type=int,
        default=LIST_LIMIT,
        metavar="N",
        help=f"list the newest N (default {LIST_LIMIT}); the output says when there are more",
    )
    neg.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object: {"negotiations": [...], "total": N} (total: all that '
        "match, of which the newest --limit are listed)",
    )
    return p


_COMMANDS = {
    "run": cmd_run,
    "broker": cmd_broker,
    "monitor": cmd_monitor,
    "seller": cmd_seller,
    "buyer": cmd_buyer,
    "creds": cmd_creds,
    "rerun": cmd_rerun,
    "replay": cmd_replay,
    "sessions": cmd_sessions,
    "negotiations": cmd_negotiations,
    "audit": cmd_audit,
    "analyze": cmd_analyze,
    "report": cmd_report,
    "export": cmd_export,
    "import": cmd_import,
    "bench-models": benchmodels.cmd_bench_models,
    "serve": cmd_serve,
    "voice": cmd_voice,
    "experiment": cmd_experiment,
    "compare": cmd_compare,
    "play": cmd_play,
}


def _first_mams_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Task groups wrap errors; surface our own (which carries the fix) if there is one."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = _first_mams_error(exc)
        if isinstance(exc, MamsError | KeyboardInterrupt):
            return exc
    return group


def _json_error(message: str) -> None:
    """Bad input under --json: stdout still carries one JSON object, {"error": message}."""
    _dump({"error": message})


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point."""
    raw = list(sys.argv[1:] if argv is None else argv)
    # A terminal or pipe that cannot encode what an agent wrote (an ASCII or Latin-1
    # locale) shows it as escapes: a failed write would stop the command (and leave rich's
    # buffer holding the text, failing every print after it).
    for std in (sys.stdout, sys.stderr):
        if isinstance(std, io.TextIOWrapper):
            std.reconfigure(errors="backslashreplace")
    try:
        args = build_parser().parse_args(raw)
    except _ArgumentError as exc:
        exc.parser.print_usage(sys.stderr)
        sys.stderr.write(f"{exc.parser.prog}: error: {exc}\n")
        if "--json" in raw:
            _json_error(f"{exc.parser.prog}: {exc}")
        sys.exit(2)
    wants_json = bool(getattr(args, "json", False))
    _configure_logging(args.verbose)
    init_sentry(args)  # only when SENTRY_DSN is set
    # People read stdout unless --json claims it for the program; then they read stderr.
    to_stderr = wants_json
    stream = sys.stderr if to_stderr else sys.stdout
    # Piped output gets a wide page rather than rich's 80 columns, so tables stay legible.
    # No emoji codes either: text an agent wrote is printed as written (`cli_render.untrusted`).
    out = Console(
        stderr=to_stderr, highlight=False, emoji=False, width=None if stream.isatty() else 120
    )
    err = Console(stderr=True, highlight=False, emoji=False, soft_wrap=True)
    try:
        if getattr(args, "limit", 1) < 1:
            raise UsageError(f"--limit must be at least 1, got {args.limit}")
        try:
            code = anyio.run(_COMMANDS[args.command], args, out)
        except BaseExceptionGroup as group:
            raise _first_mams_error(group) from group
    except ScenarioError as exc:
        err.print(
            f"[bold red]error:[/bold red] {untrusted(str(exc.source))} is not a valid "
            "scenario; nothing "
            f"was written. {len(exc.problems)} problem(s):"
        )
        for problem in exc.problems:
            err.print(f"  [red]{untrusted(problem.path)}[/red]: {untrusted(problem.message)}")
        if wants_json:
            listed = "; ".join(f"{p.path}: {p.message}" for p in exc.problems)
            _json_error(
                f"{exc.source} is not a valid scenario; nothing was written. "
                f"{len(exc.problems)} problem(s): {listed}"
            )
        code = 2
    except (UsageError, ConfigError) as exc:
        err.print(f"[bold red]error:[/bold red] {untrusted(str(exc))}")
        if wants_json:
            _json_error(str(exc))
        code = 2
    except KeyboardInterrupt:
        # Only an in-process run holds rooms it must close; other commands just stop.
        aborted = ": open negotiations were recorded as aborted" if args.command == "run" else ""
        err.print(f"[yellow]interrupted{aborted}[/yellow]")
        session = getattr(args, "session_running", None)
        if session is not None:
            err.print(f"[dim]complete the study with:[/dim] mams run --session {session} --resume")
        code = 130
    except MamsError as exc:
        report(exc)
        err.print(f"[bold red]error:[/bold red] {untrusted(str(exc))}")
        code = 1
    sys.exit(code)
