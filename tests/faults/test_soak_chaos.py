"""Soak with chaos: many negotiations on one market of real processes while a chaos loop
kills (SIGKILL) and restarts the broker and random sellers a bounded number of times.

Small by default (200 negotiations of at most 2 rounds, 1 s round deadlines, 5 kills) to
stay fast in CI; bigger runs are opt-in: MAMS_SOAK=1000 (negotiations), MAMS_SOAK_KILLS,
MAMS_SOAK_SEED. Afterwards: every negotiation ended, the audit of every stream is clean,
no event id is duplicated, seqs are 1..n, one seller.replied per seller turn message id,
every turn an agent put on the bus (a tap on all outboxes) is in the log once, unless the
log shows it came too late for its round, and the log holds no agent message none sent,
and the quality monitor (a process of its own) recorded for every room exactly what the
checks find over its stored log, which is nothing: the baseline brains raise no flag
without faults, and with them every committed offer still reaches the buyer before its
next turn (a restarted broker re-sends what its predecessor may have committed but never
published, and agents re-send a turn the broker is still owed).
The numbers observed are printed (run with -s to see them).
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import asyncpg
import pytest

from mams.actors.monitor import stored_flags
from mams.bus.nats import NatsBus
from mams.bus.subjects import Subjects
from mams.domain.events import decode_event
from mams.domain.quality import check
from mams.storage.pg import open_store
from tests.faults.servers import TurnTap, audit_all, check_log, check_turns_accounted
from tests.faults.test_broker_crash import poll
from tests.processes.helpers import Cast, Child

N = int(os.environ.get("MAMS_SOAK", "200"))
KILLS = int(os.environ.get("MAMS_SOAK_KILLS", "5"))
SEED = int(os.environ.get("MAMS_SOAK_SEED", "20261125"))
SELLERS = ("@TechMart", "@QuickTech", "@GadgetHub")


def soak_scenario(n: int, wave: int, waves: int) -> str:
    """Buyer `@Buyer<wave>` with its share of the n items; every seller stocks all n."""
    mine = [i for i in range(n) if i % waves == wave]
    items = "".join(
        f'[[buyer.items]]\nitem_name = "item {i:04d}"\nquantity = {1 + i % 4}\n'
        f"min_price = 4.00\nmax_price = {8 + i % 3}.00\n\n"
        for i in mine
    )
    sellers = ""
    for k, handle in enumerate(SELLERS):
        sellers += (
            f'[[sellers]]\nhandle = "{handle}"\nstyle = "{("rude", "sweet", "neutral")[k]}"\n'
            f"customer_retention_weight = 0.{3 + k}\nprofit_maximization_weight = 0.{7 - k}\n"
        )
        sellers += "".join(
            f'[[sellers.inventory]]\nitem_name = "item {i:04d}"\ncost_price = {2 + k}.00\n'
            f"selling_price = {9 + k}.50\nleast_price = {5 + k}.50\n"
            for i in range(n)
        )
    return f'name = "soak {wave}"\n\n[buyer]\nhandle = "@Buyer{wave}"\n\n{items}{sellers}'


@pytest.mark.e2e
@pytest.mark.timeout(120 + N // 2)
async def test_soak_with_broker_and_seller_kills(
    procs: Cast, market: str, tmp_path: Path, database_url: str, pg_schema: str, nats_url: str
) -> None:
    rng = random.Random(SEED)
    waves = max(1, KILLS)
    scenarios = []
    for w in range(waves):
        scenarios.append(tmp_path / f"soak-{w}.toml")
        scenarios[w].write_text(soak_scenario(N, w, waves), encoding="utf-8")
    # At least 40 % of the kills hit the broker, the rest a random seller.
    n_broker = max(1, waves * 2 // 5)
    targets = ["broker"] * n_broker + [rng.choice(SELLERS) for _ in range(waves - n_broker)]
    rng.shuffle(targets)
    t0 = time.monotonic()

    def start_broker() -> Child:
        buyers = [a for w in range(waves) for a in ("--configurer", f"@Buyer{w}")]
        return procs.mams("broker", "broker", "--market", market, *buyers)

    def start_seller(handle: str) -> Child:
        return procs.mams(
            handle,
            "seller",
            "--scenario",
            str(scenarios[0]),
            "--handle",
            handle,
            "--market",
            market,
        )

    # Every turn the agents put on the bus, to account for each in the log afterwards.
    tap = TurnTap(await NatsBus.connect(nats_url, name="soak-tap"), Subjects(market))
    await tap.start()
    broker = start_broker()
    await broker.wait_for("broker ready")
    # The quality monitor grades every room live, through the kills (never killed itself).
    monitor = procs.mams("monitor", "monitor", "--market", market)
    await monitor.wait_for("quality monitor ready")
    sellers = {h: start_seller(h) for h in SELLERS}
    for s in sellers.values():
        await s.wait_for("ready")
    conn = await asyncpg.connect(database_url, server_settings={"search_path": pg_schema})
    kills: list[tuple[str, int, int]] = []  # (who, events then, ended then)
    buyers: list[Child] = []
    try:

        async def counts() -> tuple[int, int]:
            row = await conn.fetchrow(
                "SELECT count(*) AS events, "
                "count(*) FILTER (WHERE type = 'negotiation.ended') AS ended FROM events"
            )
            assert row is not None
            return int(row["events"]), int(row["ended"])

        # Chaos in waves: a buyer opens its share of the rooms, and while they are live one
        # process is killed (SIGKILL) and started again; then the next buyer comes.
        for w in range(waves):
            buyer = procs.buyer(
                scenarios[w],
                market,
                "--seed",
                str(SEED + w),
                "--round-timeout",
                "1",
                "--max-rounds",
                "2",
                "--model",
                "baseline",
                name=f"buyer{w}",
            )
            buyers.append(buyer)
            await buyer.wait_for(f"opened {len(range(w, N, waves))} room(s)")
            events, ended = await counts()
            target = targets[w]
            kills.append((target, events, ended))
            if target == "broker":
                broker.signal(signal.SIGKILL)
                await broker.wait(within=10)
                broker = start_broker()
                await broker.wait_for("broker ready")
            else:
                sellers[target].signal(signal.SIGKILL)
                await sellers[target].wait(within=10)
                sellers[target] = start_seller(target)
                await sellers[target].wait_for("ready")

        async def all_ended() -> bool:
            return (await counts())[1] >= N

        await poll(all_ended, within=60 + N / 5)
        t_ended = time.monotonic() - t0
        # Every room's recorded findings are exactly the checks over its stored log, even
        # where the broker died between a commit and its publish (the monitor's idle sweep).
        pool, store = await open_store(database_url, pg_schema)
        try:
            nids = [
                r["stream_id"]
                for r in await conn.fetch(
                    "SELECT DISTINCT stream_id FROM events WHERE type = 'negotiation.started'"
                )
            ]
            pending = set(nids)

            async def graded() -> bool:
                for nid in sorted(pending):
                    events = [decode_event(e.data) for e in await store.read(nid)]
                    if await stored_flags(store, nid) == check(events):
                        pending.discard(nid)
                return not pending

            await poll(graded, within=60)
            flags = sum([len(await stored_flags(store, nid)) for nid in nids])
        finally:
            await pool.close()
        log = await check_log(conn)
        sent = await tap.collect()
        late = await check_turns_accounted(conn, sent)
        rounds = await conn.fetchval("SELECT count(*) FROM events WHERE type = 'round.opened'")
        # Every room was claimed by the broker that opened it (leases); of all the brokers
        # the chaos started, only the one still running is alive.
        owned = await conn.fetchval(
            "SELECT count(*) FROM room_owners o JOIN negotiation_runs r USING (negotiation_id)"
        )
        alive = await conn.fetchval(
            "SELECT count(DISTINCT owner) FROM room_owners WHERE mams_broker_alive(owner)"
        )
        by_status: dict[str, int] = {
            r["status"]: r["n"]
            for r in await conn.fetch(
                "SELECT data->>'status' AS status, count(*) AS n FROM events "
                "WHERE type = 'negotiation.ended' GROUP BY 1"
            )
        }
    finally:
        await conn.close()
        await tap.bus.close()
    codes = [await b.wait(within=30) for b in buyers]
    monitor.signal(signal.SIGTERM)
    assert await monitor.wait(within=30) == 0, monitor.describe()
    # It followed every room to its end through the kills (live, or by its idle sweep).
    assert f"graded {N} negotiation(s)" in monitor.out(), monitor.describe()
    resumed = [
        " ".join(c.out().split()).split("resumed ")[-1].split(" ")[0]
        for c in procs.children
        if c.name == "broker" and "resumed" in c.out()
    ]
    report = audit_all(procs.env, tmp_path)
    print(
        f"\nsoak: {N} negotiations in {waves} waves, seed {SEED}; kills (who, events, ended) "
        f"{kills}; restarted brokers resumed {resumed} open rooms; log {log}; rounds opened "
        f"{rounds}; ended by status {by_status}; all ended after {t_ended:.1f} s; "
        f"buyer exits {codes}; audited {len(report['streams'])} streams, all clean; "
        f"{flags} quality flags, each room's equal to check() over its log; {len(sent)} "
        f"turns sent, each logged once or ({late}) too late for its round"
    )
    assert log["streams"] == N
    assert owned == N
    assert alive <= 1, alive
    assert flags == 0, "a buyer decided without an offer the log holds (or lost its turn)"
    assert log["ended"] == N
    assert len([r for r in report["streams"] if r["kind"] == "negotiation"]) == N
    assert codes == [0] * waves, [b.describe() for b in buyers]
