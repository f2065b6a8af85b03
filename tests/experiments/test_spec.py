"""The spec: every problem named by its path before anything runs; arms applied to scenarios."""

from __future__ import annotations

import subprocess
import tomllib
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from mams.domain.config import load_scenario, parse_scenario, scenario_to_raw
from mams.domain.experiment import (
    Arm,
    ExperimentSpecError,
    apply_arm,
    arm_field_of,
    parse_spec,
)
from mams.experiment import arm_scenarios, check_spec, load_scenarios, read_spec
from tests.e2e.test_cli import flat, one_json_object
from tests.experiments.helpers import EXAMPLE, spec_text
from tests.processes.helpers import mams_command


def _paths(raw: object) -> list[str]:
    with pytest.raises(ExperimentSpecError) as info:
        parse_spec(raw, source="spec.toml")
    return [p.path for p in info.value.problems]


def test_a_good_spec_parses() -> None:
    raw = tomllib.loads(spec_text(("a", ""), ("b", "max_rounds = 2"), repeats=5, seeds=7))
    spec = parse_spec(raw)
    assert [a.name for a in spec.arms] == ["a", "b"]
    assert spec.control == "a"
    assert spec.seed_list() == [7, 8, 9, 10, 11]
    assert spec.max_rounds_of(spec.arm("b")) == 2
    assert spec.max_rounds_of(spec.arm("a")) == spec.max_rounds


def test_every_problem_is_named_by_its_path() -> None:
    raw = {
        "name": "x",
        "control": "nobody",
        "scenarios": ["a.toml"],
        "session": "not-an-id",
        "repeats": 0,
        "rooms_at_once": 0,
        "budget_usd": -1,
        "colour": "red",
        "arms": [
            {"name": "a", "seller_style": "grumpy", "buyer_model": "nonsense"},
            {"name": "a", "customer_retention_weight": 0.7, "profit_maximization_weight": 0.7},
            {"name": "bad name!", "max_rounds": 1, "strategy": "x"},
        ],
    }
    paths = _paths(raw)
    for path in (
        "colour",
        "arms[0].seller_style",
        "arms[0].buyer_model",
        "arms[1].profit_maximization_weight",
        "arms[2].name",
        "arms[2].max_rounds",
        "arms[2].strategy",
        "scenarios",  # both scenarios and session
        "repeats",
        "rooms_at_once",
        "budget_usd",
    ):
        assert path in paths, (path, paths)


def test_a_duplicate_arm_and_an_unknown_control_are_named() -> None:
    raw = tomllib.loads(spec_text(("a", ""), ("a", ""), repeats=2, control="contrl"))
    paths = _paths(raw)
    assert "arms[1].name" in paths
    assert "control" in paths


def test_an_arm_overrides_every_seller_and_the_buyer() -> None:
    scenario = load_scenario(EXAMPLE)
    arm = Arm(
        name="x",
        buyer_model="baseline",
        seller_model="baseline",
        seller_style="rude",
        customer_retention_weight=Decimal("0.8"),
    )
    raw = apply_arm(scenario_to_raw(scenario), arm)
    changed = parse_scenario(raw)
    assert changed.buyer.model == "baseline"
    assert {s.style for s in changed.sellers} == {"rude"}
    assert {s.model for s in changed.sellers} == {"baseline"}
    assert {s.customer_retention_weight for s in changed.sellers} == {Decimal("0.8")}
    assert {s.profit_maximization_weight for s in changed.sellers} == {Decimal("0.2")}
    assert scenario_to_raw(scenario) != raw  # the input is left as it was
    assert changed.buyer.items == scenario.buyer.items


def test_a_scenario_problem_an_arm_causes_is_named_by_the_arm_field() -> None:
    assert arm_field_of("sellers[3].style") == "seller_style"
    assert arm_field_of("buyer.strategy") == "buyer_strategy"
    assert arm_field_of("sellers[0].inventory[0].least_price") is None


def test_scenario_files_are_read_relative_to_the_spec_and_checked_whole(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[buyer]\nhandle = "@B"\n', encoding="utf-8")
    spec_file = tmp_path / "spec.toml"
    text = spec_text(("a", ""), repeats=2).replace(str(EXAMPLE), "bad.toml")
    spec_file.write_text(text, encoding="utf-8")
    spec = read_spec(spec_file)
    with pytest.raises(ExperimentSpecError) as info:
        load_scenarios(spec, tmp_path, str(spec_file))
    messages = [f"{p.path}: {p.message}" for p in info.value.problems]
    assert any(m.startswith("scenarios[0]: bad.toml: buyer.items") for m in messages), messages
    assert any("sellers" in m for m in messages), messages


def test_an_override_parse_scenario_refuses_names_the_arm() -> None:
    spec = parse_spec(tomllib.loads(spec_text(("a", ""), ("b", ""), repeats=1)))
    scenario = load_scenario(EXAMPLE)
    # A weight an arm sets that the scenario validator refuses (4 decimal places).
    bad = Arm(name="b", customer_retention_weight=Decimal("0.1234"))
    spec = msgspec.structs.replace(spec, arms=(spec.arms[0], bad))
    with pytest.raises(ExperimentSpecError) as info:
        arm_scenarios(spec, {"phone": scenario}, "spec.toml")
    paths = {p.path for p in info.value.problems}
    assert "arms[1].customer_retention_weight" in paths, info.value.problems


def test_a_bad_spec_exits_2_naming_the_field_and_writes_nothing(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(
        spec_text(("a", ""), ("b", 'seller_style = "grumpy"'), repeats=3), encoding="utf-8"
    )
    # No servers: a bad spec is refused before any is started or reached.
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    proc = subprocess.run(
        [*mams_command(), "experiment", str(spec_file), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "arms[1].seller_style" in flat(proc.stderr)
    assert "starting servers" not in proc.stderr
    assert "arms[1].seller_style" in one_json_object(proc.stdout)["error"]


def test_problems_of_the_spec_and_of_its_scenario_files_are_told_together(
    tmp_path: Path,
) -> None:
    (tmp_path / "bad.toml").write_text('[buyer]\nhandle = "@B"\n', encoding="utf-8")
    spec_file = tmp_path / "spec.toml"
    text = spec_text(("a", 'seller_style = "grumpy"'), repeats=0)
    spec_file.write_text(text.replace(str(EXAMPLE), "bad.toml"), encoding="utf-8")
    with pytest.raises(ExperimentSpecError) as info:
        check_spec(spec_file)
    paths = [p.path for p in info.value.problems]
    assert "arms[0].seller_style" in paths
    assert "repeats" in paths
    assert "scenarios[0]" in paths  # bad.toml's own problems, with the spec's
