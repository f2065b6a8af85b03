"""`mams bench-models --model M [--model M2 ...]`: the benchmark set, run for each model, as a
leaderboard beside the human reference.

The set is `mams.domain.benchset` (version `BENCHSET_VERSION`, built from
`examples/craigslist/listings.jsonl` and the dialogues' buyer targets; `--seed` picks the
draw, `--rooms N` its first N rooms, 30 by default: 1 to 10 sellers, three styles). For each
`--model` it stores the set as a session of its own (named `bench-models <model>: ...`) and
runs every room through `run_market`, the one runtime of `mams run`, with that model as the
buyer and baseline sellers (`--agents buyer`, the default: every model meets the same
sellers), or with that model as every agent (`--agents all`). Rooms are seeded with
`--seed` too, so a baseline leaderboard is the same on every run with the same seed. Round
deadlines and rooms at once default as `mams run`'s do (`domain.plan`: longer deadlines
and at most LLM_ROOMS_AT_ONCE rooms for an LLM model).

Each row is `domain.benchset.leaderboard_row` over the model's ended rooms, analysed as
`mams report` does (`storage.analyses`: the quality checks on the log): rooms, deals, deal
rate, mean buyer savings against the deal seller's first ask (percent), mean buyer share of
the surplus, flags per 100 messages, and the models' spend per deal (USD; 0 for baseline,
none when a call's cost is unknown). The last row is the human reference: the 188
CraigslistBargain validation dialogues (`dialogues-valid.jsonl`, every category), converted
into logs by `domain.craigslist` and scored with the same figures (`--no-human` leaves it
out). The rooms stay in the log: `mams report --session ID` shows any row in detail.

`--json` prints one object on stdout:

    {"benchset": {"version": 1, "seed": 0, "rooms": 30, "data_sha256": "..."},
     "agents": "buyer",
     "rows": [{"model": "baseline", "session_id": "...", "label": "baseline",
               "rooms": 30, "deals": 21, "deal_rate": 0.7, "mean_saving_pct": 12.5,
               "mean_buyer_share": 0.6, "messages": 300, "flags": 1, "flags_per_100": 0.33,
               "cost_usd": 0.0, "cost_per_deal_usd": 0.0}, ...],
     "human": {"label": "human (CraigslistBargain)", "rooms": 188, ...} | null}

The data is read from `--data DIR` (default: `examples/craigslist/` of this checkout).
Exit status: 0; 2 for bad input (an unknown model, a provider without its key, missing
data, `--rooms` out of range).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path
from typing import Any

import msgspec
from msgspec.structs import replace
from rich.console import Console
from rich.table import Table

from mams.actors.market import RunOptions, check_brains, run_market
from mams.bus.base import Bus
from mams.cli_render import untrusted
from mams.domain.analysis import analyze
from mams.domain.benchset import (
    BENCHSET_VERSION,
    DEFAULT_ROOMS,
    MAX_ROOMS,
    BenchSet,
    BenchsetError,
    LeaderRow,
    build_benchset,
    leaderboard_row,
)
from mams.domain.config import BASELINE_MODEL, check_model
from mams.domain.craigslist import dialogues_to_events
from mams.domain.errors import ConfigError
from mams.domain.plan import (
    DEFAULT_ROUND_TIMEOUT,
    LLM_ROOMS_AT_ONCE,
    LLM_ROUND_TIMEOUT,
    PlanOptions,
)
from mams.domain.quality import check
from mams.infra import servers
from mams.storage.analyses import analyses_of

HUMAN_LABEL = "human (CraigslistBargain)"
DEFAULT_DATA = Path(__file__).resolve().parent.parent / "examples" / "craigslist"
_json = msgspec.json.Encoder()


class BenchUsageError(ConfigError):
    """Bad command-line input for bench-models; the CLI exits with status 2."""


def add_parser(sub: Any) -> None:
    """Add the bench-models subcommand to the CLI's subparsers."""
    p = sub.add_parser(
        "bench-models",
        help="run the benchmark set (real Craigslist listings) for each model; a leaderboard",
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="M",
        help='"baseline" or "provider:model"; repeat for several',
    )
    p.add_argument("--seed", type=int, default=0, help="the set's draw and the rooms' seed")
    p.add_argument(
        "--rooms",
        type=int,
        default=DEFAULT_ROOMS,
        metavar="N",
        help=f"the set's first N rooms (default {DEFAULT_ROOMS}, at most {MAX_ROOMS})",
    )
    p.add_argument(
        "--agents",
        choices=["buyer", "all"],
        default="buyer",
        help="buyer: the model buys from baseline sellers (default); all: every agent",
    )
    p.add_argument(
        "--rooms-at-once",
        type=int,
        metavar="N",
        help=f"rooms open at once (default: all, or {LLM_ROOMS_AT_ONCE} for an LLM model)",
    )
    p.add_argument(
        "--max-rounds",
        type=int,
        default=PlanOptions().max_rounds,
        help=f"round limit of each room (default {PlanOptions().max_rounds})",
    )
    p.add_argument(
        "--round-timeout",
        type=float,
        metavar="S",
        help=f"seconds a round waits for its turns (default {DEFAULT_ROUND_TIMEOUT:g}, or "
        f"{LLM_ROUND_TIMEOUT:g} for an LLM model)",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        metavar="DIR",
        help="where listings.jsonl and dialogues-valid.jsonl are (default: examples/craigslist)",
    )
    p.add_argument("--no-human", action="store_true", help="leave out the human reference row")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BenchUsageError(f"cannot read {path}: {exc.strerror}; give --data DIR") from None


def load_benchset(data: Path, seed: int, rooms: int) -> tuple[BenchSet, list[str]]:
    """The set from the data folder, and the dialogue lines (the human reference)."""
    listings = _read_lines(data / "listings.jsonl")
    dialogues = _read_lines(data / "dialogues-valid.jsonl")
    try:
        return build_benchset(listings, dialogues, seed, rooms), dialogues
    except BenchsetError as exc:
        raise BenchUsageError(str(exc)) from None


def human_row(dialogue_lines: list[str]) -> LeaderRow:
    """The CraigslistBargain dialogues, converted and scored with the same figures."""
    logs = dialogues_to_events(dialogue_lines)
    row = leaderboard_row(HUMAN_LABEL, [analyze(events, check(events)) for events in logs])
    return replace(row, cost_usd=None, cost_per_deal_usd=None)  # people: no model spend


def _options(args: argparse.Namespace, model: str) -> RunOptions:
    llm = model != BASELINE_MODEL  # as `mams run` chooses its defaults
    options = RunOptions.given(
        llm=llm,
        max_rounds=args.max_rounds,
        round_timeout=args.round_timeout,
        seed=args.seed,
        rooms_at_once=args.rooms_at_once,
        buyer_model=model,
        seller_model=model if args.agents == "all" else BASELINE_MODEL,
    )
    problems = options.problems()
    if problems:
        said = (f"--{p.path.replace('_', '-')}: {p.message}" for p in problems)
        raise BenchUsageError("; ".join(said))
    return options


async def cmd_bench_models(args: argparse.Namespace, out: Console) -> int:
    """Run the set for each model and print the leaderboard."""
    models = list(dict.fromkeys(args.model))
    for model in models:
        try:
            check_model(model)
        except ValueError as exc:
            raise BenchUsageError(f"--model {model!r}: {exc}") from None
    if not 1 <= args.rooms <= MAX_ROOMS:
        raise BenchUsageError(f"--rooms must be between 1 and {MAX_ROOMS}, got {args.rooms}")
    bench, dialogues = load_benchset(args.data, args.seed, args.rooms)
    scenario = bench.scenario
    items = scenario.buyer.items
    plans = {model: _options(args, model) for model in models}
    for options in plans.values():  # every provider's key is there before anything runs
        check_brains(scenario, items, options)
    out.print(
        f"[dim]benchmark set v{bench.version}, seed {bench.seed}: {len(bench.rooms)} rooms, "
        f"{len(scenario.sellers)} sellers; models as the "
        f"{'buyer (baseline sellers)' if args.agents == 'buyer' else 'buyer and every seller'}"
        "[/dim]"
    )
    rows: list[tuple[str, uuid.UUID, LeaderRow]] = []
    async with servers(need_bus=True) as srv:
        from mams.bus.nats import NatsBus
        from mams.storage.readmodels import save_session

        nats_url = srv.nats_url
        assert nats_url is not None

        async def connect(name: str) -> Bus:
            return await NatsBus.connect(nats_url, name=f"mams-bench-{name}")

        for model, options in plans.items():
            session_id = uuid.uuid4()
            named = replace(scenario, name=f"bench-models {model}: {scenario.name}")
            async with srv.pool.acquire() as conn:
                await save_session(conn, session_id, named)
            out.print(f"[dim]running {untrusted(model)}: session {session_id}[/dim]")
            rooms = await run_market(
                named, session_id, items, connect=connect, store=srv.store, options=options
            )
            analyses = await analyses_of(srv.store, [r.negotiation_id for r in rooms])
            rows.append((model, session_id, leaderboard_row(model, analyses)))
    human = None if args.no_human else human_row(dialogues)
    if args.json:
        _dump(bench, args.agents, rows, human)
    else:
        _print(out, rows, human)
    return 0


def _dump(
    bench: BenchSet,
    agents: str,
    rows: list[tuple[str, uuid.UUID, LeaderRow]],
    human: LeaderRow | None,
) -> None:
    obj = {
        "benchset": {
            "version": bench.version,
            "seed": bench.seed,
            "rooms": len(bench.rooms),
            "data_sha256": bench.data_sha256,
        },
        "agents": agents,
        "rows": [
            {"model": model, "session_id": str(sid), **msgspec.to_builtins(row)}
            for model, sid, row in rows
        ],
        "human": msgspec.to_builtins(human) if human is not None else None,
    }
    sys.stdout.write(_json.encode(obj).decode() + "\n")
    sys.stdout.flush()


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _print(
    out: Console, rows: list[tuple[str, uuid.UUID, LeaderRow]], human: LeaderRow | None
) -> None:
    table = Table(title=f"leaderboard (benchmark set v{BENCHSET_VERSION})")
    for name in (
        "model",
        "rooms",
        "deals",
        "deal rate",
        "savings %",
        "buyer share",
        "flags/100 msgs",
        "cost/deal $",
    ):
        table.add_column(name, justify="left" if name == "model" else "right")
    ranked = sorted(rows, key=lambda r: (-(r[2].deal_rate or 0.0), r[0]))
    for model, _, row in ranked:
        table.add_row(untrusted(model), *_cells(row))
    if human is not None:
        table.add_section()
        table.add_row(human.label, *_cells(human, cost=False))
    out.print(table)
    for model, sid, _ in rows:
        out.print(f"[dim]{untrusted(model)}:[/dim] mams report --session {sid}")


def _cells(row: LeaderRow, *, cost: bool = True) -> list[str]:
    return [
        str(row.rooms),
        str(row.deals),
        _num(row.deal_rate, ".1%"),
        _num(row.mean_saving_pct, ".1f"),
        _num(row.mean_buyer_share, ".2f"),
        _num(row.flags_per_100, ".2f"),
        _num(row.cost_per_deal_usd, ".4f") if cost else "n/a",
    ]
