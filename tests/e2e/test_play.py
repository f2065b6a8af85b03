"""End to end: `mams play`, a person as the buyer in a terminal, driven through a real
pseudo-terminal (the stdlib `pty`), over the real NATS and the test's own PostgreSQL
schema, with baseline sellers and a fixed seed.

The test types what a person would: a line to every seller, a counter to one, an accept
the guardrails refuse (above the buyer's maximum), then an accept of the cheapest standing
offer; it reads the sellers' replies and the debrief off the terminal. Every wait is
bounded: for text on the terminal, or for the process to exit.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import signal
import struct
import subprocess
import termios
import uuid
from decimal import Decimal
from pathlib import Path

import anyio
import pytest
from rich.console import Console

from mams.domain.events import Offer
from mams.domain.messages import Accept, Peer, Say, WalkAway
from mams.domain.views import BuyerView
from mams.play import UnclearLineError, parse
from tests.processes.conftest import dsn
from tests.processes.helpers import mams_command, process_env

__all__ = ["dsn"]  # the process tests' fixture (the test's schema in DATABASE_URL)

pytestmark = pytest.mark.e2e

WAIT = 60.0

# TechMart's floor is above the buyer's maximum, so accepting its offer is always refused
# (accept_above_max); the others can be dealt with. Floors and costs are marker values the
# debrief must reveal (the buyer never sees them before).
SCENARIO = """
name = "play"

[buyer]
handle = "@Buyer"

[[buyer.items]]
item_name = "USB-C cable"
quantity = 3
min_price = 4.00
max_price = 9.00

[[sellers]]
handle = "@TechMart"
style = "rude"
customer_retention_weight = 0.2
profit_maximization_weight = 0.8
[[sellers.inventory]]
item_name = "USB-C cable"
cost_price = 7.13
selling_price = 14.99
least_price = 11.17

[[sellers]]
handle = "@CableKing"
style = "neutral"
customer_retention_weight = 0.5
profit_maximization_weight = 0.5
[[sellers.inventory]]
item_name = "USB-C cable"
cost_price = 1.23
selling_price = 8.49
least_price = 4.37

[[sellers]]
handle = "@QuickTech"
style = "sweet"
customer_retention_weight = 0.8
profit_maximization_weight = 0.2
[[sellers.inventory]]
item_name = "USB-C cable"
cost_price = 1.87
selling_price = 7.99
least_price = 4.61
"""

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
OFFER_ROW = re.compile(r"│\s*(@\w+)\s*│\s*\$([0-9.]+)\s*│")


class Terminal:
    """`mams play` on a pseudo-terminal it has as its controlling terminal (so Ctrl-C
    typed there is a SIGINT): type lines, wait for text."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.master, slave = os.openpty()
        # A wide terminal: rich wraps at its width, and the test reads whole lines.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))

        def controlling_terminal() -> None:  # in the child, after setsid
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            [*mams_command(), *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=controlling_terminal,  # only an ioctl, then exec
        )
        os.close(slave)
        self.seen = ""  # everything printed so far, escape sequences removed
        self.mark = 0  # where the next expect starts looking

    async def _read(self) -> bool:
        """What the terminal shows next, once there is some; False once the child has
        closed it (it has exited)."""
        await anyio.wait_readable(self.master)
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the child has closed the terminal
            return False
        shown = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
        self.seen += ANSI.sub("", shown)
        return bool(data)

    async def expect(self, text: str, within: float = WAIT) -> str:
        """Wait for `text` after what earlier expects matched; what came before it."""
        with anyio.move_on_after(within):
            while (at := self.seen.find(text, self.mark)) < 0:
                if not await self._read():
                    break
            else:
                before = self.seen[self.mark : at]
                self.mark = at + len(text)
                return before
        raise AssertionError(f"no {text!r} within {within} s; the terminal shows:\n{self.seen}")

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    async def exit_code(self, within: float = WAIT) -> int:
        """Its exit status: the terminal read to its end (so the child never blocks
        writing to it), then the child waited for."""
        with anyio.fail_after(within):
            while await self._read():
                pass
            return await anyio.to_thread.run_sync(self.proc.wait, within)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        os.close(self.master)


@pytest.fixture
def play(tmp_path: Path, nats_url: str, dsn: str) -> tuple[Path, dict[str, str]]:
    """The scenario file, and the environment naming the test's servers."""
    scenario = tmp_path / "play.toml"
    scenario.write_text(SCENARIO)
    return scenario, process_env(nats_url, dsn, tmp_path / "mams-data", log_level="warning")


def stored_rooms(env: dict[str, str], cwd: Path) -> list[dict[str, object]]:
    """The negotiations the log holds (`mams negotiations --json`)."""
    done = subprocess.run(
        [*mams_command(), "negotiations", "--json"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    )
    rooms: list[dict[str, object]] = json.loads(done.stdout)["negotiations"]
    return rooms


async def test_a_person_plays_the_buyer_to_a_deal_and_gets_the_debrief(
    play: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    scenario, env = play
    term = Terminal(["play", str(scenario), "--seed", "7"], env, tmp_path)
    try:
        await term.expect("You are the buyer. You need 3 x USB-C cable.")
        await term.expect("you may pay at most $9.00")
        await term.expect("Sellers: @TechMart, @CableKing, @QuickTech.")
        await term.expect("round 1/8 you> ")
        term.type("accept @QuickTech")  # nothing offered yet
        await term.expect("@QuickTech has no standing offer to accept")
        await term.expect("round 1/8 you> ")

        term.type("What is your best price for 3 cables?")  # to every seller
        replies = await term.expect("round 2/8 you> ")
        for handle in ("@TechMart", "@CableKing", "@QuickTech"):
            assert re.search(rf"^{handle}: .*\[offer \$[0-9.]+ x 3\]", replies, re.M), replies

        term.type("accept @TechMart")  # its offer is above the buyer's maximum
        refused = await term.expect("round 2/8 you> ")
        assert "refused, nothing was sent" in refused
        assert re.search(r"accept_above_max: \$[0-9.]+ is above your maximum \$9\.00", refused)

        term.type("@CableKing counter 4.50 Could you do 4.50 a cable?")  # to one seller
        replies = await term.expect("round 3/8 you> ")
        assert re.search(r"^@CableKing: ", replies, re.M), replies
        assert "@QuickTech:" not in replies  # not addressed, so it did not answer
        assert "@TechMart:" not in replies

        term.type("offers")
        table = await term.expect("round 3/8 you> ")
        offers = {h: Decimal(p) for h, p in OFFER_ROW.findall(table)}
        assert set(offers) == {"@TechMart", "@CableKing", "@QuickTech"}, table
        cheapest = min(offers, key=lambda h: offers[h])
        term.type(f"accept {cheapest}")

        await term.expect(f"Deal with {cheapest}: 3 x ${offers[cheapest]}")
        debrief = await term.expect("Zone of agreement")
        for floor, cost in (("$11.17", "$7.13"), ("$4.37", "$1.23"), ("$4.61", "$1.87")):
            assert floor in debrief, debrief  # the hidden terms revealed
            assert cost in debrief, debrief
        await term.expect("$4.37 (@CableKing's floor) to $9.00 (your maximum)")
        await term.expect("You took the cheapest offer on the table.")
        assert await term.exit_code() == 0
    finally:
        term.close()
    [room] = stored_rooms(env, tmp_path)
    assert room["outcome"] == "deal"
    assert room["seller"] == cheapest.lstrip("@").lower()  # stored by agent id
    assert Decimal(str(room["unit_price"])) == offers[cheapest]


async def test_ctrl_c_at_the_prompt_walks_away_and_the_room_is_recorded(
    play: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    scenario, env = play
    term = Terminal(["play", str(scenario), "--seed", "7"], env, tmp_path)
    try:
        await term.expect("round 1/8 you> ")
        term.type("Hello, I need 3 cables.")
        await term.expect("round 2/8 you> ")
        os.write(term.master, b"\x03")  # Ctrl-C, as the terminal sends it
        await term.expect("interrupted: walking away")
        await term.expect("No deal: walked away after 2 round(s).")
        await term.expect("What the sellers hid")
        assert await term.exit_code() == 128 + signal.SIGINT
    finally:
        term.close()
    [room] = stored_rooms(env, tmp_path)
    assert room["status"] == "completed"  # ended by the walk-away, not aborted
    assert room["outcome"] == "no_deal"


# -- what a typed line asks for (no servers) ---------------------------------------------------
def _view() -> BuyerView:
    return BuyerView(
        negotiation_id=uuid.uuid4(),
        item_name="USB-C cable",
        quantity=3,
        min_price=Decimal("4.00"),
        max_price=Decimal("9.00"),
        sellers=(
            Peer(agent_id="techmart", handle="@TechMart"),
            Peer(agent_id="cableking", handle="@CableKing"),
        ),
        max_rounds=8,
        seed=None,
        round=2,
        offers={"cableking": Offer(unit_price=Decimal("6.81"), quantity=3)},
    )


@pytest.mark.parametrize(
    ("line", "action"),
    [
        ("Best price for 3?", Say(text="Best price for 3?")),
        ("@techmart @CableKing  hello", Say(text="hello", to=("techmart", "cableking"))),
        (
            "@CableKing counter $4.50 Could you?",
            Say(text="Could you?", to=("cableking",), counter_price=Decimal("4.50")),
        ),
        ("COUNTER 5", Say(text="I can pay 5 per unit.", counter_price=Decimal("5"))),
        (
            "accept @cableking thanks",
            Accept(seller="cableking", unit_price=Decimal("6.81"), quantity=3, text="thanks"),
        ),
        ("walk  too dear", WalkAway(text="too dear")),
        ("offers", None),
        ("help", None),
        ("   ", None),
    ],
)
def test_a_typed_line_is_the_action_it_names(line: str, action: object) -> None:
    assert parse(line, _view(), Console(file=io.StringIO())) == action


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("@Nobody hello", "no seller @Nobody in this room; here: @TechMart, @CableKing"),
        ("accept @TechMart", "@TechMart has no standing offer to accept"),
        ("accept", "accept whom?"),
        ("counter cheap please", "counter needs a price per unit"),
        ("counter NaN please", "counter needs a price per unit"),
        ("@TechMart", "say something to them"),
        ("x" * 4001, "4001 characters exceed 4000"),
    ],
)
def test_a_line_it_cannot_take_says_why_and_sends_nothing(line: str, why: str) -> None:
    with pytest.raises(UnclearLineError, match=re.escape(why)):
        parse(line, _view(), Console(file=io.StringIO()))
