"""Capture the bus traffic of one real negotiation, and render it as a walk-through.

    python protocol/traffic.py                       # print the walk-through (markdown)
    python protocol/traffic.py --nats nats://127.0.0.1:4222
    python protocol/traffic.py --update PROTOCOL.md  # rewrite its walk-through section

The cast is the real one (the `Broker`, `AgentActor`s with the baseline brains, seed 7)
on one market; a tap subscribed to ``<market>.>`` records every message in the order it
saw them: hellos and welcomes, one refused `open_rooms` (a seller asking to open the
buyer's session: identity comes from the subject), the buyer's `open_rooms`, every turn
and view, one seller re-saying hello mid-session (its catch-up and recap), and the
closing.

tests/protocol/test_schema_sync.py validates every captured message against
protocol/schema.json; PROTOCOL.md's examples and walk-through come from this capture.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import msgspec
import structlog

from mams.actors.agent import AgentActor
from mams.actors.brains.baseline import BaselineBuyer, BaselineSeller
from mams.actors.broker import Broker
from mams.bus.base import Bus
from mams.bus.memory import InMemoryBus
from mams.bus.subjects import AgentId, Subjects
from mams.domain.config import Scenario, parse_scenario_text, scenario_to_raw
from mams.domain.messages import (
    Hello,
    OpenRooms,
    decode_committed,
    decode_inbox,
    encode,
)
from mams.storage.eventstore import EventStore, InMemoryEventStore

SCENARIO = """
name = "protocol walk-through"

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
cost_price = 2.00
selling_price = 9.50
least_price = 5.50

[[sellers]]
handle = "@QuickTech"
style = "sweet"
customer_retention_weight = 0.7
profit_maximization_weight = 0.3
[[sellers.inventory]]
item_name = "USB-C cable"
cost_price = 3.00
selling_price = 8.00
least_price = 6.00
"""

Connect = Callable[[str], Awaitable[Bus]]


def scenario() -> Scenario:
    """The walk-through's market: one buyer, one item, two sellers."""
    return parse_scenario_text(SCENARIO, fmt="toml")


@dataclass(frozen=True, slots=True)
class Captured:
    """One message as the tap saw it: subject, kind of subject, agent token, raw bytes."""

    subject: str
    kind: str  # "inbox" | "outbox" | "events"
    agent: str  # the agent id in the subject ("" for events)
    data: bytes

    @property
    def json(self) -> Any:
        """The payload as plain JSON values."""
        return json.loads(self.data)

    @property
    def type(self) -> str:
        """The message's `type` tag (for a committed event, its event's tag)."""
        value = self.json
        tag = value["event"]["type"] if self.kind == "events" else value["type"]
        assert isinstance(tag, str)
        return tag


class _Sessions:
    """A session store in a dict (the broker's `SessionStore`)."""

    def __init__(self) -> None:
        self.saved: dict[UUID, Scenario] = {}

    async def load(self, session_id: UUID) -> Scenario | None:
        return self.saved.get(session_id)

    async def save(self, session_id: UUID, scenario: Scenario) -> None:
        self.saved[session_id] = scenario


def _classify(subjects: Subjects, subject: str) -> tuple[str, str]:
    tokens = subject.split(".")
    if len(tokens) == 4 and tokens[1] == "agent" and tokens[3] == "inbox":
        return "inbox", tokens[2]
    if len(tokens) == 4 and tokens[1] == "broker" and tokens[3] == "outbox":
        return "outbox", tokens[2]
    return "events", ""


async def capture(
    connect: Connect | None = None,
    *,
    prefix: str | None = None,
    store: EventStore | None = None,
    seed: int = 7,
    max_rounds: int = 4,
    time_limit: float = 30.0,
) -> list[Captured]:
    """Run one negotiation of `SCENARIO` and return every message on the market, in the
    order a tap subscribed to ``<market>.>`` received them. `connect(name)` gives each
    participant its own bus connection (default: one shared in-memory bus)."""
    if connect is None:
        shared = InMemoryBus()

        async def memory(_name: str) -> Bus:
            return shared

        connect = memory
    subjects = Subjects(prefix=prefix or f"walk{uuid.uuid4().hex[:8]}")
    cast = scenario()
    buyer_id = cast.buyer.agent_id
    seller_ids = [s.agent_id for s in cast.sellers]
    buses: list[Bus] = []

    async def bus_for(name: str) -> Bus:
        bus = await connect(name)
        if bus not in buses:
            buses.append(bus)
        return bus

    seen: list[Captured] = []
    try:
        with anyio.fail_after(time_limit):
            async with anyio.create_task_group() as tg:
                tap = await bus_for("tap")
                feed = await tap.subscribe(f"{subjects.prefix}.>", max_pending=100_000)
                await tap.flush()
                broker = Broker(
                    await bus_for("broker"),
                    store or InMemoryEventStore(),
                    subjects,
                    sessions=_Sessions(),
                    configurers={buyer_id},
                )
                await tg.start(broker.run)
                buyer = AgentActor(
                    await bus_for(buyer_id), subjects, buyer_id, BaselineBuyer(), "buyer"
                )
                await tg.start(buyer.run)
                for sid in seller_ids:
                    seller = AgentActor(
                        await bus_for(sid), subjects, sid, BaselineSeller(), "seller"
                    )
                    await tg.start(seller.run)
                await broker.joined({buyer_id, *seller_ids})
                raw = json.dumps(scenario_to_raw(cast))
                # A seller asks to open the buyer's session: refused (identity = subject).
                wrong = OpenRooms(request_id=uuid.uuid4(), scenario=json.loads(raw))
                await tap.publish(subjects.outbox(AgentId(seller_ids[0])), encode(wrong))
                await tap.flush()
                request = OpenRooms(
                    request_id=uuid.uuid4(),
                    scenario=json.loads(raw),
                    max_rounds=max_rounds,
                    round_timeout=10.0,
                    seed=seed,
                )
                rejoined = False
                opened: set[UUID] = set()
                ended: set[UUID] = set()
                sent_request = False
                async for msg in feed:
                    kind, agent = _classify(subjects, msg.subject)
                    seen.append(Captured(msg.subject, kind, agent, bytes(msg.data)))
                    if kind == "inbox":
                        message = json.loads(msg.data)
                        if message["type"] == "rejected" and not sent_request:
                            sent_request = True
                            await buyer.bus.publish(
                                subjects.outbox(AgentId(buyer_id)), encode(request)
                            )
                        elif message["type"] == "rooms.opened":
                            opened |= {UUID(n) for n in message["negotiation_ids"]}
                    elif (
                        kind == "outbox"
                        and agent == seller_ids[-1]
                        and not rejoined
                        and json.loads(msg.data)["type"] == "seller.turn"
                    ):
                        # Once it has answered, this seller says hello again (as after a
                        # restart): the broker welcomes it with its open rooms and re-sends
                        # its views, with the recap of what it was told and said.
                        rejoined = True
                        hello = Hello(role="seller", brain=BaselineSeller.label)
                        await tap.publish(subjects.outbox(AgentId(agent)), encode(hello))
                    elif kind == "events":
                        committed = decode_committed(msg.data)
                        if committed.event.__struct_config__.tag == "negotiation.ended":
                            ended.add(committed.negotiation_id)
                            if opened and opened <= ended:
                                break
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            for bus in buses:
                await bus.close()
    return seen


# -- rendering ---------------------------------------------------------------------------
_WHO = {"inbox": "broker → {agent}", "outbox": "{agent} → broker", "events": "broker → observers"}


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def first_of_each(traffic: list[Captured]) -> dict[str, Captured]:
    """The first captured message of each `type` (inbox and outbox only)."""
    out: dict[str, Captured] = {}
    for c in traffic:
        if c.kind != "events":
            out.setdefault(c.type, c)
    return out


def walkthrough(traffic: list[Captured]) -> str:
    """The captured traffic as markdown: one numbered step per inbox/outbox message, then
    the log as observers received it on ``<market>.events.<hex>``."""
    lines: list[str] = []
    step = 0
    for c in traffic:
        if c.kind == "events":
            continue
        step += 1
        who = _WHO[c.kind].format(agent=c.agent)
        body = json.dumps(c.json, ensure_ascii=False, separators=(", ", ": "))
        lines += [f"{step}. **{who}** `{c.subject}`", "", "   ```json", f"   {body}", "   ```"]
    lines += [
        "",
        "The log, as observers received it (`<market>.events.<hex>`, one message each):",
        "",
    ]
    lines += ["| seq | event | what |", "|---|---|---|"]
    for c in traffic:
        if c.kind != "events":
            continue
        value = c.json
        event = dict(value["event"])
        tag = event.pop("type")
        summary = ", ".join(
            f"{k}={json.dumps(v, ensure_ascii=False)}"
            for k, v in event.items()
            if k in _SUMMARY_FIELDS
        )
        lines.append(f"| {value['seq']} | `{tag}` | {summary.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


_SUMMARY_FIELDS = (
    "item_name",
    "round",
    "final",
    "to",
    "seller",
    "agent",
    "counter_price",
    "offer",
    "reason",
    "unanswered",
    "unit_price",
    "status",
    "outcome",
)


BEGIN = "<!-- walkthrough:begin (generated by python protocol/traffic.py --update PROTOCOL.md) -->"
END = "<!-- walkthrough:end -->"


def update(path: Path, text: str) -> None:
    """Replace the text between the walk-through markers of `path`."""
    doc = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{path}: no walk-through markers")
    path.write_text(pattern.sub(lambda _: f"{BEGIN}\n\n{text}\n{END}", doc), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Capture one negotiation and print (or write) its walk-through."""
    parser = argparse.ArgumentParser(description="capture one negotiation's bus traffic")
    parser.add_argument("--nats", help="use this NATS server (default: an in-memory bus)")
    parser.add_argument("--update", type=Path, help="rewrite this file's walk-through")
    parser.add_argument("--examples", action="store_true", help="print one of each message")
    args = parser.parse_args(argv)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

    async def go() -> list[Captured]:
        if args.nats is None:
            return await capture()
        from mams.bus.nats import NatsBus

        async def nats(name: str) -> Bus:
            return await NatsBus.connect(args.nats, name=f"walk-{name}")

        return await capture(nats)

    traffic = anyio.run(go)
    for c in traffic:  # everything the tap saw decodes as the type its subject promises
        if c.kind == "inbox":
            decode_inbox(c.data)
        elif c.kind == "events":
            decode_committed(c.data)
        else:
            msgspec.json.decode(c.data)
    if args.examples:
        for tag, c in first_of_each(traffic).items():
            print(f"### {tag}\n```json\n{_pretty(c.json)}\n```\n")
        return 0
    text = walkthrough(traffic)
    if args.update:
        update(args.update, text)
        print(f"updated {args.update}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
