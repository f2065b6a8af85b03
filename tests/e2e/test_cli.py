"""End to end: the `mams` command line as a subprocess, over real NATS and PostgreSQL.

Each test runs the installed console script with DATABASE_URL pointing at its own schema
(the `pg_schema` fixture, selected through the DSN's `options=-csearch_path=...`, which
asyncpg passes to the server as a startup parameter) and NATS_URL at the real server.
One test removes both variables and checks the embedded nats-server and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import anyio
import asyncpg
import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "phone-accessories.toml"
TIMEOUT = 120.0
OUTCOME_TYPES = {"deal", "no_deal", "max_rounds"}
STATUSES = {"completed", "aborted"}

# The shape of tests/integration/scenarios.py's PHONE, written out here, plus an item no
# seller will sell within the buyer's budget (so a non-deal outcome shows up too).
SCENARIO = """
name = "e2e phone accessories"

[buyer]
handle = "@Buyer"

[[buyer.items]]
item_name = "iPhone 15 case"
quantity = 2
min_price = 8.00
max_price = 14.00

[[buyer.items]]
item_name = "USB-C cable"
quantity = 3
min_price = 4.00
max_price = 9.00

[[buyer.items]]
item_name = "Screen protector"
quantity = 1
min_price = 1.00
max_price = 3.00

[[sellers]]
handle = "@TechMart"
style = "rude"
customer_retention_weight = 0.2
profit_maximization_weight = 0.8
[[sellers.inventory]]
item_name = "iPhone 15 case"
cost_price = 7.00
selling_price = 18.00
least_price = 11.00
[[sellers.inventory]]
item_name = "USB-C cable"
cost_price = 2.00
selling_price = 9.50
least_price = 5.50
[[sellers.inventory]]
item_name = "Screen protector"
cost_price = 2.00
selling_price = 9.00
least_price = 5.00

[[sellers]]
handle = "@GadgetHub"
style = "neutral"
customer_retention_weight = 0.5
profit_maximization_weight = 0.5
[[sellers.inventory]]
item_name = "iPhone 15 case"
cost_price = 6.50
selling_price = 16.00
least_price = 10.00

[[sellers]]
handle = "@QuickTech"
style = "sweet"
customer_retention_weight = 0.7
profit_maximization_weight = 0.3
[[sellers.inventory]]
item_name = "iPhone 15 case"
cost_price = 8.00
selling_price = 15.00
least_price = 12.50
[[sellers.inventory]]
item_name = "USB-C cable"
cost_price = 3.00
selling_price = 8.00
least_price = 6.00
"""

# Four independent mistakes, each expected on stderr as `path: message`.
BAD_SCENARIO = (
    SCENARIO.replace('handle = "@Buyer"', 'handle = "@Buyer"\ncolour = "red"')
    .replace("least_price = 11.00", "least_price = 6.00")  # sellers[0].inventory[0] < cost
    .replace('style = "neutral"', 'style = "grumpy"')  # sellers[1]
    .replace("profit_maximization_weight = 0.3", "profit_maximization_weight = 0.5")  # [2]
)
BAD_PROBLEMS = [
    ("buyer.colour", "unknown field"),
    ("sellers[0].inventory[0].least_price", "must be greater than cost_price (7.00)"),
    ("sellers[1].style", "must be one of rude, neutral, sweet, got 'grumpy'"),
    (
        "sellers[2].profit_maximization_weight",
        "must sum to 1 with customer_retention_weight (0.7 + 0.5 = 1.2)",
    ),
]


# -- helpers ---------------------------------------------------------------------------------
def mams_command() -> list[str]:
    """The installed console script next to this interpreter (there is no `python -m mams`)."""
    script = Path(sys.executable).parent / "mams"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from mams.cli import main; main()"]


def mams(*args: str, env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*mams_command(), *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc


def one_json_object(stdout: str) -> dict[str, Any]:
    """stdout must be exactly one JSON object (prices parsed as exact decimals)."""
    text = stdout.strip()
    assert text, "stdout is empty"
    decoder = json.JSONDecoder(parse_float=Decimal)
    obj, end = decoder.raw_decode(text)
    assert end == len(text), f"more than one JSON value on stdout: {text[end:]!r}"
    assert isinstance(obj, dict)
    return obj


def flat(text: str) -> str:
    """Whitespace collapsed: rich wraps long lines for narrow terminals."""
    return " ".join(text.split())


def schema_dsn(database_url: str, schema: str) -> str:
    """The DSN with `options=-csearch_path=<schema>` added to its query."""
    parts = urlsplit(database_url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def base_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "MAMS_LOG_LEVEL")}
    env["MAMS_DATA_DIR"] = str(data_dir)  # never the user's own data dir
    env["NO_COLOR"] = "1"
    return env


@dataclass(frozen=True)
class Cli:
    """Runs `mams` against one test's schema and the real NATS."""

    env: dict[str, str]
    cwd: Path
    database_url: str
    schema: str

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return mams(*args, env=self.env, cwd=self.cwd)

    def json(self, *args: str) -> dict[str, Any]:
        proc = ok(self(*args, "--json"))
        return one_json_object(proc.stdout)

    async def execute(self, sql: str) -> None:
        """Run SQL in the test's schema."""
        conn = await asyncpg.connect(
            self.database_url, server_settings={"search_path": self.schema}
        )
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def row_counts(self) -> dict[str, int]:
        """Rows in every table of the schema."""
        conn = await asyncpg.connect(self.database_url)
        try:
            tables = await conn.fetch(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = $1 AND table_type = 'BASE TABLE' ORDER BY table_name",
                self.schema,
            )
            counts: dict[str, int] = {}
            for t in tables:
                name = str(t["table_name"])
                n = await conn.fetchval(f'SELECT count(*) FROM "{self.schema}"."{name}"')
                counts[name] = int(n)
            return counts
        finally:
            await conn.close()


@pytest.fixture
def cli(tmp_path: Path, pg_schema: str, database_url: str, nats_url: str) -> Cli:
    env = base_env(tmp_path / "mams-data")
    env["DATABASE_URL"] = schema_dsn(database_url, pg_schema)
    env["NATS_URL"] = nats_url
    return Cli(env, tmp_path, database_url, pg_schema)


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "phone.toml"
    path.write_text(SCENARIO, encoding="utf-8")
    return path


@pytest.fixture(params=["inline", "example"])
def any_scenario(request: pytest.FixtureRequest, scenario_file: Path) -> Path:
    """The test's own scenario, and the shipped example (which must exist)."""
    return scenario_file if request.param == "inline" else EXAMPLE


def load_toml(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        return tomllib.load(f, parse_float=Decimal)


def check_run_json(doc: dict[str, Any], scenario: dict[str, Any]) -> None:
    """The documented `mams run --json` shape, checked against the scenario's terms."""
    assert set(doc) == {"session_id", "brain", "negotiations"}
    assert isinstance(doc["session_id"], str)
    assert doc["session_id"]
    assert isinstance(doc["brain"], str)
    assert doc["brain"]
    buyer_items = {i["item_name"]: i for i in scenario["buyer"]["items"]}
    negs = doc["negotiations"]
    assert isinstance(negs, list)
    assert sorted(n["item"] for n in negs) == sorted(buyer_items), "one negotiation per item"
    assert len({n["negotiation_id"] for n in negs}) == len(negs)
    for n in negs:
        assert set(n) == {"negotiation_id", "item", "seed", "status", "outcome", "flags"}
        assert isinstance(n["negotiation_id"], str)
        assert n["seed"] is None or isinstance(n["seed"], int)
        kinds = {"price_hallucination", "leakage", "constraint", "coherence"}
        assert set(n["flags"]) <= kinds
        assert all(isinstance(v, int) and v > 0 for v in n["flags"].values())
        assert n["status"] in STATUSES
        check_outcome(n["outcome"], buyer_items[n["item"]], scenario)


def check_outcome(o: dict[str, Any], buyer_item: dict[str, Any], scenario: dict[str, Any]) -> None:
    assert set(o) == {"type", "seller", "unit_price", "quantity", "rounds"}
    assert o["type"] in OUTCOME_TYPES
    assert isinstance(o["rounds"], int)
    assert not isinstance(o["rounds"], bool)
    assert o["rounds"] >= 0
    if o["type"] != "deal":
        assert o["seller"] is None
        assert o["unit_price"] is None
        assert o["quantity"] is None
        return
    assert isinstance(o["seller"], str)
    assert isinstance(o["unit_price"], Decimal | int), "unit_price must be a JSON number"
    assert isinstance(o["quantity"], int)
    assert not isinstance(o["quantity"], bool)
    price = Decimal(o["unit_price"])
    assert Decimal(0) <= price <= buyer_item["max_price"]
    assert o["quantity"] == buyer_item["quantity"]
    # The winner stocks the item, and no deal goes below its floor.
    stock = {
        s["handle"]: inv
        for s in scenario["sellers"]
        for inv in s["inventory"]
        if flat(inv["item_name"]).casefold() == flat(buyer_item["item_name"]).casefold()
    }
    assert o["seller"] in stock
    assert price >= stock[o["seller"]]["least_price"]


def outcome_line(o: dict[str, Any]) -> str:
    """What the transcript says at the end (domain/transcript.describe_outcome)."""
    if o["type"] == "deal":
        price = Decimal(o["unit_price"])
        return (
            f"DEAL with {o['seller']} at ${price:,.2f} x {o['quantity']} "
            f"after {o['rounds']} round(s)"
        )
    if o["type"] == "no_deal":
        return f"NO DEAL after {o['rounds']} round(s)"
    return f"ROUND LIMIT reached after {o['rounds']} round(s), no deal"


_IDS = ("seq", "message_id", "negotiation_id", "session_id")


def canonical_transcript(events: list[dict[str, Any]]) -> list[tuple[list[str], list[str]]]:
    """Per round: the buyer's / broker's events in order, and the sellers' as a sorted list.

    Sellers answer a round in parallel and the log keeps arrival order, so the order of
    different sellers' replies within a round is not part of what a seed fixes.
    """
    buyer = next(e for e in events if e["type"] == "negotiation.started")["buyer"]["agent_id"]
    rounds: list[tuple[list[str], list[str]]] = [([], [])]
    for e in events:
        if e["type"] == "round.opened":
            rounds.append(([], []))
        actor = e.get("seller") or e.get("agent")
        text = json.dumps(
            {k: v for k, v in e.items() if k not in _IDS}, sort_keys=True, default=str
        )
        ordered, sellers = rounds[-1]
        (sellers if actor is not None and actor != buyer else ordered).append(text)
    return [(ordered, sorted(sellers)) for ordered, sellers in rounds]


# -- 1. run --json ---------------------------------------------------------------------------
def test_run_json_contract(cli: Cli, any_scenario: Path) -> None:
    assert any_scenario.exists(), f"{any_scenario} is missing (README tells people to run it)"
    proc = ok(cli("run", str(any_scenario), "--json", "--seed", "5", "--max-rounds", "6"))
    doc = one_json_object(proc.stdout)
    check_run_json(doc, load_toml(any_scenario))
    # Human output went to stderr, not stdout.
    assert "starting servers" in proc.stderr
    assert f"session: {doc['session_id']}" in proc.stderr
    assert "Outcomes" in proc.stderr
    assert "starting servers" not in proc.stdout
    assert "Outcomes" not in proc.stdout
    for n in doc["negotiations"]:
        assert n["negotiation_id"] in proc.stderr


def test_run_inline_scenario_has_deals_and_a_non_deal(cli: Cli, scenario_file: Path) -> None:
    doc = cli.json("run", str(scenario_file), "--seed", "5", "--max-rounds", "6")
    by_item = {n["item"]: n for n in doc["negotiations"]}
    assert by_item["iPhone 15 case"]["outcome"]["type"] == "deal"
    assert by_item["USB-C cable"]["outcome"]["type"] == "deal"
    # Every floor is above the buyer's max: no deal is possible.
    assert by_item["Screen protector"]["outcome"]["type"] in {"no_deal", "max_rounds"}
    assert all(n["status"] == "completed" for n in doc["negotiations"])


def test_run_with_relaxed_durability_gives_the_same_outcomes(cli: Cli, scenario_file: Path) -> None:
    args = ("run", str(scenario_file), "--seed", "5", "--max-rounds", "6")
    durable = cli.json(*args)
    relaxed = cli.json(*args, "--durability", "relaxed")

    def outcomes(doc: dict[str, Any]) -> list[tuple[Any, Any]]:
        return sorted((n["item"], n["outcome"]) for n in doc["negotiations"])

    assert outcomes(relaxed) == outcomes(durable)
    bad = cli("run", str(scenario_file), "--durability", "sometimes")
    assert bad.returncode == 2
    assert "--durability" in bad.stderr


def test_run_without_json_prints_human_output_on_stdout(cli: Cli, scenario_file: Path) -> None:
    proc = ok(cli("run", str(scenario_file), "--seed", "5", "--max-rounds", "6"))
    assert "Outcomes" in proc.stdout
    assert "mams replay" in proc.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(proc.stdout)


def test_runs_negotiate_each_item_n_times_with_seeds_in_a_row(
    cli: Cli, scenario_file: Path
) -> None:
    doc = cli.json("run", str(scenario_file), "--runs", "3", "--seed", "5", "--max-rounds", "6")
    negs = doc["negotiations"]
    items = sorted({n["item"] for n in negs})
    assert len(items) == 3
    assert len(negs) == 9
    for item in items:
        assert sorted(n["seed"] for n in negs if n["item"] == item) == [5, 6, 7]
    # Run 5 + 1 is the run a lone `--seed 6` gives: same outcomes, item for item.
    alone = cli.json("run", str(scenario_file), "--seed", "6", "--max-rounds", "6")
    assert {n["item"]: n["outcome"] for n in alone["negotiations"]} == {
        n["item"]: n["outcome"] for n in negs if n["seed"] == 6
    }
    # Nine rooms: a progress bar and a table by item instead of every message...
    proc = ok(cli("run", str(scenario_file), "--runs", "3", "--max-rounds", "6"))
    assert "runs: 3 (seeds 0..2)" in proc.stdout
    assert "Outcomes by item" in proc.stdout
    assert "negotiation " not in proc.stdout
    assert "[iPhone 15 case]" not in proc.stdout
    # ...unless asked for; and at most 4 rooms at a time, if asked.
    proc = ok(
        cli(
            "run", str(scenario_file), "--runs", "3", "--max-rounds", "6", "--transcript",
            "--rooms-at-once", "4",
        )
    )  # fmt: skip
    assert proc.stdout.count("negotiation ") >= 9
    assert "rooms at once: 4 of 9" in proc.stdout
    # Bad counts exit 2.
    for bad in (("--runs", "0"), ("--rooms-at-once", "0"), ("--rooms-at-once", "0", "--processes")):
        proc = cli("run", str(scenario_file), *bad)
        assert proc.returncode == 2
        assert bad[0] in proc.stderr


# -- 2. replay -------------------------------------------------------------------------------
def test_replay_rebuilds_the_live_outcome(cli: Cli, scenario_file: Path) -> None:
    live = cli.json("run", str(scenario_file), "--seed", "5", "--max-rounds", "6")
    for n in live["negotiations"]:
        nid = n["negotiation_id"]
        rep = cli.json("replay", nid)
        assert rep["negotiation_id"] == nid
        assert rep["item"] == n["item"]
        assert rep["status"] == n["status"]
        assert rep["outcome"] == n["outcome"]
        events = rep["events"]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert all(isinstance(e["type"], str) and e["type"] for e in events)
        assert events[0]["type"] == "negotiation.started"
        assert events[0]["negotiation_id"] == nid
        assert events[0]["session_id"] == live["session_id"]
        assert events[-1]["type"] == "negotiation.ended"

        text = ok(cli("replay", nid))
        assert outcome_line(n["outcome"]) in flat(text.stdout)
        assert "Outcomes" in text.stdout

        short = cli.json("replay", nid[:8])
        assert short["negotiation_id"] == nid
        assert short["outcome"] == n["outcome"]
        assert short["events"] == events


def test_replay_of_unknown_ids_exits_2(cli: Cli, scenario_file: Path) -> None:
    ok(cli("run", str(scenario_file), "--json", "--seed", "5", "--max-rounds", "6"))
    unknown = ok_fail(cli("replay", "00000000-0000-4000-8000-000000000000", "--json"))
    assert "no events for negotiation" in flat(unknown.stderr)
    bad = ok_fail(cli("replay", "zzzzzzzz", "--json"))
    assert "no negotiation 'zzzzzzzz'" in flat(bad.stderr)


def test_broker_refuses_a_bad_commit_lanes_before_connecting(cli: Cli) -> None:
    for bad in ("0", "17", "two"):
        proc = ok_fail(cli("broker", "--market", "lanes", "--commit-lanes", bad))
        assert f"{bad!r} is not a whole number from 1 to 16" in flat(proc.stderr)


def ok_fail(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """A usage error: status 2, the error on stderr, and on stdout nothing or, with --json,
    one JSON object {"error": "..."} saying the same."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstderr:\n{proc.stderr}"
    assert "error:" in proc.stderr
    if "--json" not in proc.args:
        assert proc.stdout == ""
        return proc
    doc = one_json_object(proc.stdout)
    assert set(doc) == {"error"}
    assert isinstance(doc["error"], str)
    assert doc["error"]
    assert flat(doc["error"]).split(":")[-1].strip() in flat(proc.stderr)
    return proc


# -- 3. seeds --------------------------------------------------------------------------------
def test_same_seed_gives_the_same_transcript(cli: Cli, scenario_file: Path) -> None:
    runs = [
        cli.json("run", str(scenario_file), "--seed", "5", "--max-rounds", "6") for _ in range(2)
    ]
    first, second = ({n["item"]: n for n in r["negotiations"]} for r in runs)
    assert first.keys() == second.keys()
    for item in first:
        assert first[item]["outcome"] == second[item]["outcome"]
        a = cli.json("replay", first[item]["negotiation_id"])["events"]
        b = cli.json("replay", second[item]["negotiation_id"])["events"]
        assert len(a) == len(b)
        assert canonical_transcript(a) == canonical_transcript(b)
        # Every message (its text and offer) is the same, ids aside.
        said_a = [m for _, sellers in canonical_transcript(a) for m in sellers]
        assert any('"seller.replied"' in m and '"offer"' in m for m in said_a)


# -- 4. bad input ----------------------------------------------------------------------------
async def test_invalid_scenario_lists_every_problem_and_writes_nothing(
    cli: Cli, scenario_file: Path, tmp_path: Path
) -> None:
    # A valid run first, so the schema's tables exist and hold rows.
    cli.json("run", str(scenario_file), "--seed", "5", "--max-rounds", "6")
    before = await cli.row_counts()
    assert {"sessions", "negotiation_runs", "events"} <= before.keys()
    assert before["sessions"] == 1
    assert before["negotiation_runs"] == 3
    assert before["events"] > 0

    bad = tmp_path / "bad.toml"
    bad.write_text(BAD_SCENARIO, encoding="utf-8")
    proc = ok_fail(cli("run", str(bad), "--json", "--seed", "5"))
    err = flat(proc.stderr)
    assert "is not a valid scenario" in err
    assert f"{len(BAD_PROBLEMS)} problem(s)" in err
    for path, message in BAD_PROBLEMS:
        assert f"{path}: {message}" in err

    missing = ok_fail(cli("run", str(tmp_path / "nope.toml"), "--json"))
    assert "file: cannot read" in flat(missing.stderr)

    for rounds in ("1", "0", "-3", "101", str(2**31)):
        low = ok_fail(cli("run", str(scenario_file), "--json", "--max-rounds", rounds))
        assert "--max-rounds must be from 2 to 100" in flat(low.stderr)
    for flag, value in (
        ("--round-timeout", "nan"),
        ("--round-timeout", "1e16"),
        ("--round-timeout", "0.001"),
        ("--seed", str(2**63)),
        ("--runs", "10001"),
    ):
        out_of_range = ok_fail(cli("run", str(scenario_file), "--json", flag, value))
        assert f"{flag} must be from" in flat(out_of_range.stderr)
    word = cli("run", str(scenario_file), "--json", "--max-rounds", "six")
    assert word.returncode == 2
    assert "--max-rounds" in word.stderr
    # argparse's own errors too: one JSON object on stdout.
    assert one_json_object(word.stdout) == {
        "error": "mams run: argument --max-rounds: invalid int value: 'six'"
    }

    no_item = ok_fail(cli("run", str(scenario_file), "--json", "--item", "Laptop stand"))
    assert "Laptop stand" in flat(no_item.stderr)

    assert ok_fail(cli("run", "--json")).stderr
    assert ok_fail(cli("run", "--round-timeout", "0", str(scenario_file), "--json")).stderr

    assert await cli.row_counts() == before


def test_each_scenario_problem_is_one_line_of_stderr(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD_SCENARIO, encoding="utf-8")
    proc = ok_fail(cli("run", str(bad), "--json"))
    lines = [line.strip() for line in proc.stderr.splitlines()]
    for path, message in BAD_PROBLEMS:
        assert any(line.startswith(f"{path}: {message}") for line in lines), path


# -- 5. sessions, negotiations, reruns -------------------------------------------------------
def test_sessions_and_negotiations_list_what_runs_stored(cli: Cli, scenario_file: Path) -> None:
    empty = cli.json("sessions")
    assert empty == {"sessions": [], "total": 0}
    runs = [
        cli.json("run", str(scenario_file), "--seed", str(seed), "--max-rounds", "6")
        for seed in (5, 6)
    ]
    sessions = cli.json("sessions")["sessions"]
    assert {s["session_id"] for s in sessions} == {r["session_id"] for r in runs}
    for s in sessions:
        assert set(s) == {
            "session_id",
            "name",
            "created_at",
            "items",
            "sellers",
            "negotiations",
            "deals",
        }
        run = next(r for r in runs if r["session_id"] == s["session_id"])
        assert s["name"] == "e2e phone accessories"
        assert s["items"] == 3
        assert s["sellers"] == 3
        assert s["negotiations"] == 3
        assert s["deals"] == sum(n["outcome"]["type"] == "deal" for n in run["negotiations"])

    listed = {n["negotiation_id"]: n for n in cli.json("negotiations")["negotiations"]}
    live = {n["negotiation_id"]: (r["session_id"], n) for r in runs for n in r["negotiations"]}
    assert listed.keys() == live.keys()
    for nid, (session_id, n) in live.items():
        row = listed[nid]
        assert set(row) == {
            "negotiation_id",
            "session_id",
            "item_name",
            "status",
            "brain",
            "rounds",
            "started_at",
            "ended_at",
            "outcome",
            "seller",
            "unit_price",
            "quantity",
            "total",
            "interrupted",
        }
        assert row["interrupted"] is False  # ended, not left open by a killed run
        o = n["outcome"]
        assert row["session_id"] == session_id
        assert row["item_name"] == n["item"]
        assert row["status"] == n["status"]
        assert row["outcome"] == o["type"]
        assert row["rounds"] == o["rounds"]
        if o["type"] == "deal":
            # `seller` is the agent id here (README), the handle in run's outcome.
            assert row["seller"] == o["seller"].removeprefix("@").lower()
            assert Decimal(str(row["unit_price"])) == Decimal(o["unit_price"])
            assert row["quantity"] == o["quantity"]
            assert Decimal(str(row["total"])) == Decimal(o["unit_price"]) * o["quantity"]
        else:
            assert row["seller"] is None
            assert row["unit_price"] is None

    only = cli.json("negotiations", "--session", runs[0]["session_id"])["negotiations"]
    assert {n["negotiation_id"] for n in only} == {
        n["negotiation_id"] for n in runs[0]["negotiations"]
    }


def test_rerun_one_item_of_a_stored_session(cli: Cli, scenario_file: Path) -> None:
    first = cli.json("run", str(scenario_file), "--seed", "5", "--max-rounds", "6")
    sid = first["session_id"]
    rerun = cli.json("run", "--session", sid, "--item", "USB-C cable", "--seed", "5")
    assert rerun["session_id"] == sid
    assert [n["item"] for n in rerun["negotiations"]] == ["USB-C cable"]
    (n,) = rerun["negotiations"]
    assert n["negotiation_id"] not in {m["negotiation_id"] for m in first["negotiations"]}
    assert n["status"] in STATUSES
    scenario = load_toml(scenario_file)
    (usb,) = [i for i in scenario["buyer"]["items"] if i["item_name"] == "USB-C cable"]
    check_outcome(n["outcome"], usb, scenario)
    stored = cli.json("negotiations", "--session", sid)["negotiations"]
    assert len(stored) == 4
    (session,) = cli.json("sessions")["sessions"]
    assert session["session_id"] == sid
    assert session["negotiations"] == 4

    # The whole session again: every item, same session.
    again = cli.json("run", "--session", sid, "--seed", "5", "--max-rounds", "6")
    assert again["session_id"] == sid
    assert sorted(m["item"] for m in again["negotiations"]) == sorted(
        m["item"] for m in first["negotiations"]
    )
    assert len(cli.json("sessions")["sessions"]) == 1


async def test_rerun_with_unknown_item_or_session_exits_2(cli: Cli, scenario_file: Path) -> None:
    sid = cli.json("run", str(scenario_file), "--seed", "5", "--max-rounds", "6")["session_id"]
    before = await cli.row_counts()

    proc = ok_fail(cli("run", "--session", sid, "--item", "Laptop stand", "--json"))
    err = flat(proc.stderr)
    assert "'Laptop stand'" in err
    for known in ("iPhone 15 case", "USB-C cable", "Screen protector"):
        assert repr(known) in err

    unknown = "6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f"
    proc = ok_fail(cli("run", "--session", unknown, "--json"))
    assert f"no session {unknown}" in flat(proc.stderr)

    proc = ok_fail(cli("run", "--session", "not-a-uuid", "--json"))
    assert "--session" in flat(proc.stderr)

    proc = ok_fail(cli("run", str(scenario_file), "--session", sid, "--json"))
    assert "not both" in flat(proc.stderr)

    assert await cli.row_counts() == before


# -- runtime failures ------------------------------------------------------------------------
CLOSED_PORT_URL = "127.0.0.1:1"  # nothing listens on port 1


def test_unreachable_database_exits_1_saying_what_to_do(
    tmp_path: Path, scenario_file: Path, nats_url: str
) -> None:
    env = base_env(tmp_path / "mams-data")
    env["DATABASE_URL"] = f"postgresql://postgres@{CLOSED_PORT_URL}/nowhere"
    env["NATS_URL"] = nats_url
    for args in (("sessions", "--json"), ("run", str(scenario_file), "--json")):
        proc = mams(*args, env=env, cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr
        assert proc.stdout == ""
        err = flat(proc.stderr)
        assert "error: PostgreSQL at" in err
        assert "unset DATABASE_URL" in err
        assert "Traceback" not in proc.stderr


def test_unreachable_nats_exits_1_with_a_message_not_a_traceback(
    cli: Cli, scenario_file: Path
) -> None:
    env = {**cli.env, "NATS_URL": f"nats://{CLOSED_PORT_URL}"}
    proc = mams("run", str(scenario_file), "--json", env=env, cwd=cli.cwd)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert "error: cannot connect to NATS" in flat(proc.stderr)
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["sessions", "negotiations"])
def test_negative_limit_is_a_usage_error(cli: Cli, scenario_file: Path, command: str) -> None:
    cli.json("run", str(scenario_file), "--seed", "5", "--max-rounds", "6")
    proc = cli(command, "--limit", "-1", "--json")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "--limit" in proc.stderr


# -- 6. embedded servers ---------------------------------------------------------------------
@pytest.fixture
def embedded_data() -> Iterator[Path]:
    """MAMS_DATA_DIR for the embedded PostgreSQL (reachable by its system user as root)."""
    from tests.processes.pgdata import embedded_data_dir

    with embedded_data_dir() as path:
        yield path


@pytest.fixture
def embedded_env(embedded_data: Path) -> dict[str, str]:
    """No NATS_URL / DATABASE_URL: mams starts its own, with data in `embedded_data`."""
    env = base_env(embedded_data)
    env.pop("NATS_URL", None)
    env.pop("DATABASE_URL", None)
    return env


def test_embedded_servers_when_no_urls_are_set(
    embedded_env: dict[str, str], embedded_data: Path, scenario_file: Path, tmp_path: Path
) -> None:
    proc = ok(
        mams("run", str(scenario_file), "--json", "--seed", "5", env=embedded_env, cwd=tmp_path)
    )
    doc = one_json_object(proc.stdout)
    check_run_json(doc, load_toml(scenario_file))
    assert any(n["outcome"]["type"] == "deal" for n in doc["negotiations"])
    err = flat(proc.stderr)
    assert "embedded nats-server" in err
    assert "embedded PostgreSQL" in err
    assert str(embedded_data / "postgres") in err
    assert "(DATABASE_URL)" not in err
    assert "(NATS_URL)" not in err

    # A second process, same data dir: the session persisted.
    listed = ok(mams("sessions", "--json", env=embedded_env, cwd=tmp_path))
    sessions = one_json_object(listed.stdout)["sessions"]
    assert [s["session_id"] for s in sessions] == [doc["session_id"]]
    nid = doc["negotiations"][0]["negotiation_id"]
    rep = one_json_object(ok(mams("replay", nid, "--json", env=embedded_env, cwd=tmp_path)).stdout)
    assert rep["outcome"] == doc["negotiations"][0]["outcome"]


# -- 7. help ---------------------------------------------------------------------------------
def test_help(tmp_path: Path) -> None:
    env = base_env(tmp_path / "mams-data")
    top = ok(mams("--help", env=env, cwd=tmp_path))
    for command in ("run", "replay", "sessions", "negotiations"):
        assert command in top.stdout
    run = ok(mams("run", "--help", env=env, cwd=tmp_path))
    for option in ("--session", "--item", "--max-rounds", "--seed", "--round-timeout", "--json"):
        assert option in run.stdout
    for sub in ("replay", "sessions", "negotiations"):
        assert "--json" in ok(mams(sub, "--help", env=env, cwd=tmp_path)).stdout
    version = ok(mams("--version", env=env, cwd=tmp_path))
    assert version.stdout.startswith("mams ")
    assert mams(env=env, cwd=tmp_path).returncode == 2


def test_resume_runs_only_the_rooms_a_session_has_not_completed(
    cli: Cli, scenario_file: Path
) -> None:
    first = cli.json("run", str(scenario_file), "--runs", "2", "--seed", "5", "--max-rounds", "6")
    session = first["session_id"]
    # The study was meant to be 4 runs: the 2 done are left out, seeds 7 and 8 run.
    args = ("run", "--session", session, "--runs", "4", "--seed", "5", "--max-rounds", "6")
    # A session with no plan stored (run before plans were, or by `mams buyer`) resumes
    # with the flags given.
    anyio.run(cli.execute, "DELETE FROM studies")
    proc = ok(cli(*args, "--resume", "--json"))
    assert "no plan stored for this session" in flat(proc.stderr)
    doc = one_json_object(proc.stdout)
    assert doc["session_id"] == session
    assert sorted({n["seed"] for n in doc["negotiations"]}) == [7, 8]
    assert len(doc["negotiations"]) == 2 * len({n["item"] for n in first["negotiations"]})
    assert (
        "resuming: 6 of 12 rooms already completed in this session; 0 interrupted to go on "
        "with; 6 to open"
    ) in flat(proc.stderr)
    # Nothing left: says so, runs nothing, exits 0.
    proc = ok(cli(*args, "--resume", "--json"))
    assert one_json_object(proc.stdout)["negotiations"] == []
    assert "nothing to run" in proc.stderr
    # --resume completes a stored session only.
    proc = cli("run", str(scenario_file), "--resume")
    assert proc.returncode == 2
    assert "--resume needs --session" in flat(proc.stderr)
