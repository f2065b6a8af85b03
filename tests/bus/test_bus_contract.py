"""One Bus contract, run against InMemoryBus and NatsBus (a real server via `nats_url`).

No sleeps: every wait is on a message under `anyio.fail_after`. A negative ("did not
arrive") is shown by publishing a sentinel after it from the same publisher: delivery is
ordered per publisher, so once the sentinel arrives first, the other was never coming.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import anyio.abc
import pytest
from anyio import wait_all_tasks_blocked

from mams.bus.base import Bus, BusClosedError, Message, Subscription
from mams.bus.memory import InMemoryBus
from mams.bus.nats import NatsBus

WAIT = 5.0


async def take(sub: Subscription, n: int) -> list[Message]:
    """The next ``n`` messages of ``sub``, failing the test if they take over WAIT seconds."""
    out: list[Message] = []
    with anyio.fail_after(WAIT):
        while len(out) < n:
            out.append(await anext(sub))
    return out


class BusContract:
    """Tests every Bus must pass. Subclasses provide `bus` and `other_bus` fixtures:
    `other_bus` is a second connection to the same bus (the same object in memory)."""

    async def test_publish_subscribe(self, bus: Bus, subject_prefix: str) -> None:
        subject = f"{subject_prefix}.a"
        sub = await bus.subscribe(subject)
        await bus.publish(subject, b"hello")
        [msg] = await take(sub, 1)
        assert msg == Message(subject, b"hello")
        await sub.unsubscribe()

    async def test_other_connection_receives_after_flush(
        self, bus: Bus, other_bus: Bus, subject_prefix: str
    ) -> None:
        subject = f"{subject_prefix}.x"
        sub = await bus.subscribe(subject)
        await other_bus.publish(subject, b"1")
        await other_bus.flush()
        assert [m.data for m in await take(sub, 1)] == [b"1"]
        await sub.unsubscribe()

    async def test_star_matches_exactly_one_token(self, bus: Bus, subject_prefix: str) -> None:
        p = subject_prefix
        sub = await bus.subscribe(f"{p}.agent.*.inbox")
        for subject in [f"{p}.agent.a.b.inbox", f"{p}.agent.inbox", f"{p}.agent.a.outbox",
                        f"{p}.agent.a.inbox", f"{p}.agent.b.inbox"]:  # fmt: skip
            await bus.publish(subject, subject.encode())
        got = await take(sub, 2)
        assert [m.subject for m in got] == [f"{p}.agent.a.inbox", f"{p}.agent.b.inbox"]
        await sub.unsubscribe()

    async def test_gt_matches_the_rest(self, bus: Bus, subject_prefix: str) -> None:
        p = subject_prefix
        sub = await bus.subscribe(f"{p}.events.>")
        for subject in [f"{p}.events", f"{p}.eventsx.a", f"{p}.other.a",
                        f"{p}.events.a", f"{p}.events.a.b.c"]:  # fmt: skip
            await bus.publish(subject, b"")
        got = await take(sub, 2)
        assert [m.subject for m in got] == [f"{p}.events.a", f"{p}.events.a.b.c"]
        await sub.unsubscribe()

    async def test_only_subscribed_subjects_arrive(self, bus: Bus, subject_prefix: str) -> None:
        p = subject_prefix
        mine = await bus.subscribe(f"{p}.agent.me.inbox")
        theirs = await bus.subscribe(f"{p}.agent.them.inbox")
        await bus.publish(f"{p}.agent.them.inbox", b"for them")
        await bus.publish(f"{p}.agent.me.inbox", b"for me")
        assert [m.data for m in await take(mine, 1)] == [b"for me"]
        assert [m.data for m in await take(theirs, 1)] == [b"for them"]
        await mine.unsubscribe()
        await theirs.unsubscribe()

    async def test_order_per_publisher(self, bus: Bus, subject_prefix: str) -> None:
        subject = f"{subject_prefix}.seq"
        n = 2_000
        sub = await bus.subscribe(subject, max_pending=n)
        for i in range(n):
            await bus.publish(subject, i.to_bytes(4, "big"))
        got = await take(sub, n)
        assert [int.from_bytes(m.data, "big") for m in got] == list(range(n))
        await sub.unsubscribe()

    async def test_many_subscribers_each_get_every_message(
        self, bus: Bus, subject_prefix: str
    ) -> None:
        subject = f"{subject_prefix}.fan"
        subs = [await bus.subscribe(subject) for _ in range(3)]
        subs.append(await bus.subscribe(f"{subject_prefix}.*"))
        for i in range(10):
            await bus.publish(subject, bytes([i]))
        for sub in subs:
            assert [m.data for m in await take(sub, 10)] == [bytes([i]) for i in range(10)]
            await sub.unsubscribe()

    async def test_unsubscribe_stops_delivery(self, bus: Bus, subject_prefix: str) -> None:
        subject = f"{subject_prefix}.u"
        gone = await bus.subscribe(subject)
        witness = await bus.subscribe(subject)
        await bus.publish(subject, b"before")
        assert [m.data for m in await take(gone, 1)] == [b"before"]
        await gone.unsubscribe()
        await gone.unsubscribe()  # idempotent
        await bus.publish(subject, b"after")
        assert [m.data for m in await take(witness, 2)] == [b"before", b"after"]
        with anyio.fail_after(WAIT):
            assert [m async for m in gone] == []
        await witness.unsubscribe()

    async def test_unsubscribe_wakes_a_waiting_reader(self, bus: Bus, subject_prefix: str) -> None:
        sub = await bus.subscribe(f"{subject_prefix}.w")
        received: list[Message] = []

        async def read() -> None:
            async for msg in sub:
                received.append(msg)

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await wait_all_tasks_blocked()
                await sub.unsubscribe()
        assert received == []

    async def test_close_ends_subscriptions_and_refuses_publish(
        self, other_bus: Bus, subject_prefix: str
    ) -> None:
        # other_bus is ours to close: for NATS it is a second connection.
        bus = other_bus
        sub = await bus.subscribe(f"{subject_prefix}.c")
        await bus.close()
        with anyio.fail_after(WAIT):
            assert [m async for m in sub] == []
        with pytest.raises(BusClosedError):
            await bus.publish(f"{subject_prefix}.c", b"x")
        await bus.close()  # idempotent


class TestInMemoryBus(BusContract):
    @pytest.fixture
    async def bus(self) -> AsyncIterator[Bus]:
        bus = InMemoryBus()
        yield bus
        await bus.close()

    @pytest.fixture
    async def other_bus(self, bus: Bus) -> Bus:
        return bus

    async def test_publish_waits_while_a_buffer_is_full(self, subject_prefix: str) -> None:
        bus = InMemoryBus()
        subject = f"{subject_prefix}.full"
        sub = await bus.subscribe(subject, max_pending=2)
        published = anyio.Event()

        async def publish_three() -> None:
            for i in range(3):
                await bus.publish(subject, bytes([i]))
            published.set()

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(publish_three)
                await wait_all_tasks_blocked()
                assert not published.is_set()  # the third waits for room
                assert [m.data for m in await take(sub, 1)] == [b"\x00"]
                await published.wait()
        assert [m.data for m in await take(sub, 2)] == [b"\x01", b"\x02"]
        await bus.close()

    async def test_unsubscribe_releases_a_blocked_publisher(self, subject_prefix: str) -> None:
        bus = InMemoryBus()
        subject = f"{subject_prefix}.full"
        sub = await bus.subscribe(subject, max_pending=1)
        await bus.publish(subject, b"1")
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(bus.publish, subject, b"2")
                await wait_all_tasks_blocked()
                await sub.unsubscribe()
        await bus.close()


class TestNatsBus(BusContract):
    @pytest.fixture
    async def bus(self, nats_url: str) -> AsyncIterator[Bus]:
        bus = await NatsBus.connect(nats_url, name="test-bus")
        yield bus
        await bus.close()

    @pytest.fixture
    async def other_bus(self, nats_url: str) -> AsyncIterator[Bus]:
        bus = await NatsBus.connect(nats_url, name="test-other-bus")
        yield bus
        await bus.close()
