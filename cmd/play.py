"""`mams play SCENARIO`: a person plays the buyer in a terminal, against the scenario's
sellers, over the one runtime (`actors.live.Live`, i.e. `run_market`, with
`actors.human.HumanBuyer` in the buyer's seat), with the same servers as `mams run`
(embedded NATS and PostgreSQL when NATS_URL / DATABASE_URL are unset).

The scenario is stored as a session; its items are played one after the other, each in
its own room opened once the one before has ended: a person follows one conversation at a
time, and a room that is not being played never sits open waiting for them. Each turn the
person types a line (`help` lists the commands); what the buyer receives is shown as it
arrives, through the domain's visibility policy (`domain.visibility.route`), every text an
agent wrote escaped (`cli_render.untrusted`). An action the guardrails refuse is
explained and nothing is sent. Once a room has ended, the debrief (`domain.debrief`)
reveals what was hidden; `--json` prints the debriefs as one JSON object instead.

Input is read by a daemon thread, so the event loop never blocks on it and a process
leaving while a read is pending does not wait for a line that may never come. Ctrl-C or
end of input at the prompt walks away from the room (recorded as any walk-away); Ctrl-C
exits with status 130, a second Ctrl-C stops at once (open rooms recorded as aborted).
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import uuid
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mams.cli_render import outcome_json, untrusted, untrusted_text
from mams.domain.errors import ConfigError, MamsError

if TYPE_CHECKING:  # imported where used: `mams --help` and the other commands never load them
    from mams.actors.human import HumanBuyer
    from mams.actors.live import LiveRoom
    from mams.domain.debrief import Debrief
    from mams.domain.messages import BuyerAction
    from mams.domain.views import BuyerView

HELP = """\
  [bold]text[/bold]                          say it to every seller
  [bold]@TechMart text[/bold]                say it to one seller (several @handles allowed)
  [bold]counter 6.10 text[/bold]             say it with a counter price per unit (to all)
  [bold]@TechMart counter 6.10 text[/bold]   a counter price to one seller
  [bold]accept @TechMart[/bold]              accept its standing offer (its price and quantity)
  [bold]walk[/bold]                          walk away without a deal
  [bold]offers[/bold]                        show the standing offers
  [bold]help[/bold]                          this list
Ctrl-C or Ctrl-D walks away."""

_json = msgspec.json.Encoder(decimal_format="number")


def add_parser(sub: Any) -> None:
    """The play subcommand."""
    p = sub.add_parser(
        "play", help="play the buyer yourself, in this terminal, against the scenario's sellers"
    )
    p.add_argument("scenario", help="scenario file (.toml or .json)")
    p.add_argument(
        "--item", action="append", help="only this item (repeatable; default: every item, in turn)"
    )
    p.add_argument("--seed", type=int, default=None, help="the sellers' seed (baseline sellers)")
    p.add_argument("--max-rounds", type=int, default=None, help="round limit of each room")
    p.add_argument(
        "--seller-model",
        help='every seller\'s brain: "baseline", "auto" or "provider:model"; overrides the '
        "scenario",
    )
    p.add_argument(
        "--json", action="store_true", help="print the debriefs as one JSON object at the end"
    )


class _Interrupt:
    """Ctrl-C, as an item of the input stream."""


INTERRUPT = _Interrupt()
Input = str | None | _Interrupt  # a line, end of input, or Ctrl-C


def _read_lines(send: MemoryObjectSendStream[Input], token: anyio.lowlevel.EventLoopToken) -> None:
    """The reader thread: every line of stdin into `send`, then None at its end."""
    while True:
        line = sys.stdin.readline()
        try:
            anyio.from_thread.run_sync(send.send_nowait, line or None, token=token)
        except (RuntimeError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return  # the loop or the stream is gone: the command is ending
        if not line:
            return


@dataclass
class _Game:
    """One `mams play`: where it prints, what the person types, and how it is going."""

    out: Console
    inputs: MemoryObjectReceiveStream[Input]
    json: bool = False
    interrupted: bool = False
    ended_input: bool = False
    debriefs: list[dict[str, Any]] = field(default_factory=list)


async def cmd_play(args: argparse.Namespace, out: Console) -> int:
    """Play each chosen item's room in turn; 130 if interrupted."""
    from mams.actors.human import HumanBuyer
    from mams.actors.live import Live, StartError
    from mams.actors.market import RunOptions, check_brains
    from mams.bus.base import Bus
    from mams.bus.nats import NatsBus
    from mams.domain.config import BASELINE_MODEL, check_model, load_scenario
    from mams.domain.plan import (
        HUMAN_TURN_TIMEOUT,
        PlanError,
        pick_items,
    )
    from mams.infra import servers
    from mams.storage.leases import PgLeases
    from mams.storage.readmodels import save_session

    # Everything is checked before any server starts: bad input writes nothing.
    scenario = load_scenario(Path(args.scenario))
    try:
        items = pick_items(scenario, args.item or [])
    except PlanError as exc:
        raise ConfigError(f"--item {exc.problems[0].message}") from None
    if args.seller_model is not None:
        try:
            check_model(args.seller_model)
        except ValueError as exc:
            raise ConfigError(f"--seller-model: {exc}") from None
    options = RunOptions(buyer_model=BASELINE_MODEL, seller_model=args.seller_model)
    models = check_brains(scenario, items, options)
    llm = any(m != BASELINE_MODEL for a, m in models.items() if a != scenario.buyer.agent_id)
    options = RunOptions.given(
        llm=llm,
        max_rounds=args.max_rounds,
        seed=args.seed,
        buyer_timeout=HUMAN_TURN_TIMEOUT,
        buyer_model=options.buyer_model,
        seller_model=options.seller_model,
    )
    options = msgspec.structs.replace(options, rooms_at_once=None)  # one room at a time
    for problem in options.problems():
        raise ConfigError(f"--{problem.path.replace('_', '-')} {problem.message}")

    out.print("[dim]starting servers...[/dim]")
    async with servers(need_bus=True) as srv:
        nats_url = srv.nats_url
        assert nats_url is not None

        async def connect(name: str) -> Bus:
            return await NatsBus.connect(nats_url, name=f"mams-play-{name}")

        session_id = uuid.uuid4()
        async with srv.pool.acquire() as conn:
            await save_session(conn, session_id, scenario)
        out.print(f"[dim]bus:[/dim] {srv.nats_note}\n[dim]log:[/dim] {srv.db_note}")
        out.print(f"[dim]session:[/dim] {session_id}")
        send, receive = anyio.create_memory_object_stream[Input](math.inf)
        game = _Game(out, receive, json=args.json)
        reader = threading.Thread(
            target=_read_lines,
            args=(send, anyio.lowlevel.current_token()),
            name="mams-play-input",
            daemon=True,  # never keeps the process waiting for a line
        )
        reader.start()
        async with PgLeases(srv.pool, srv.dsn) as leases, anyio.create_task_group() as tg:
            live = Live(connect, srv.store, leases)
            await tg.start(live.run)
            tg.start_soon(_on_sigint, game, send)
            human = HumanBuyer()
            for n, item in enumerate(items):
                if game.interrupted or game.ended_input:
                    left = ", ".join(i.item_name for i in items[n:])
                    out.print(f"[dim]not played: {untrusted(left)}[/dim]")
                    break
                if len(items) > 1:
                    out.print(
                        f"\n[bold]item {n + 1} of {len(items)}:[/bold] {untrusted(item.item_name)}"
                    )
                try:
                    [room] = await live.start(scenario, session_id, [item], options, human=human)
                except StartError as exc:
                    raise MamsError(f"the room could not start: {exc}") from exc
                await _play_room(game, room, human)
            tg.cancel_scope.cancel()
    if args.json:
        sys.stdout.write(
            _json.encode({"session_id": str(session_id), "debriefs": game.debriefs}).decode() + "\n"
        )
        sys.stdout.flush()
    return 130 if game.interrupted else 0


async def _on_sigint(game: _Game, inputs: MemoryObjectSendStream[Input]) -> None:
    """Ctrl-C walks away from the room being played (at the prompt, or at the next turn);
    a second one stops at once."""
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            if game.interrupted:
                raise KeyboardInterrupt
            game.interrupted = True
            game.out.print("\n[yellow]interrupted: walking away[/yellow]")
            inputs.send_nowait(INTERRUPT)


# -- one room ----------------------------------------------------------------------------------
@dataclass
class _Shown:
    """How far the buyer's side of a room has been printed."""

    round: int = 0
    done: bool = False
    changed: anyio.Event = field(default_factory=anyio.Event)

    def touch(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def reached(self, round_: int) -> None:
        while self.round < round_ and not self.done:
            await self.changed.wait()


async def _play_room(game: _Game, room: LiveRoom, human: HumanBuyer) -> None:
    """Play one room to its end, then print its outcome and debrief."""
    from mams.actors.human import ActionRefusedError, NotYourTurnError

    out, nid = game.out, room.negotiation_id
    shown = _Shown()
    view = await human.next_turn(nid)
    if view is not None:  # the person's own facts first, then the room as it goes
        _print_facts(out, view)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_follow, out, room, shown)
        while view is not None:
            asked = human.turns(nid)  # this turn's number
            await shown.reached(view.round)  # what led to this turn is on screen first
            while True:
                action = await _next_action(game, view)
                if action is None:
                    continue
                try:
                    human.act(nid, action)
                except ActionRefusedError as exc:
                    out.print("[bold red]refused, nothing was sent:[/bold red]")
                    for p in exc.problems:
                        out.print(f"  [red]{untrusted(p.rule)}[/red]: {untrusted(p.detail)}")
                    continue
                except NotYourTurnError as exc:
                    out.print(f"[yellow]{untrusted(str(exc))}[/yellow]")
                break
            view = await human.next_turn(nid, after=asked)
    _print_end(game, room)


async def _next_action(game: _Game, view: BuyerView) -> BuyerAction | None:
    """The person's action for this turn, or None to prompt again (help, offers, a
    mistake); walking away on Ctrl-C or end of input."""
    from mams.domain.messages import WalkAway

    out = game.out
    if game.interrupted or game.ended_input:
        return WalkAway(text="")
    final = " [bold yellow](final: accept or walk)[/bold yellow]" if view.final else ""
    out.print(f"[bold cyan]round {view.round}/{view.max_rounds}[/bold cyan]{final} you> ", end="")
    out.file.flush()
    got = await game.inputs.receive()
    if isinstance(got, _Interrupt):
        return WalkAway(text="")
    if got is None:
        out.print("\n[yellow]end of input: walking away[/yellow]")
        game.ended_input = True
        return WalkAway(text="")
    try:
        return parse(got, view, out)
    except UnclearLineError as exc:
        out.print(f"[red]{untrusted(str(exc))}[/red] (help lists the commands)")
        return None


class UnclearLineError(Exception):
    """A line that is not a command this prompt understands."""


def parse(line: str, view: BuyerView, out: Console) -> BuyerAction | None:
    """The action a typed line asks for in this turn of `view` (a BuyerView), or None when
    it only shows something (help, offers). Raises UnclearLineError for a line it cannot take."""
    from mams.domain.bounds import MAX_TEXT, BoundsError, check_text
    from mams.domain.messages import Accept, Say, WalkAway

    words = line.split()
    if not words:
        return None
    head = words[0].casefold()
    if head == "help" and len(words) == 1:
        out.print(HELP)
        return None
    if head == "offers" and len(words) == 1:
        _print_offers(out, view)
        return None
    if head == "walk":
        action: BuyerAction = WalkAway(text=line.strip()[len(words[0]) :].strip())
    elif head == "accept":
        if len(words) < 2 or not words[1].startswith("@"):
            raise UnclearLineError("accept whom? accept @Handle")
        seller = _seller(view, words[1])
        offer = view.offers.get(seller)
        if offer is None:
            raise UnclearLineError(
                f"{words[1]} has no standing offer to accept (offers lists them)"
            )
        text = line.strip().split(None, 2)[2] if len(words) > 2 else ""
        action = Accept(
            seller=seller, unit_price=offer.unit_price, quantity=offer.quantity, text=text
        )
    else:
        rest = line.strip()
        to: list[str] = []
        while rest.startswith("@"):
            name, _, rest = rest.partition(" ")
            seller = _seller(view, name)
            if seller not in to:
                to.append(seller)
            rest = rest.strip()
        counter = None
        first, _, after = rest.partition(" ")
        if first.casefold() == "counter":
            price, _, rest = after.strip().partition(" ")
            try:
                counter = Decimal(price.removeprefix("$"))
            except InvalidOperation:
                counter = None
            if counter is None or not counter.is_finite():
                raise UnclearLineError(
                    f"counter needs a price per unit, e.g. counter 6.10; got {price!r}"
                )
            rest = rest.strip() or f"I can pay {counter} per unit."
        if not rest:
            raise UnclearLineError("say something to them")
        action = Say(text=rest, to=tuple(to), counter_price=counter)
    try:
        check_text(action.text, "text", MAX_TEXT)
    except BoundsError as exc:
        raise UnclearLineError(str(exc)) from None
    return action


def _seller(view: BuyerView, name: str) -> str:
    """The agent id of the room's seller named `@Handle` (any case)."""
    from mams.domain.config import item_key

    wanted = item_key(name.lstrip("@"))
    for peer in view.sellers:
        if wanted in (peer.agent_id, item_key(peer.handle.lstrip("@"))):
            return peer.agent_id
    known = ", ".join(p.handle for p in view.sellers)
    raise UnclearLineError(f"no seller {name} in this room; here: {known}")


async def _follow(out: Console, room: LiveRoom, shown: _Shown) -> None:
    """Print what the buyer receives as it is committed, until the room ends."""
    from mams.domain.messages import SellerMessage, TurnStarted
    from mams.domain.visibility import route

    seq = 0
    handles: dict[str, str] = {}
    try:
        while True:
            newer = await room.after(seq)
            if not newer:
                break
            seq = newer[-1][0]
            for _, event, state in newer:
                started = state.started
                if started is None:
                    continue
                if not handles:
                    handles = {s.agent_id: s.handle for s in started.sellers}
                for to, msg in route(state, event):
                    if to != started.buyer.agent_id:
                        continue
                    if isinstance(msg, TurnStarted):
                        if msg.unanswered:
                            who = ", ".join(handles.get(a, a) for a in msg.unanswered)
                            out.print(f"[dim]no answer from {untrusted(who)}[/dim]")
                        final = " (final round)" if msg.final else ""
                        out.print(f"[dim]-- round {msg.round}{final} --[/dim]")
                        shown.round = msg.round
                        shown.touch()
                    elif isinstance(msg, SellerMessage):
                        line = Text()
                        line.append_text(untrusted_text(msg.seller.handle, style="bold green"))
                        line.append(": ")
                        line.append_text(untrusted_text(msg.text))
                        if msg.offer is not None:
                            line.append(
                                f"  [offer {_money(msg.offer.unit_price)} x {msg.offer.quantity}]",
                                style="bold",
                            )
                        out.print(line)
        if room.failed:
            out.print(f"[red]{untrusted(room.failed)}[/red]")
    finally:
        shown.done = True
        shown.touch()


def _money(price: Decimal) -> str:
    from mams.domain.money import fmt

    return fmt(price)


def _print_facts(out: Console, view: BuyerView) -> None:
    """The person's own facts: what they need, their limits, who sells."""
    out.print(
        f"\n[bold]You are the buyer.[/bold] You need [bold]{view.quantity}[/bold] x "
        f"[bold]{untrusted(view.item_name)}[/bold]."
    )
    out.print(
        f"Your target is {_money(view.min_price)} per unit; you may pay at most "
        f"{_money(view.max_price)} (the sellers know neither)."
    )
    sellers = ", ".join(p.handle for p in view.sellers)
    out.print(f"Sellers: {untrusted(sellers)}. Up to {view.max_rounds} rounds.")
    out.print("[dim]Type help for the commands.[/dim]")


def _print_offers(out: Console, view: BuyerView) -> None:
    if not view.offers:
        out.print("[dim]no standing offers yet[/dim]")
        return
    table = Table(title="Standing offers", header_style="bold")
    for col in ("seller", "unit price", "qty", "total", "first ask"):
        table.add_column(col, justify="left" if col == "seller" else "right")
    handles = {p.agent_id: p.handle for p in view.sellers}
    for agent, offer in sorted(view.offers.items(), key=lambda o: o[1].unit_price):
        first = view.first_asks.get(agent)
        table.add_row(
            untrusted(handles.get(agent, agent)),
            _money(offer.unit_price),
            str(offer.quantity),
            _money(offer.unit_price * offer.quantity),
            _money(first) if first is not None else "-",
        )
    out.print(table)


# -- the end -----------------------------------------------------------------------------------
def _print_end(game: _Game, room: LiveRoom) -> None:
    """The outcome, and the debrief (printed, or kept for --json)."""
    from mams.domain.analysis import analyze
    from mams.domain.debrief import debrief

    out, state = game.out, room.state
    o = outcome_json(state)
    if o["type"] == "deal":
        out.print(
            f"\n[bold green]Deal[/bold green] with {untrusted(o['seller'] or '-')}: "
            f"{o['quantity']} x {_money(o['unit_price'])} after {o['rounds']} round(s)."
        )
    elif state.phase == "ended":
        what = "walked away" if o["type"] == "no_deal" else "ran out of rounds"
        out.print(f"\n[bold red]No deal[/bold red]: {what} after {o['rounds']} round(s).")
    else:
        out.print("\n[bold red]The room stopped before it ended.[/bold red]")
    if state.started is None or state.phase != "ended":
        return
    found = debrief(analyze([e for _, e, _ in room.events]), state.started)
    game.debriefs.append(msgspec.to_builtins(found, builtin_types=(Decimal,)))
    if not game.json:  # --json: the debriefs are the JSON object printed at the end
        print_debrief(out, found)


def print_debrief(out: Console, d: Debrief) -> None:
    """A debrief (`domain.debrief.Debrief`) as people read it."""
    out.print(f"\n[bold]Debrief[/bold] ({untrusted(d.item_name)}, negotiation {d.negotiation_id})")
    low, high = d.your_range
    out.print(f"Your range: {_money(low)} to {_money(high)} per unit, for {d.quantity}.")
    table = Table(title="What the sellers hid", header_style="bold")
    for col in ("seller", "style", "cost", "floor", "asking", "first ask", "last offer"):
        table.add_column(col, justify="left" if col in ("seller", "style") else "right")
    for s in d.sellers:
        table.add_row(
            untrusted(s.handle),
            untrusted(s.style),
            _money(s.cost_price),
            _money(s.least_price),
            _money(s.selling_price),
            _money(s.first_ask) if s.first_ask is not None else "-",
            _money(s.final_offer) if s.final_offer is not None else "-",
        )
    out.print(table)
    z = d.zone
    floor_seller = _handle_of(d, z.floor_seller)
    if z.empty:
        out.print(
            f"Zone of agreement: [red]none[/red]: the lowest floor ({_money(z.floor)}, "
            f"{untrusted(floor_seller)}) is above your maximum ({_money(z.ceiling)})."
        )
    else:
        out.print(
            f"Zone of agreement: {_money(z.floor)} ({untrusted(floor_seller)}'s floor) "
            f"to {_money(z.ceiling)} (your maximum)."
        )
    deal = d.deal
    if deal is not None:
        out.print(
            f"Your deal: {deal.quantity} x {_money(deal.unit_price)} from "
            f"{untrusted(deal.seller)} = {_money(deal.total)}."
        )
        if deal.position is not None:
            out.print(
                f"Where your price fell: {round(deal.position * 100)}% of the way from "
                f"{untrusted(deal.seller)}'s floor to your maximum (0% is the floor)."
            )
        if deal.saving_vs_first_ask is not None:
            out.print(f"Saved against its first ask: {_money(deal.saving_vs_first_ask)}.")
        out.print(f"Saved against your maximum: {_money(deal.saving_vs_max)}.")
        if deal.took_cheapest is True:
            out.print("You took the cheapest offer on the table.")
        elif deal.took_cheapest is False and deal.cheapest_offer is not None:
            out.print(
                f"[yellow]You did not take the cheapest offer[/yellow] "
                f"({_money(deal.cheapest_offer)} was on the table)."
            )
    out.print(f"[bold]{untrusted(d.lesson)}[/bold]")
    if d.review:
        out.print(f"[dim]Analyst:[/dim] {untrusted(d.review)}")


def _handle_of(d: Debrief, seller: str) -> str:
    """A seller of the debrief by its handle (the analysis names some by agent id)."""
    from mams.domain.config import item_key

    for s in d.sellers:
        if item_key(s.handle.lstrip("@")) == item_key(seller.lstrip("@")):
            return s.handle
    return seller
