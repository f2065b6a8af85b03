#!/usr/bin/env python3
"""A MAMS seller written from PROTOCOL.md alone: plain nats-py, json and decimal.

It does not import mams; any language with a NATS client can do what it does.

    python examples/external_seller.py --nats nats://127.0.0.1:4222 --market mams \
        --handle @Outsider

What it does (see PROTOCOL.md):
- subscribes to its inbox ``<market>.agent.<id>.inbox`` and says ``hello`` on its outbox
  ``<market>.broker.<id>.outbox`` every second until the broker answers ``welcome``, then
  every five seconds as a keepalive (``"catch_up": false``), so a restarted broker knows it,
  and with a full catch-up at once when its NATS connection comes back from an outage;
- for each room it is in (``room.opened.seller``), remembers its asking price and floor;
- answers each ``buyer.message`` once with a ``seller.turn``: the first offer is its
  asking price, each later one concedes 10% of the remaining gap toward its floor (cents
  rounded up, never below the floor), for the quantity the buyer asked; a ``buyer.message``
  re-sent after it answered gets the same ``seller.turn`` again (the broker had lost it);
- logs every step on stdout; exits cleanly on SIGINT or SIGTERM.

Its agent id is its handle without the "@", lowercased (``@Outsider`` -> ``outsider``);
the scenario the broker runs must list a seller with that handle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time
import uuid
from decimal import ROUND_CEILING, Decimal

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

CENT = Decimal("0.01")
CONCESSION = Decimal("0.10")
HELLO_EVERY = 1.0
REHELLO_EVERY = 5.0
TOKEN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def log(what: str, **fields: object) -> None:
    """One line per step on stdout: time, what happened, key=value pairs."""
    pairs = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"{time.strftime('%H:%M:%S')} {what} {pairs}".rstrip(), flush=True)


def agent_id_of(handle: str) -> str:
    """The agent id of a handle: one leading '@' removed, lowercased, a subject token."""
    text = handle.removeprefix("@").lower()
    if TOKEN.fullmatch(text) is None:
        raise SystemExit(f"--handle {handle!r}: must be @ + 1-32 of [a-z0-9_-]")
    return text


def next_price(previous: Decimal | None, ask: Decimal, floor: Decimal) -> Decimal:
    """The asking price first; then 10% of the remaining gap toward the floor, in whole
    cents rounded up, never below the floor."""
    if previous is None:
        return max(ask, floor)
    step = (previous - floor) * CONCESSION
    price = (previous - step).quantize(CENT, rounding=ROUND_CEILING)
    if price >= previous and previous > floor:  # the gap is under a cent: take the floor
        price = floor
    return max(price, floor)


class Seller:
    """The seller's rooms and what it has offered in each."""

    def __init__(self, nc: Client, market: str, agent_id: str) -> None:
        self.nc = nc
        self.agent_id = agent_id
        self.inbox = f"{market}.agent.{agent_id}.inbox"
        self.outbox = f"{market}.broker.{agent_id}.outbox"
        self.welcomed = asyncio.Event()
        self.rooms: dict[str, dict[str, object]] = {}
        self.answered: dict[str, dict[str, object]] = {}  # buyer message id -> my turn

    async def send(self, message: dict[str, object]) -> None:
        await self.nc.publish(self.outbox, json.dumps(message).encode())

    async def on_message(self, msg: Msg) -> None:
        try:
            message = json.loads(msg.data)
            kind = message["type"]
        except (ValueError, KeyError, TypeError) as exc:
            log("dropped", reason=f"malformed: {exc}")
            return
        if kind == "welcome":
            log("welcomed", agent_id=message["agent_id"], open_rooms=len(message["rooms"]))
            self.welcomed.set()
        elif kind == "room.opened.seller":
            nid = message["negotiation_id"]
            terms = message["terms"]
            if nid not in self.rooms:
                self.rooms[nid] = {
                    "item": message["item_name"],
                    "quantity": message["quantity"],
                    "ask": Decimal(terms["selling_price"]),
                    "floor": Decimal(terms["least_price"]),
                    "last": None,
                }
            log(
                "room_opened",
                negotiation_id=nid,
                item=json.dumps(message["item_name"]),
                quantity=message["quantity"],
                ask=terms["selling_price"],
                floor=terms["least_price"],
            )
        elif kind == "buyer.message":
            await self.answer(message)
        elif kind == "recap":
            # A line of the room before this process (re)joined: after a restart, our own
            # last offer is where the concessions go on from.
            room = self.rooms.get(message["negotiation_id"])
            offer = message["message"].get("offer") if message["mine"] else None
            if room is not None and offer:
                room["last"] = Decimal(offer["unit_price"])
        elif kind == "room.closed":
            room = self.rooms.pop(message["negotiation_id"], None)
            log(
                "room_closed",
                negotiation_id=message["negotiation_id"],
                status=message["status"],
                deal=message["deal"],
                last_offer=room["last"] if room else None,
            )
        else:
            log("ignored", type=kind)

    async def answer(self, message: dict[str, object]) -> None:
        nid = str(message["negotiation_id"])
        mid = str(message["message_id"])
        room = self.rooms.get(nid)
        if mid in self.answered:
            # A repeat: the broker does not have my answer (it restarted, or the answer was
            # lost). Send the same turn again; it ignores a message_id it already has.
            await self.send(self.answered[mid])
            return
        if room is None:
            log("dropped", negotiation_id=nid, reason="buyer.message for a room I never saw")
            return
        last = room["last"]
        assert last is None or isinstance(last, Decimal)
        ask, floor = room["ask"], room["floor"]
        assert isinstance(ask, Decimal)
        assert isinstance(floor, Decimal)
        price = next_price(last, ask, floor)
        room["last"] = price
        text = (
            f"My price is {price} per unit."
            if last is None
            else f"I can come down to {price} per unit."
        )
        if price == floor and last is not None:
            text = f"{price} per unit is as low as I go."
        turn: dict[str, object] = {
            "type": "seller.turn",
            "negotiation_id": nid,
            "round": message["round"],
            "message_id": str(uuid.uuid4()),
            "text": text,
            "offer": {"unit_price": str(price), "quantity": room["quantity"]},
            "reasoning": f"10% of the gap per round; ask {ask}, floor {floor}",
        }
        self.answered[mid] = turn
        await self.send(turn)
        log(
            "offer",
            negotiation_id=nid,
            round=message["round"],
            buyer_said=json.dumps(message["text"]),
            counter=message.get("counter_price"),
            unit_price=price,
            quantity=room["quantity"],
        )


async def main() -> int:
    parser = argparse.ArgumentParser(description="a MAMS seller without MAMS")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL")
    parser.add_argument("--market", default="mams", help="the market (subject prefix)")
    parser.add_argument("--handle", required=True, help="this seller's handle, e.g. @Outsider")
    args = parser.parse_args()
    agent_id = agent_id_of(args.handle)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    hello: dict[str, object] = {"type": "hello", "role": "seller", "brain": "external"}

    async def reconnected() -> None:  # what was delivered during the outage is lost
        log("reconnected")
        await seller.send({**hello, "recap": False})  # a full catch-up; we kept our rooms

    nc = await nats.connect(args.nats, name=f"{args.market}-{agent_id}", reconnected_cb=reconnected)
    seller = Seller(nc, args.market, agent_id)
    sub = await nc.subscribe(seller.inbox, cb=seller.on_message)
    log("started", handle=args.handle, inbox=seller.inbox, outbox=seller.outbox)
    while not seller.welcomed.is_set() and not stop.is_set():
        await seller.send(hello)
        log("hello")
        waits = [asyncio.ensure_future(e.wait()) for e in (seller.welcomed, stop)]
        await asyncio.wait(waits, timeout=HELLO_EVERY, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
    if seller.welcomed.is_set():
        log("ready", handle=args.handle)
    # Keep saying hello, so that a restarted broker learns of us; a keepalive asks a broker
    # that knows us only for the turns we owe.
    keepalive = {**hello, "catch_up": False}
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=REHELLO_EVERY)
        except TimeoutError:
            await seller.send(keepalive)
    log("stopping")
    await sub.unsubscribe()
    await nc.drain()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
