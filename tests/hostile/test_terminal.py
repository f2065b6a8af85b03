"""What a seller writes never reaches the operator's terminal raw.

A seller on the real bus (plain nats-py, as any outside agent) answers every buyer
message with rich markup (`[/oops]`, `[bold red]x[/]`), terminal escape sequences (OSC
retitle, CSI clear screen) and bidi overrides. `mams broker` and `mams buyer` run as OS
processes, then `mams replay`, `mams analyze`, `mams report` and `mams negotiations` read
the log: each exits 0 and prints that text visibly escaped (`\\x1b`, `\\u202e`), markup
as written, and never a raw ESC or bidi character.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.e2e.test_cli_defects import outside_seller
from tests.processes.helpers import (
    Cast,
    cast,
    last_json_line,
    mams_command,
    process_env,
    schema_dsn,
)

pytestmark = pytest.mark.e2e

MARKUP = "[/oops] and [bold red]x[/]"
ESCAPES = "\x1b]0;pwned\x07\x1b[2J"
BIDI = "\u202egnp.exe \u2066iso\u2069"
SAID = f"{MARKUP} {ESCAPES} {BIDI} ok"
# What the terminal must show instead of the raw characters.
SHOWN = ("[/oops]", "[bold red]x[/]", "\\x1b]0;pwned\\x07\\x1b[2J", "\\u202egnp.exe", "\\u2066")
RAW = ("\x1b", "\x07", "\u202e", "\u2066", "\u2069")

SCENARIO = """
name = "a hostile seller"

[buyer]
handle = "@Buyer"

[[buyer.items]]
item_name = "USB-C cable"
quantity = 3
min_price = 4.00
max_price = 9.00

[[sellers]]
handle = "@Hostile"
style = "neutral"
customer_retention_weight = 0.5
profit_maximization_weight = 0.5
[[sellers.inventory]]
item_name = "USB-C cable"
cost_price = 3.00
selling_price = 8.00
least_price = 6.00
"""


async def hostile_seller(url: str, market: str, *, task_status: Any) -> None:
    """Seller @Hostile: says hello until welcomed, then answers every buyer message with
    SAID and an offer at its asking price."""
    await outside_seller(url, market, SAID, agent="hostile", task_status=task_status)


def run_cli(procs: Cast, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*mams_command(), *args],
        env=procs.env,
        cwd=procs.dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def shown_escaped(text: str, where: str) -> None:
    """Every part of what the seller said is shown, escaped; nothing raw."""
    for part in SHOWN:
        assert part in text, f"{where}: {part!r} not shown in:\n{text}"
    for char in RAW:
        assert char not in text, f"{where}: raw {char!r} reached the terminal:\n{text!r}"


@pytest.fixture
def procs(tmp_path: Path, nats_url: str, database_url: str, pg_schema: str) -> Any:
    env = process_env(nats_url, schema_dsn(database_url, pg_schema), tmp_path / "mams-data")
    with cast(tmp_path, env) as c:
        yield c


async def test_what_a_seller_writes_is_printed_escaped_everywhere(
    procs: Cast, nats_url: str, tmp_path: Path
) -> None:
    market = f"h{uuid.uuid4().hex[:10]}"
    scenario = tmp_path / "hostile.toml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    broker = procs.mams("broker", "broker", "--market", market, "--configurer", "@Buyer")
    await broker.wait_for("broker ready")
    async with anyio.create_task_group() as tg:
        await tg.start(hostile_seller, nats_url, market)
        buyer = procs.buyer(
            scenario, market, "--seed", "1", "--max-rounds", "2", "--round-timeout", "10"
        )
        assert await buyer.wait() == 0, buyer.describe()
        # A second buyer with --json: the transcript goes to stderr, the ids to stdout.
        second = procs.buyer(
            scenario, market, "--seed", "2", "--max-rounds", "2", "--json", name="buyer-json"
        )
        assert await second.wait() == 0, second.describe()
        tg.cancel_scope.cancel()
    shown_escaped(buyer.out(), "mams buyer")
    shown_escaped(second.err(), "mams buyer --json")
    (room,) = last_json_line(second.out())["negotiations"]
    nid = room["negotiation_id"]

    replay = run_cli(procs, "replay", nid)
    assert replay.returncode == 0, replay.stderr
    shown_escaped(replay.stdout, "mams replay")

    # The commands that list or analyse the room exit 0 and pass nothing raw either.
    for args in (("analyze", nid), ("report", "--no-plots"), ("negotiations",)):
        proc = run_cli(procs, *args)
        assert proc.returncode == 0, proc.stderr
        for char in RAW:
            assert char not in proc.stdout, f"mams {args[0]}: raw {char!r}:\n{proc.stdout!r}"
