"""Validity of `mams compare`: an A/A experiment shows no difference, a known effect is seen.

The experiments run end to end in this process on the real NATS and PostgreSQL (baseline
brains, deterministic by seed), and are compared as `mams compare` compares them.
"""

from __future__ import annotations

import io
import tomllib
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
from rich.console import Console

from mams.domain.experiment import Arm, ExperimentSpec, RoomKey, parse_spec
from mams.experiment import (
    Comparison,
    arm_scenarios,
    compare,
    execute,
    experiment_rooms,
    load_scenarios,
    store_experiment,
)
from mams.infra import Servers, servers
from tests.e2e.test_cli import schema_dsn
from tests.experiments.helpers import EXAMPLE, spec_text

ALPHA = 0.05
Rooms = dict[str, dict[RoomKey, dict[str, float | None]]]


@pytest.fixture
async def srv(
    monkeypatch: pytest.MonkeyPatch, database_url: str, pg_schema: str, nats_url: str
) -> AsyncIterator[Servers]:
    monkeypatch.setenv("DATABASE_URL", schema_dsn(database_url, pg_schema))
    monkeypatch.setenv("NATS_URL", nats_url)
    async with servers(need_bus=True) as found:
        yield found


async def run_experiment(srv: Servers, text: str) -> tuple[ExperimentSpec, Rooms]:
    """Store and run the spec; every completed room's figures, by arm."""
    spec = parse_spec(tomllib.loads(text))
    cast = arm_scenarios(spec, load_scenarios(spec, EXAMPLE.parent, "spec"), "spec")
    experiment_id = uuid.uuid4()
    async with srv.pool.acquire() as conn:
        sessions = await store_experiment(conn, experiment_id, spec, cast)
    tally = await execute(srv, spec, sessions, Console(file=io.StringIO()))
    assert tally.completed == tally.planned
    stored, rooms = await experiment_rooms(srv, experiment_id)
    assert stored == spec
    return spec, rooms


def _by_metric(comparisons: list[Comparison], arm: str) -> dict[str, Comparison]:
    return {c.metric: c for c in comparisons if c.arm == arm}


async def test_an_a_a_experiment_shows_no_significant_difference(srv: Servers) -> None:
    spec, rooms = await run_experiment(srv, spec_text(("a", ""), ("a2", ""), repeats=40))
    assert {arm: len(r) for arm, r in rooms.items()} == {"a": 80, "a2": 80}  # 2 items x 40
    _, comparisons = compare(spec, rooms, alpha=ALPHA, resamples=2000)
    assert comparisons
    assert not any(c.significant for c in comparisons), comparisons
    # Baseline brains are deterministic by seed, so the same arm twice is the same rooms:
    # every paired difference is 0.
    assert {c.mean_difference for c in comparisons if c.pairs} == {0.0}

    # The same arm on different seeds, paired by position: differences only by chance,
    # which the test must not call significant.
    first: dict[RoomKey, dict[str, float | None]] = {}
    second: dict[RoomKey, dict[str, float | None]] = {}
    for key, metrics in rooms["a"].items():
        assert key.seed is not None
        half, n = divmod(key.seed - spec.seeds, 20)
        (first if half == 0 else second)[RoomKey(key.scenario, key.item, n)] = metrics
    halves = msgspec.structs.replace(spec, arms=(Arm(name="x"), Arm(name="y")), control="x")
    assert len(first) == len(second) == 40
    _, chance = compare(halves, {"x": first, "y": second}, alpha=ALPHA, resamples=2000)
    tested = [c for c in chance if c.p_value is not None and c.pairs]
    assert any(c.mean_difference for c in tested)  # the halves do differ, by chance
    assert not any(c.significant for c in tested), tested


async def test_a_known_effect_is_detected(srv: Servers) -> None:
    # A buyer that accepts the first offer in its range (the accept_first strategy) against
    # one that counters (default); and one whose rooms have 2 rounds, so it must take an
    # offer in its last round, the first one. Taking the first offer saves nothing on it.
    spec, rooms = await run_experiment(
        srv,
        spec_text(
            ("counters", ""),
            ("accepts-first", 'buyer_strategy = "accept_first"'),
            ("two-rounds", "max_rounds = 2"),
            repeats=15,
        ),
    )
    arm_stats, comparisons = compare(spec, rooms, alpha=ALPHA, resamples=2000)
    means = {(s.arm, s.metric): s for s in arm_stats}
    for arm in ("accepts-first", "two-rounds"):
        effect = _by_metric(comparisons, arm)
        for metric in ("savings_pct", "surplus_share", "rounds"):
            c = effect[metric]
            assert c.significant, c
            assert c.mean_difference is not None
            assert c.mean_difference < 0, c
            assert c.ci_high is not None
            assert c.ci_high < 0, c
            assert c.p_holm is not None
            assert c.p_holm <= ALPHA
        assert not effect["tokens"].significant  # no model, no tokens, no difference
        assert means[arm, "savings_pct"].mean == 0.0
    ci = means["counters", "savings_pct"]
    assert ci.ci_low is not None
    assert ci.ci_high is not None
    assert ci.mean is not None
    assert 0 < ci.ci_low <= ci.mean <= ci.ci_high
