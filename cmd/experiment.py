"""`mams experiment SPEC.toml` runs an experiment; `mams compare EXPERIMENT_ID` compares its arms.

`mams experiment` validates the whole spec first (`domain.experiment`: every problem with
its path, the scenario files' too, and each arm's overrides applied to each scenario as
`parse_scenario` validates it; exit 2, nothing written), stores the experiment and one
session per (arm, scenario) (`storage.experiments`), then runs every arm's rooms in this
process through `run_market` (the one plan, `domain.plan`). Rooms go in batches of seeds
(at most `rooms_at_once` rooms a batch, or BATCH_ROOMS without it), every arm and scenario
of a batch before the next batch, so the arms stay paired however far a run gets. A
progress bar shows rooms done of all, the ETA, tokens and estimated spend. With a budget
(`budget_usd`, or `--budget-usd`, counted over this invocation's model calls), no more
rooms open once the spend reaches it (checked before each arm's rooms of a batch); the
rooms open finish. `--resume EXPERIMENT_ID` goes on with an interrupted experiment as
`mams run --resume` does (`cmd/study.py`'s `progress_of`): completed rooms are not run
again, rooms a killed run left open go on from their log, aborted ones (Ctrl-C) open
afresh; the spec is the stored one (a SPEC given with it must be the same).

`mams compare` reads every completed room of the experiment (`storage.analyses`), takes
each room's figures (`domain.experiment.room_metrics`), and reports per arm and metric
the mean with a 95% bootstrap confidence interval (`scipy.stats.bootstrap`, BCa,
percentile where BCa cannot be computed), and for each arm against the control the paired
difference (arm minus control over the rooms both ran: same scenario, item and seed) with
its bootstrap interval and a two-sided paired permutation test's p-value
(`scipy.stats.permutation_test`, signs of the differences permuted), Holm-corrected across
all comparisons (`statsmodels.stats.multitest.multipletests`). Resampling is seeded
(`--random-seed`), so a comparison is reproducible. `--markdown FILE` writes a report,
`--plots DIR` PNG charts with error bars (`arms.png`, `differences.png`).

`mams compare --json` prints one object (null where a metric has no values):

    {"experiment_id": "...", "name": "...", "control": "default", "alpha": 0.05,
     "rooms": {"default": 100, "accept-first": 100},        # completed rooms per arm
     "metrics": [{"key": "deal_rate", "description": "..."}, ...],
     "arms": [{"arm": "default", "metric": "deal_rate", "n": 100, "mean": 0.8,
               "ci_low": 0.72, "ci_high": 0.87}, ...],
     "comparisons": [{"arm": "accept-first", "metric": "deal_rate", "pairs": 100,
                      "mean_difference": 0.2, "ci_low": 0.12, "ci_high": 0.28,
                      "p_value": 0.0001, "p_holm": 0.0008, "significant": true}, ...],
     "plots": ["DIR/arms.png", "DIR/differences.png"], "markdown": "FILE" | null}

`mams experiment --json` prints {"experiment_id", "name", "arms": [{"arm", "scenario",
"session_id"}], "rooms_planned", "rooms_completed", "rooms_run", "stopped_by_budget",
"tokens", "cost_usd", "compare": "mams compare <id>"}.
"""

from __future__ import annotations

import argparse
import math
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from mams.actors.brains.base import BASELINE_LABEL
from mams.actors.market import RoomResult, RunOptions, brain_label, check_brains, run_market
from mams.bus.base import Bus
from mams.cli_render import LLMUsage, untrusted
from mams.domain.analysis import NegotiationAnalysis
from mams.domain.config import (
    Problem,
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
    scenario_to_raw,
)
from mams.domain.errors import ConfigError
from mams.domain.events import Event, NegotiationEnded
from mams.domain.experiment import (
    METRICS,
    Arm,
    ExperimentSpec,
    ExperimentSpecError,
    RoomKey,
    apply_arm,
    arm_field_of,
    parse_spec,
)
from mams.domain.negotiation import NegotiationState
from mams.domain.plan import LLM_ROOMS_AT_ONCE, plan_rooms
from mams.infra import Servers, servers
from mams.storage.experiments import (
    ArmSession,
    create_experiment,
    experiment_sessions,
    load_experiment,
)
from mams.storage.readmodels import Conn, Queries, load_session, run_states
from mams.study import progress_of

BATCH_ROOMS = 200  # rooms a batch holds without rooms_at_once (baseline brains)
_NO_SPEC = ExperimentSpec(name="", control="", arms=())
BATCH = 200  # resamples scipy computes at once: bounds compare's memory on large arms
_json = msgspec.json.Encoder(decimal_format="number")


# -- the command lines -----------------------------------------------------------------------
def add_parsers(sub: Any) -> None:
    """The experiment and compare subcommands."""
    p = sub.add_parser("experiment", help="run an experiment: arms over scenarios and seeds")
    p.add_argument("spec", nargs="?", help="the experiment's spec (.toml)")
    p.add_argument(
        "--resume",
        metavar="EXPERIMENT_ID",
        help="go on with a stored experiment: completed rooms are not run again (the spec "
        "is the stored one: leave SPEC out, or give the same one)",
    )
    p.add_argument(
        "--budget-usd",
        type=float,
        metavar="X",
        help="stop opening rooms once this invocation's model calls cost X (estimated); "
        "overrides the spec's budget_usd",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    c = sub.add_parser("compare", help="compare an experiment's arms with its control")
    c.add_argument("experiment_id", help="the experiment (`mams experiment` printed it)")
    c.add_argument("--alpha", type=float, default=0.05, help="significance level (0.05)")
    c.add_argument("--markdown", metavar="FILE", help="write a Markdown report to FILE")
    c.add_argument("--plots", metavar="DIR", help="write PNG charts with error bars into DIR")
    c.add_argument("--random-seed", type=int, default=0, help="seed of the resampling (default 0)")
    c.add_argument(
        "--resamples", type=int, default=9999, help="bootstrap and permutation resamples"
    )
    c.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _dump(obj: object) -> None:
    import sys

    sys.stdout.write(_json.encode(obj).decode() + "\n")
    sys.stdout.flush()


def _uuid(text: str, what: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not an id") from None


# -- the spec, whole ---------------------------------------------------------------------------
def read_spec(path: Path) -> ExperimentSpec:
    """Read and validate a spec file (ExperimentSpecError, with every problem's path)."""
    return _read(path)[0]


def _read(path: Path) -> tuple[ExperimentSpec, dict[str, Any]]:
    source = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    except OSError as exc:
        raise ExperimentSpecError(
            [Problem("file", f"cannot read: {exc.strerror}")], source
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ExperimentSpecError([Problem("file", f"not valid TOML: {exc}")], source) from None
    try:
        return parse_spec(raw, source=source), raw
    except ExperimentSpecError as exc:
        # The scenario files named are checked too, so every problem is told at once.
        named = raw.get("scenarios")
        if isinstance(named, list) and all(isinstance(n, str) and n.strip() for n in named):
            listed = msgspec.structs.replace(_NO_SPEC, scenarios=tuple(dict.fromkeys(named)))
            try:
                load_scenarios(listed, path.parent, source)
            except ExperimentSpecError as more:
                raise ExperimentSpecError([*exc.problems, *more.problems], source) from None
        raise


def check_spec(path: Path) -> tuple[ExperimentSpec, dict[tuple[str, str], Scenario]]:
    """A spec file with scenario files, validated whole before anything runs: the spec, every
    scenario file, and every arm applied to every scenario (ExperimentSpecError with every
    problem's path); each (arm, scenario)'s scenario."""
    spec, _ = _read(path)
    files = load_scenarios(spec, path.parent, str(path))
    return spec, arm_scenarios(spec, files, str(path))


def arm_scenarios(
    spec: ExperimentSpec, scenarios: dict[str, Scenario], source: str
) -> dict[tuple[str, str], Scenario]:
    """Each (arm, scenario)'s scenario, the arm's overrides applied and validated; raises
    ExperimentSpecError naming the arm field (or the scenario's path) of every problem."""
    problems: list[Problem] = []
    out: dict[tuple[str, str], Scenario] = {}
    for i, arm in enumerate(spec.arms):
        for name, scenario in scenarios.items():
            raw = apply_arm(scenario_to_raw(scenario), arm)
            try:
                out[arm.name, name] = parse_scenario(raw, source=name, default_name=scenario.name)
            except ScenarioError as exc:
                for p in exc.problems:
                    field_ = arm_field_of(p.path)
                    where = f"arms[{i}].{field_}" if field_ else f"arms[{i}]"
                    problems.append(Problem(where, f"on {name}: {p.path}: {p.message}"))
    if problems:
        raise ExperimentSpecError(list(dict.fromkeys(problems)), source)
    return out


def load_scenarios(spec: ExperimentSpec, base: Path, source: str) -> dict[str, Scenario]:
    """The spec's scenario files (relative to `base`), read and validated; every problem of
    every file at once, as `scenarios[i]` (its path inside the file after it)."""
    problems: list[Problem] = []
    found: dict[str, Scenario] = {}
    for i, name in enumerate(spec.scenarios):
        try:
            found[name] = load_scenario(base / name)
        except ScenarioError as exc:
            for p in exc.problems:
                problems.append(Problem(f"scenarios[{i}]", f"{name}: {p.path}: {p.message}"))
    if problems:
        raise ExperimentSpecError(problems, source)
    return found


def _check_models(spec: ExperimentSpec, cast: dict[tuple[str, str], Scenario]) -> bool:
    """Check every arm's providers are configured (ProviderConfigError names what to set);
    whether any agent is an LLM."""
    llm = False
    for scenario in cast.values():
        models = check_brains(scenario, list(scenario.buyer.items), RunOptions())
        llm = llm or {brain_label(m) for m in models.values()} != {BASELINE_LABEL}
    return llm


# -- running ---------------------------------------------------------------------------------
@dataclass(slots=True)
class Tally:
    """What a run of an experiment did so far (this invocation's)."""

    planned: int = 0
    completed: int = 0
    ran: int = 0
    deals: int = 0
    stopped_by_budget: bool = False
    usage: LLMUsage = field(default_factory=LLMUsage)


OnEnded = Callable[[Tally], None]


def _progress(out: Console) -> Progress:
    return Progress(
        TextColumn("experiment"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rooms  {task.fields[usage]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=out,
        transient=True,
    )


def _usage_text(tally: Tally) -> str:
    u = tally.usage
    tokens = u.input_tokens + u.output_tokens
    spend = f"${u.cost:.4f}" if u.cost_known else "cost unknown"
    return f"{tally.deals} deals, {tokens:,} tokens, {spend}"


async def execute(
    srv: Servers,
    spec: ExperimentSpec,
    cast: dict[tuple[str, str], tuple[UUID, Scenario]],
    out: Console,
    *,
    budget_usd: float | None = None,
    llm: bool = False,
    on_ended: OnEnded | None = None,
) -> Tally:
    """Run the experiment's rooms not completed yet, batch by batch of seeds (every arm and
    scenario of a batch before the next), going on with interrupted ones; stop opening
    batches once `budget_usd` is spent. `on_ended` sees the tally after each room ends."""
    from mams.bus.nats import NatsBus
    from mams.storage.leases import PgLeases

    nats_url = srv.nats_url
    assert nats_url is not None
    at_once = spec.rooms_at_once or (LLM_ROOMS_AT_ONCE if llm else BATCH_ROOMS)
    scenario_names = list(dict.fromkeys(name for _, name in cast))
    items = {
        name: [i.item_name for i in cast[spec.arms[0].name, name][1].buyer.items]
        for name in scenario_names
    }
    per_batch = max(1, at_once // max(len(v) for v in items.values()))
    seeds = spec.seed_list()
    batches = [seeds[i : i + per_batch] for i in range(0, len(seeds), per_batch)]
    tally = Tally(planned=len(spec.arms) * len(seeds) * sum(len(v) for v in items.values()))
    async with srv.pool.acquire() as conn:
        for session_id, _ in cast.values():
            tally.completed += len(await run_states(conn, session_id, ("completed",)))

    async def connect(name: str) -> Bus:
        return await NatsBus.connect(nats_url, name=f"mams-{name}")

    with _progress(out) as bar:
        task = bar.add_task("x", total=tally.planned, completed=tally.completed, usage="")

        def on_event(nid: UUID, seq: int, event: Event, state: NegotiationState) -> None:
            tally.usage.add(event)
            if isinstance(event, NegotiationEnded):
                tally.ran += 1
                if event.status == "completed":
                    tally.completed += 1
                    tally.deals += event.outcome.type == "deal"
                bar.update(task, completed=tally.completed, usage=_usage_text(tally))
                if on_ended is not None:
                    on_ended(tally)

        async with PgLeases(srv.pool, srv.dsn) as leases:
            for batch in batches:
                for name in scenario_names:
                    for arm in spec.arms:
                        if budget_usd is not None and tally.usage.cost >= budget_usd:
                            tally.stopped_by_budget = True
                            return tally
                        session_id, scenario = cast[arm.name, name]
                        await _run_batch(
                            srv, spec, arm, session_id, scenario, batch, at_once,
                            connect=connect, leases=leases, on_event=on_event,
                        )  # fmt: skip
    return tally


async def _run_batch(
    srv: Servers,
    spec: ExperimentSpec,
    arm: Arm,
    session_id: UUID,
    scenario: Scenario,
    seeds: list[int],
    at_once: int,
    **kw: Any,
) -> list[RoomResult]:
    """One arm's rooms of one scenario for these seeds: those the session has not
    completed, interrupted ones gone on with."""
    options = RunOptions(
        max_rounds=spec.max_rounds_of(arm),
        seed=seeds[0],
        runs=len(seeds),
        rooms_at_once=at_once,
        monitor=False,  # `mams compare` runs the quality checks on the log
    )
    items = list(scenario.buyer.items)
    planned = plan_rooms([i.item_name for i in items], options).planned
    async with srv.pool.acquire() as conn:
        progress = await progress_of(conn, session_id, [(r.item_name, r.seed) for r in planned])
    if progress.elsewhere:
        raise ConfigError(
            f"{progress.elsewhere} room(s) of session {session_id} are still being run by "
            "another live process; let it finish or stop it, then --resume again"
        )
    if len(progress.skip) >= len(planned) and not progress.interrupted:
        return []
    return await run_market(
        scenario,
        session_id,
        items,
        options=options,
        store=srv.store,
        skip=progress.skip,
        resume=progress.interrupted,
        **kw,
    )


async def cmd_experiment(args: argparse.Namespace, out: Console) -> int:
    """`mams experiment`: validate, store, run; print the id and the compare command."""
    if not args.spec and not args.resume:
        raise ConfigError("give a spec file (mams experiment SPEC.toml) or --resume EXPERIMENT_ID")
    if args.budget_usd is not None and not (args.budget_usd > 0 and math.isfinite(args.budget_usd)):
        raise ConfigError(f"--budget-usd must be a positive number, got {args.budget_usd}")
    resume = _uuid(args.resume, "--resume") if args.resume else None
    spec: ExperimentSpec | None = None
    cast: dict[tuple[str, str], Scenario] = {}
    if args.spec:
        path = Path(args.spec)
        spec = read_spec(path)
        if resume is None and spec.scenarios:
            spec, cast = check_spec(path)
            _check_models(spec, cast)
    out.print("[dim]starting servers...[/dim]")
    async with servers(need_bus=True) as srv:
        async with srv.pool.acquire() as conn:
            if resume is not None:
                experiment_id = resume
                given = spec
                spec, sessions = await stored_experiment(conn, resume)
                if given is not None and given != spec:
                    raise ConfigError(
                        f"{args.spec} is not the spec experiment {resume} was stored with; "
                        "leave SPEC out to go on with the stored one"
                    )
            else:
                assert spec is not None
                experiment_id = uuid.uuid4()
                if spec.session is not None:
                    stored = await load_session(conn, spec.session)
                    if stored is None:
                        raise ExperimentSpecError(
                            [
                                Problem(
                                    "session",
                                    f"no session {spec.session}; `mams sessions` lists them",
                                )
                            ],
                            args.spec,
                        )
                    cast = arm_scenarios(spec, {str(spec.session): stored}, args.spec)
                    _check_models(spec, cast)
                sessions = await store_experiment(conn, experiment_id, spec, cast)
        llm = _check_models(spec, {k: sc for k, (_, sc) in sessions.items()})
        budget = args.budget_usd if args.budget_usd is not None else spec.budget_usd
        out.print(f"[dim]experiment:[/dim] {experiment_id}  {untrusted(spec.name)}")
        out.print(
            f"[dim]arms:[/dim] {', '.join(a.name for a in spec.arms)} (control {spec.control}); "
            f"[dim]scenarios:[/dim] {len({s for _, s in sessions})}; "
            f"[dim]seeds:[/dim] {spec.seeds}..{spec.seeds + spec.repeats - 1}"
        )
        done = False
        try:
            tally = await execute(srv, spec, sessions, out, budget_usd=budget, llm=llm)
            done = True
        finally:
            if not done:
                out.print(f"[dim]go on with it:[/dim] mams experiment --resume {experiment_id}")
    u = tally.usage
    out.print(
        f"{tally.completed} of {tally.planned} rooms completed ({tally.ran} run now); "
        f"{_usage_text(tally)}"
    )
    if tally.stopped_by_budget:
        out.print(
            f"[yellow]budget reached[/yellow] (${u.cost:.4f} of ${budget}): no more rooms opened; "
            f"go on with: mams experiment --resume {experiment_id} --budget-usd X"
        )
    elif tally.completed < tally.planned:
        out.print(f"[dim]go on with it:[/dim] mams experiment --resume {experiment_id}")
    out.print(f"[dim]compare the arms:[/dim] mams compare {experiment_id}")
    if args.json:
        _dump(
            {
                "experiment_id": str(experiment_id),
                "name": spec.name,
                "arms": [
                    {"arm": a, "scenario": s, "session_id": str(sid)}
                    for (a, s), (sid, _) in sessions.items()
                ],
                "rooms_planned": tally.planned,
                "rooms_completed": tally.completed,
                "rooms_run": tally.ran,
                "stopped_by_budget": tally.stopped_by_budget,
                "tokens": u.input_tokens + u.output_tokens,
                "cost_usd": u.cost_usd,
                "compare": f"mams compare {experiment_id}",
            }
        )
    return 0


async def store_experiment(
    conn: Conn,
    experiment_id: UUID,
    spec: ExperimentSpec,
    cast: dict[tuple[str, str], Scenario],
) -> dict[tuple[str, str], tuple[UUID, Scenario]]:
    """Store the experiment and a session per (arm, scenario); each one's session and
    scenario, in the spec's order."""
    sessions = {key: (uuid.uuid4(), sc) for key, sc in cast.items()}
    await create_experiment(
        conn,
        experiment_id,
        spec.name,
        msgspec.json.encode(spec),
        [
            (ArmSession(arm=a, scenario=s, session_id=sid), sc)
            for (a, s), (sid, sc) in sessions.items()
        ],
    )
    return sessions


async def stored_experiment(
    conn: Queries, experiment_id: UUID
) -> tuple[ExperimentSpec, dict[tuple[str, str], tuple[UUID, Scenario]]]:
    row = await load_experiment(conn, experiment_id)
    if row is None:
        raise ConfigError(f"no experiment {experiment_id}")
    spec = msgspec.json.decode(row.spec, type=ExperimentSpec)
    sessions: dict[tuple[str, str], tuple[UUID, Scenario]] = {}
    for a in await experiment_sessions(conn, experiment_id):
        scenario = await load_session(conn, a.session_id)
        assert scenario is not None  # experiment_arms references sessions
        sessions[a.arm, a.scenario] = (a.session_id, scenario)
    order = {arm.name: i for i, arm in enumerate(spec.arms)}
    ordered = dict(sorted(sessions.items(), key=lambda kv: (order.get(kv[0][0], 0), kv[0][1])))
    return spec, ordered


# -- comparing ---------------------------------------------------------------------------------
async def experiment_rooms(
    srv: Servers, experiment_id: UUID
) -> tuple[ExperimentSpec, dict[str, dict[RoomKey, dict[str, float | None]]]]:
    """The experiment's spec and every completed room's figures, by arm and room key."""
    from mams.storage.analyses import analyses_of
    from mams.storage.parallel import default_jobs, map_streams

    async with srv.pool.acquire() as conn:
        spec, sessions = await stored_experiment(conn, experiment_id)
        keys: dict[UUID, tuple[str, RoomKey]] = {}
        for (arm, scenario_name), (session_id, _) in sessions.items():
            for run in await run_states(conn, session_id, ("completed",)):
                keys[run.negotiation_id] = (arm, RoomKey(scenario_name, run.item_name, run.seed))
    from mams.domain.experiment import room_metrics

    rooms: dict[str, dict[RoomKey, dict[str, float | None]]] = {a.name: {} for a in spec.arms}
    async for chunk in map_streams(
        analyses_of, srv.store, list(keys), NegotiationAnalysis, dsn=srv.dsn, jobs=default_jobs()
    ):
        for analysis in chunk:
            arm, key = keys[analysis.negotiation_id]
            rooms[arm].setdefault(key, room_metrics(analysis))
    return spec, rooms


class ArmStat(msgspec.Struct, frozen=True, kw_only=True):
    arm: str
    metric: str
    n: int
    mean: float | None
    ci_low: float | None
    ci_high: float | None


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    arm: str
    metric: str
    pairs: int
    mean_difference: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    p_holm: float | None = None
    significant: bool = False


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def mean_ci(
    values: list[float], *, resamples: int, seed: int
) -> tuple[float | None, float | None, float | None]:
    """Mean and 95% bootstrap interval (scipy, BCa; percentile when BCa cannot be had; a
    single value or all alike: the value itself)."""
    import warnings

    import numpy as np
    from scipy import stats

    if not values:
        return None, None, None
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if len(data) < 2 or np.all(data == data[0]):
        return mean, mean, mean
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap(
                (data,),
                np.mean,
                n_resamples=resamples,
                method=method,
                confidence_level=0.95,
                batch=BATCH,
                random_state=np.random.default_rng(seed),
            )
        low, high = res.confidence_interval
        if math.isfinite(low) and math.isfinite(high):
            return mean, float(low), float(high)
    return mean, None, None


def paired_p(diffs: list[float], *, resamples: int, seed: int) -> float | None:
    """Two-sided p-value of a paired permutation test (signs of the differences permuted:
    scipy's permutation_test, permutation_type 'samples'); 1.0 when every difference is 0."""
    import numpy as np
    from scipy import stats

    if not diffs:
        return None
    d = np.asarray(diffs, dtype=float)
    if np.all(d == 0):
        return 1.0

    def statistic(x: Any, axis: int) -> Any:
        return np.mean(x, axis=axis)

    # One sample under permutation_type "samples": the null flips each difference's sign.
    res = stats.permutation_test(
        (d,),
        statistic,
        permutation_type="samples",
        vectorized=True,
        n_resamples=resamples,
        alternative="two-sided",
        batch=BATCH,
        random_state=np.random.default_rng(seed),
    )
    return _finite(float(res.pvalue))


def compare(
    spec: ExperimentSpec,
    rooms: dict[str, dict[RoomKey, dict[str, float | None]]],
    *,
    alpha: float,
    resamples: int = 9999,
    seed: int = 0,
) -> tuple[list[ArmStat], list[Comparison]]:
    """Per arm and metric the mean and its interval; each arm against the control, the
    paired differences, their interval, p-values and Holm's correction across them all."""
    from statsmodels.stats.multitest import multipletests

    stats_: list[ArmStat] = []
    for arm in spec.arms:
        for metric, _ in METRICS:
            values = [m[metric] for m in rooms[arm.name].values()]
            present = [v for v in values if v is not None]
            mean, low, high = mean_ci(present, resamples=resamples, seed=seed)
            stats_.append(
                ArmStat(
                    arm=arm.name, metric=metric, n=len(present), mean=mean, ci_low=low, ci_high=high
                )
            )
    control = rooms[spec.control]
    comparisons: list[Comparison] = []
    for arm in spec.arms:
        if arm.name == spec.control:
            continue
        mine = rooms[arm.name]
        shared = [k for k in mine if k in control]
        for metric, _ in METRICS:
            diffs = []
            for k in shared:
                a, c = mine[k][metric], control[k][metric]
                if a is not None and c is not None:
                    diffs.append(a - c)
            mean, low, high = mean_ci(diffs, resamples=resamples, seed=seed)
            p = paired_p(diffs, resamples=resamples, seed=seed)
            comparisons.append(
                Comparison(
                    arm=arm.name,
                    metric=metric,
                    pairs=len(diffs),
                    mean_difference=mean,
                    ci_low=low,
                    ci_high=high,
                    p_value=p,
                )
            )
    tested = [i for i, c in enumerate(comparisons) if c.p_value is not None]
    if tested:
        reject, corrected, _, _ = multipletests(
            [comparisons[i].p_value for i in tested], alpha=alpha, method="holm"
        )
        for i, r, pc in zip(tested, reject, corrected, strict=True):
            comparisons[i] = msgspec.structs.replace(
                comparisons[i], p_holm=float(pc), significant=bool(r)
            )
    return stats_, comparisons


def _fmt(x: float | None, places: int = 3) -> str:
    return "-" if x is None else f"{x:.{places}f}"


def markdown(
    spec: ExperimentSpec,
    experiment_id: UUID,
    counts: dict[str, int],
    arm_stats: list[ArmStat],
    comparisons: list[Comparison],
    alpha: float,
) -> str:
    """The comparison as a Markdown report."""
    lines = [
        f"# Experiment {spec.name}",
        "",
        f"Experiment `{experiment_id}`; control arm `{spec.control}`; seeds {spec.seeds}.."
        f"{spec.seeds + spec.repeats - 1}; completed rooms: "
        + ", ".join(f"`{a}` {n}" for a, n in counts.items())
        + ".",
        "",
        "## Arms (mean and 95% bootstrap CI)",
        "",
        "| metric | arm | n | mean | 95% CI |",
        "|---|---|---|---|---|",
    ]
    for s in arm_stats:
        lines.append(
            f"| {s.metric} | {s.arm} | {s.n} | {_fmt(s.mean)} | "
            f"[{_fmt(s.ci_low)}, {_fmt(s.ci_high)}] |"
        )
    lines += [
        "",
        f"## Against the control (paired: arm minus `{spec.control}`; Holm-corrected, "
        f"alpha {alpha})",
        "",
        "| metric | arm | pairs | mean difference | 95% CI | p | p (Holm) | significant |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        lines.append(
            f"| {c.metric} | {c.arm} | {c.pairs} | {_fmt(c.mean_difference)} | "
            f"[{_fmt(c.ci_low)}, {_fmt(c.ci_high)}] | {_fmt(c.p_value, 4)} | "
            f"{_fmt(c.p_holm, 4)} | {'yes' if c.significant else 'no'} |"
        )
    lines += ["", "Metrics:", ""] + [f"- `{k}`: {d}" for k, d in METRICS]
    return "\n".join(lines) + "\n"


def plots(
    directory: Path, spec: ExperimentSpec, arm_stats: list[ArmStat], comparisons: list[Comparison]
) -> list[Path]:
    """Two charts with error bars (95% CIs): each metric's mean per arm, and each arm's
    paired difference from the control."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, rows, label in (
        ("arms.png", arm_stats, "mean"),
        ("differences.png", comparisons, f"difference from {spec.control}"),
    ):
        if not rows:
            continue
        fig, axes = plt.subplots(2, 4, figsize=(16, 7))
        for ax, (metric, _) in zip(axes.flat, METRICS, strict=True):
            mine = [r for r in rows if r.metric == metric]
            names = [r.arm for r in mine]
            means = [
                getattr(r, "mean", None) if isinstance(r, ArmStat) else r.mean_difference
                for r in mine
            ]
            ys = [m if m is not None else math.nan for m in means]
            err_low = [
                y - r.ci_low if r.ci_low is not None else 0 for y, r in zip(ys, mine, strict=True)
            ]
            err_high = [
                r.ci_high - y if r.ci_high is not None else 0 for y, r in zip(ys, mine, strict=True)
            ]
            ax.bar(range(len(names)), ys, yerr=[err_low, err_high], capsize=4, color="#4c72b0")
            ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
            ax.set_title(metric, fontsize=10)
            if label != "mean":
                ax.axhline(0, color="black", linewidth=0.8)
        fig.suptitle(f"{spec.name}: {label} (95% CI)")
        fig.tight_layout()
        path = directory / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


async def cmd_compare(args: argparse.Namespace, out: Console) -> int:
    """`mams compare`: per arm and metric, and each arm against the control."""
    import anyio
    import anyio.to_thread

    experiment_id = _uuid(args.experiment_id, "EXPERIMENT_ID")
    if not 0 < args.alpha < 1:
        raise ConfigError(f"--alpha must be between 0 and 1, got {args.alpha}")
    if args.resamples < 100:
        raise ConfigError(f"--resamples must be at least 100, got {args.resamples}")
    async with servers(need_bus=False) as srv:
        spec, rooms = await experiment_rooms(srv, experiment_id)
    arm_stats, comparisons = await anyio.to_thread.run_sync(
        lambda: compare(
            spec, rooms, alpha=args.alpha, resamples=args.resamples, seed=args.random_seed
        )
    )
    counts = {a: len(r) for a, r in rooms.items()}
    table = Table(title=f"{spec.name}: arms (mean, 95% CI)", header_style="bold")
    for col in ("metric", *counts):
        table.add_column(col)
    for metric, _ in METRICS:
        cells = []
        for arm in counts:
            s = next(x for x in arm_stats if x.arm == arm and x.metric == metric)
            cells.append(f"{_fmt(s.mean)} [{_fmt(s.ci_low)}, {_fmt(s.ci_high)}] n={s.n}")
        table.add_row(metric, *cells)
    out.print(table)
    if comparisons:
        diff = Table(
            title=f"against {spec.control} (paired, Holm, alpha {args.alpha})", header_style="bold"
        )
        for col in ("arm", "metric", "pairs", "difference [95% CI]", "p", "p Holm", ""):
            diff.add_column(col)
        for c in comparisons:
            diff.add_row(
                c.arm, c.metric, str(c.pairs),
                f"{_fmt(c.mean_difference)} [{_fmt(c.ci_low)}, {_fmt(c.ci_high)}]",
                _fmt(c.p_value, 4), _fmt(c.p_holm, 4),
                "[bold]significant[/bold]" if c.significant else "",
            )  # fmt: skip
        out.print(diff)
    written: list[Path] = []
    if args.plots:
        written = await anyio.to_thread.run_sync(
            lambda: plots(Path(args.plots), spec, arm_stats, comparisons)
        )
        for p in written:
            out.print(f"[dim]plot:[/dim] {p}")
    if args.markdown:
        await anyio.Path(args.markdown).write_text(
            markdown(spec, experiment_id, counts, arm_stats, comparisons, args.alpha),
            encoding="utf-8",
        )
        out.print(f"[dim]report:[/dim] {args.markdown}")
    if args.json:
        _dump(
            {
                "experiment_id": str(experiment_id),
                "name": spec.name,
                "control": spec.control,
                "alpha": args.alpha,
                "rooms": counts,
                "metrics": [{"key": k, "description": d} for k, d in METRICS],
                "arms": arm_stats,
                "comparisons": comparisons,
                "plots": [str(p) for p in written],
                "markdown": args.markdown,
            }
        )
    return 0
