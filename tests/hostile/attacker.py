#!/usr/bin/env python3
"""The red team's client: one seller's real NATS credentials, plain nats-py, no MAMS code.

    python tests/hostile/attacker.py PLAN.json

PLAN is a JSON object: ``url`` (credentials in it), ``inbox`` and ``outbox`` (the
seller's own subjects), ``deadline`` (seconds: the whole run's bound) and ``steps``, run in
order. Every step is bounded in time and count. What happens is printed on stdout, one JSON
object a line: ``{"inbox": <message>}`` for each message on the seller's inbox,
``{"error": "<text>"}`` for each asynchronous server error (a permissions violation),
``{"step": <op>, ...}`` as each step ends, ``{"done": true}`` at the end.

Steps (``op``):
- ``hello``: say hello (``brain`` label optional) until a ``welcome`` arrives (``timeout``).
- ``publish``: publish ``data`` (text, or ``file``: a path to its bytes) ``count`` times on
  ``subject`` (default: the outbox) in a tight loop, then flush.
- ``expect``: wait (``timeout``) for an inbox message whose ``type`` is in ``types`` and,
  if given, whose ``request_id`` is ``request_id``.
- ``answer``: answer each ``buyer.message`` (those already received first) with
  ``template``, its ``{{negotiation_id}}``, ``{{round}}`` and ``{{answer_id}}`` (a message
  id derived from the buyer message's, so a re-sent question gets the same answer)
  replaced, until ``count`` answers were sent or ``timeout`` passes (with ``once_per_room``,
  only the first buyer message of each room).
- ``subscribe``: subscribe to ``subject`` and wait (``timeout``) for a permissions error
  naming it; prints whether one came and how many messages were delivered.
- ``wait_file``: wait (``timeout``) until the file ``path`` exists (the test's go-ahead).
- ``resend``: publish every answer sent so far again, byte for byte.
- ``drain``: read the inbox until it is quiet for ``quiet`` seconds (``timeout``); print
  how many messages of each type came (inbox messages are then not printed one by one
  when ``quiet_inbox`` is set in the plan: a flood's answers would be 100,000 lines).
- ``ready``: print ``{"ready": true}`` (the test waits for it).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg

ANSWER_NS = uuid.UUID("6f1c1c52-6a0e-4b8e-9d7e-2f1d4b1f0a11")


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


class Attacker:
    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self.inbox: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.arrived = asyncio.Event()
        self.nc: Any = None
        self.answers: list[bytes] = []  # every answer sent, in order

    async def on_inbox(self, msg: Msg) -> None:
        try:
            body = json.loads(msg.data)
        except ValueError:
            body = {"raw": msg.data[:200].decode(errors="replace")}
        self.inbox.append(body)
        if not self.plan.get("quiet_inbox"):
            emit(inbox=body)
        self.arrived.set()

    async def on_error(self, exc: Exception) -> None:
        self.errors.append(str(exc))
        emit(error=str(exc))
        self.arrived.set()

    async def wait_for(self, check: Any, within: float) -> Any:
        """The first inbox message (from the start) satisfying ``check``, or None."""
        end = time.monotonic() + within
        seen = 0
        while True:
            while seen < len(self.inbox):
                seen += 1
                if check(self.inbox[seen - 1]):
                    return self.inbox[seen - 1]
            left = end - time.monotonic()
            if left <= 0:
                return None
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except TimeoutError:
                return None

    def payload(self, step: dict[str, Any]) -> bytes:
        if "file" in step:
            return Path(step["file"]).read_bytes()
        return str(step["data"]).encode()

    async def run(self) -> None:
        plan = self.plan
        self.nc = await nats.connect(
            plan["url"],
            name="red-team",
            error_cb=self.on_error,
            allow_reconnect=False,
            connect_timeout=5,
            max_outstanding_pings=10,
        )
        try:
            await self.nc.subscribe(plan["inbox"], cb=self.on_inbox)
            await self.nc.flush()
            for step in plan["steps"]:
                await getattr(self, "op_" + step["op"])(step)
        finally:
            try:
                await self.nc.flush(timeout=5)
            except Exception as exc:  # the server may have closed us: report, go on
                emit(error=f"flush: {exc!r}")
            await self.nc.close()
        emit(done=True)

    async def op_hello(self, step: dict[str, Any]) -> None:
        hello = {"type": "hello", "role": "seller", "brain": step.get("brain", "red team")}
        data = json.dumps(hello).encode()
        end = time.monotonic() + float(step.get("timeout", 15))
        welcome = None
        while welcome is None and time.monotonic() < end:
            await self.nc.publish(self.plan["outbox"], data)
            welcome = await self.wait_for(lambda m: m.get("type") == "welcome", 1.0)
        emit(step="hello", welcomed=welcome is not None)

    async def op_publish(self, step: dict[str, Any]) -> None:
        subject = step.get("subject", self.plan["outbox"])
        data = self.payload(step)
        count = int(step.get("count", 1))
        started = time.perf_counter()
        for i in range(count):
            await self.nc.publish(subject, data)
            if i % 1000 == 999:
                await asyncio.sleep(0)  # let the reader keep up with the server's pings
        await self.nc.flush(timeout=30)
        emit(step="publish", subject=subject, count=count, seconds=time.perf_counter() - started)

    async def op_expect(self, step: dict[str, Any]) -> None:
        types = set(step["types"])
        request_id = step.get("request_id")

        def wanted(m: dict[str, Any]) -> bool:
            return m.get("type") in types and (
                request_id is None or m.get("request_id") == request_id
            )

        got = await self.wait_for(wanted, float(step.get("timeout", 15)))
        emit(step="expect", got=got)

    async def op_answer(self, step: dict[str, Any]) -> None:
        template = self.payload(step).decode()
        count = int(step.get("count", 1))
        end = time.monotonic() + float(step.get("timeout", 15))
        sent, seen = 0, 0
        rooms: set[str] = set()
        while sent < count and time.monotonic() < end:
            while seen < len(self.inbox) and sent < count:
                m = self.inbox[seen]
                seen += 1
                if m.get("type") != "buyer.message":
                    continue
                if step.get("once_per_room") and m["negotiation_id"] in rooms:
                    continue
                rooms.add(m["negotiation_id"])
                answer_id = uuid.uuid5(ANSWER_NS, str(m["message_id"]))
                text = (
                    template.replace("{{negotiation_id}}", str(m["negotiation_id"]))
                    .replace("{{round}}", str(m["round"]))
                    .replace("{{answer_id}}", str(answer_id))
                )
                await self.nc.publish(self.plan["outbox"], text.encode())
                await self.nc.flush(timeout=10)
                self.answers.append(text.encode())
                sent += 1
                emit(step="answered", negotiation_id=m["negotiation_id"], round=m["round"])
            if sent < count:
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), max(0.0, end - time.monotonic()))
                except TimeoutError:
                    break
        emit(step="answer", sent=sent)

    async def op_subscribe(self, step: dict[str, Any]) -> None:
        subject = step["subject"]
        delivered: list[bytes] = []

        async def got(msg: Msg) -> None:
            delivered.append(msg.data)

        await self.nc.subscribe(subject, cb=got)
        await self.nc.flush()
        wanted = f'permissions violation for subscription to "{subject.lower()}"'
        end = time.monotonic() + float(step.get("timeout", 5))
        violation = None
        while violation is None and time.monotonic() < end:
            violation = next((e for e in self.errors if wanted in e.lower()), None)
            if violation is None:
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), max(0.0, end - time.monotonic()))
                except TimeoutError:
                    break
        emit(step="subscribe", subject=subject, violation=violation, delivered=len(delivered))

    async def op_drain(self, step: dict[str, Any]) -> None:
        """Read the inbox until it has been quiet for ``quiet`` seconds (at most
        ``timeout``); print how many messages of each type it then holds."""
        quiet = float(step.get("quiet", 2.0))
        end = time.monotonic() + float(step.get("timeout", 60))
        while time.monotonic() < end:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), min(quiet, end - time.monotonic()))
            except TimeoutError:
                break
        counts: dict[str, int] = {}
        for m in self.inbox:
            counts[str(m.get("type"))] = counts.get(str(m.get("type")), 0) + 1
        emit(step="drain", counts=counts)

    async def op_wait_file(self, step: dict[str, Any]) -> None:
        """Wait (``timeout``) until the file ``path`` exists: the test's go-ahead."""
        # A file is the one signal two processes share without a bus: polled, bounded.
        path = Path(step["path"])
        end = time.monotonic() + float(step.get("timeout", 60))
        while not path.exists() and time.monotonic() < end:  # noqa: ASYNC110, ASYNC240
            await asyncio.sleep(0.05)
        emit(step="wait_file", found=path.exists())  # noqa: ASYNC240

    async def op_resend(self, step: dict[str, Any]) -> None:
        """Publish every answer sent so far again, byte for byte."""
        for data in self.answers:
            await self.nc.publish(self.plan["outbox"], data)
        await self.nc.flush(timeout=10)
        emit(step="resend", count=len(self.answers))

    async def op_ready(self, step: dict[str, Any]) -> None:
        emit(ready=True)


async def main(plan: dict[str, Any]) -> None:
    attacker = Attacker(plan)
    try:
        await asyncio.wait_for(attacker.run(), float(plan.get("deadline", 60)))
    except TimeoutError:
        emit(error="deadline passed", done=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
