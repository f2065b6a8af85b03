"""An honest market under a hello flood from one seller's credentials.

Usage: python bench/hostile_flood.py [--rooms 180] [--sellers 3] [--flood 100000] [--repeat 3]
                                    [--dsn DSN]

Starts a nats-server of its own with per-agent users (bus/auth.py: the broker, an observer,
the buyer, the sellers and one extra seller, the flooder, each with its own credentials and
permissions), and runs an honest market of `--rooms` rooms (bench/market.py's scenario,
baseline brains, the same seeds) on PostgreSQL (DATABASE_URL, default 127.0.0.1) twice, in
throwaway schemas: alone, and while a separate OS process holding the flooder's
credentials publishes `--flood` hellos on its outbox with plain nats-py, as fast as it can
(`--repeat` pairs, alternated). Prints both median durations, the delay ratio (target
< 1.20), whether any room's outcome (type, seller, unit price, quantity, rounds) changed,
and, as a baseline measured in the same run, how fast raw nats-py publishes the same
hellos to that server. Prints figures; asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import asyncpg
import nats
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.market import scenario
from mams.actors.brains.base import BuyerBrain, SellerBrain
from mams.actors.brains.baseline import BaselineBuyer, BaselineSeller
from mams.actors.market import RunOptions, build_started, run_rooms
from mams.bus.auth import Credentials, UsersFile
from mams.bus.base import Bus
from mams.bus.embedded import find_nats_server_binary
from mams.bus.nats import NatsBus
from mams.bus.subjects import AgentId, Subjects
from mams.domain.config import Scenario
from mams.storage.pg import open_store
from mams.storage.readmodels import ReadModelProjector, save_session

FLOODER = "flooder"
HELLO = b'{"type": "hello", "role": "seller", "brain": "flood"}'
Outcome = tuple[str, str | None, Decimal | None, int | None, int]

# The flooder: plain nats-py, no MAMS code, in a process of its own.
FLOOD_SCRIPT = """
import asyncio, sys, time
import nats

async def main(url, subject, n):
    nc = await nats.connect(url, allow_reconnect=False)
    start = time.perf_counter()
    data = b'{"type": "hello", "role": "seller", "brain": "flood"}'
    for i in range(n):
        await nc.publish(subject, data)
        if i % 1000 == 999:
            await asyncio.sleep(0)
    await nc.flush(timeout=60)
    print(f"{n} {time.perf_counter() - start:.3f}", flush=True)
    await nc.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """A nats-server whose only users are the market's (a users file from bus/auth.py)."""

    def __init__(self, directory: Path, subjects: Subjects, sc: Scenario) -> None:
        users = UsersFile.load(directory / "users.conf")
        self.creds: dict[str, Credentials] = {
            "broker": users.issue("broker", subjects),
            "observer": users.issue("observer", subjects),
            sc.buyer.agent_id: users.issue("buyer", subjects, sc.buyer.agent_id),
        }
        for agent in [*(s.agent_id for s in sc.sellers), FLOODER]:
            self.creds[agent] = users.issue("seller", subjects, agent)
        users.save()
        self.port = free_port()
        conf = directory / "nats.conf"
        conf.write_text(f'listen: 127.0.0.1:{self.port}\nmax_payload: 1MB\ninclude "users.conf"\n')
        self.process = subprocess.Popen(
            [str(find_nats_server_binary()), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def url(self, name: str) -> str:
        return self.creds[name].url(f"nats://127.0.0.1:{self.port}")

    async def ready(self) -> None:
        async def quiet(exc: Exception) -> None:
            pass  # refused while the server starts: tried again below

        for _ in range(200):  # readiness: the port answers (bounded)
            try:
                nc = await nats.connect(self.url("observer"), allow_reconnect=False, error_cb=quiet)
                await nc.close()
                return
            except Exception:
                await asyncio.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def brains(sc: Scenario) -> dict[str, BuyerBrain | SellerBrain]:
    out: dict[str, BuyerBrain | SellerBrain] = {sc.buyer.agent_id: BaselineBuyer()}
    out.update({s.agent_id: BaselineSeller() for s in sc.sellers})
    return out


async def run_market_once(
    server: Server, subjects: Subjects, dsn: str, sc: Scenario, flood: int
) -> tuple[float, dict[str, Outcome], str]:
    """One run in a throwaway schema, with `flood` hellos from the flooder (0: none)."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    flooder = None
    try:
        pool, store = await open_store(dsn, schema, projector=ReadModelProjector())
        session_id = uuid.uuid4()
        async with pool.acquire() as conn:
            await save_session(conn, session_id, sc)
        options = RunOptions(
            seed=1, round_timeout=60, buyer_model="baseline", seller_model="baseline"
        )
        starts = [build_started(sc, session_id, item, options) for item in sc.buyer.items]

        async def connect(name: str) -> Bus:
            return await NatsBus.connect(server.url(name), name=name)

        start = time.perf_counter()
        if flood:
            flooder = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                FLOOD_SCRIPT,
                server.url(FLOODER),
                subjects.outbox(AgentId(FLOODER)),
                str(flood),
                stdout=asyncio.subprocess.PIPE,
            )
        rooms = await run_rooms(starts, brains(sc), connect=connect, store=store, subjects=subjects)
        elapsed = time.perf_counter() - start
        note = ""
        if flooder is not None:
            out, _ = await asyncio.wait_for(flooder.communicate(), 120)
            sent, seconds = out.decode().split()
            note = f"flood: {int(sent):,} hellos sent in {float(seconds):.2f} s"
        await pool.close()
        outcomes: dict[str, Outcome] = {}
        for r in rooms:
            o = r.state.outcome
            assert o is not None
            outcomes[r.item_name] = (o.type, o.seller, o.unit_price, o.quantity, o.rounds)
        return elapsed, outcomes, note
    finally:
        if flooder is not None and flooder.returncode is None:
            flooder.kill()
            await flooder.wait()
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


async def raw_publish(server: Server, subjects: Subjects, n: int) -> float:
    """Raw nats-py: `n` hellos published and flushed on the flooder's outbox (no broker
    listening); hellos/s."""
    nc = await nats.connect(server.url(FLOODER), allow_reconnect=False)
    subject = subjects.outbox(AgentId(FLOODER))
    start = time.perf_counter()
    for i in range(n):
        await nc.publish(subject, HELLO)
        if i % 1000 == 999:
            await asyncio.sleep(0)
    await nc.flush(timeout=60)
    elapsed = time.perf_counter() - start
    await nc.close()
    return n / elapsed


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rooms", type=int, default=180)
    p.add_argument("--sellers", type=int, default=3)
    p.add_argument("--flood", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3, help="pairs of runs; medians printed")
    p.add_argument(
        "--dsn",
        default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    args = p.parse_args()
    logging.disable(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    sc = scenario(args.rooms, args.sellers)
    subjects = Subjects(prefix=f"flood{uuid.uuid4().hex[:8]}")
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp), subjects, sc)
        try:
            await server.ready()
            raw = await raw_publish(server, subjects, args.flood)
            alone: list[float] = []
            under: list[float] = []
            changed: set[str] = set()
            for _ in range(args.repeat):  # alternated, so drift hits both alike
                seconds, baseline, _ = await run_market_once(server, subjects, args.dsn, sc, 0)
                alone.append(seconds)
                seconds, outcomes, note = await run_market_once(
                    server, subjects, args.dsn, sc, args.flood
                )
                under.append(seconds)
                changed |= {k for k in baseline if outcomes.get(k) != baseline[k]}
        finally:
            server.stop()
    quiet, flooded = statistics.median(alone), statistics.median(under)
    ratio = flooded / quiet
    print(f"raw nats-py publish (flooder's credentials): {raw:,.0f} hellos/s")
    runs = f"median of {args.repeat}"
    print(f"{args.rooms} rooms x {args.sellers} sellers, alone:       {quiet:.2f} s ({runs})")
    label = f"{args.rooms} rooms x {args.sellers} sellers"
    print(f"{label}, under flood: {flooded:.2f} s ({runs}; {note})")
    print(f"delay ratio: {ratio:.3f} (target < 1.20: {'met' if ratio < 1.2 else 'NOT met'})")
    print(
        "outcomes changed: "
        + (
            f"{len(changed)} of {args.rooms}: {', '.join(sorted(changed)[:10])}"
            if changed
            else "none"
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
