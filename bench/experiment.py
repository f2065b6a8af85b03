"""A baseline experiment with two arms, end to end as a user runs it, killed halfway and resumed.

Usage: python bench/experiment.py [--rooms 2000] [--rooms-at-once 200] [--dsn DSN]
                                  [--nats URL] [--keep]

Writes a spec over examples/phone-accessories.toml (2 items, 4 sellers) with two arms on
baseline brains ("counters": max_rounds 8; "short": max_rounds 2), `--rooms` rooms in all
(arms x items x repeats), and runs `mams experiment` as a child process against the real
PostgreSQL (a schema of its own, dropped afterwards unless --keep) and NATS. Once half of
the rooms have completed it kills the child (SIGKILL), then runs `mams experiment --resume`
to the end, checks that every (arm, scenario, item, seed) has exactly one room in the log
and that all completed, and runs `mams compare --json --markdown`. Prints each phase's wall
time and the child's peak RSS (`os.wait4`'s rusage: the child's own), rooms per second,
and the compare's wall time. `--rooms 10000` is the issue's full benchmark. Prints
figures; asserts nothing but the no-room-twice check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "phone-accessories.toml"
ITEMS = 2  # the example's buyer items
ARMS = 2
_ROOMS = (
    "SELECT a.arm, a.scenario, r.item_name, r.seed, r.status FROM negotiation_runs r "
    "JOIN experiment_arms a USING (session_id)"
)


def mams() -> list[str]:
    script = Path(sys.executable).parent / "mams"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mams.cli"]


def schema_dsn(dsn: str, schema: str) -> str:
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def spec_text(repeats: int, at_once: int) -> str:
    arms = ""
    for name, rounds in (("counters", 8), ("short", 2)):
        arms += (
            f'[[arms]]\nname = "{name}"\nbuyer_model = "baseline"\n'
            f'seller_model = "baseline"\nmax_rounds = {rounds}\n\n'
        )
    return (
        f'name = "bench"\ncontrol = "counters"\nscenarios = ["{EXAMPLE}"]\n'
        f"seeds = 1\nrepeats = {repeats}\nrooms_at_once = {at_once}\n\n{arms}"
    )


async def _rows(dsn: str, schema: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        return list(await conn.fetch(_ROOMS))
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()


def rows(dsn: str, schema: str) -> list[asyncpg.Record]:
    """The experiment's rooms in the log: arm, scenario, item, seed, status."""
    return asyncio.run(_rows(dsn, schema))


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def waited(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Wait for the child; its exit status and peak RSS in MiB (its own rusage)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rooms", type=int, default=2000, help="rooms in all (10000: the full one)")
    ap.add_argument("--rooms-at-once", type=int, default=200)
    ap.add_argument(
        "--dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1/test")
    )
    ap.add_argument("--nats", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    ap.add_argument("--keep", action="store_true", help="keep the schema (and say which)")
    args = ap.parse_args()
    repeats = max(1, args.rooms // (ARMS * ITEMS))
    planned = repeats * ARMS * ITEMS
    schema = f"bench_exp_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(args.dsn, f'CREATE SCHEMA "{schema}"'))
    env = {**os.environ, "DATABASE_URL": schema_dsn(args.dsn, schema), "NATS_URL": args.nats}
    env.pop("ANTHROPIC_API_KEY", None)
    tmp = Path(tempfile.mkdtemp(prefix="mams-bench-exp-"))
    spec = tmp / "spec.toml"
    spec.write_text(spec_text(repeats, args.rooms_at_once), encoding="utf-8")
    print(
        f"{planned} rooms: 2 arms x {ITEMS} items x {repeats} seeds, {args.rooms_at_once} at once"
    )
    try:
        log = (tmp / "first.log").open("wb")
        started = time.perf_counter()
        first = subprocess.Popen(
            [*mams(), "experiment", str(spec)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        while True:
            found = Counter(r["status"] for r in rows(args.dsn, schema))
            if found["completed"] >= planned // 2 and found["running"]:
                break
            if first.poll() is not None:
                raise SystemExit(f"the experiment ended before half: {found}")
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        _, rss1 = waited(first)
        wall1 = time.perf_counter() - started
        at_kill = Counter(r["status"] for r in rows(args.dsn, schema))
        text = (tmp / "first.log").read_text(encoding="utf-8")
        experiment_id = next(
            line.split()[1] for line in text.splitlines() if line.startswith("experiment:")
        )
        print(
            f"first run:  killed after {wall1:.1f} s with {at_kill['completed']} completed, "
            f"{at_kill['running']} open; peak RSS {rss1:.0f} MiB"
        )

        started = time.perf_counter()
        second = subprocess.Popen(
            [*mams(), "experiment", "--resume", experiment_id, "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert second.stdout is not None
        out = second.stdout.read()
        code, rss2 = waited(second)
        wall2 = time.perf_counter() - started
        if code != 0:
            raise SystemExit(f"--resume exited {code}")
        doc = json.loads(out)
        print(
            f"resumed:    {wall2:.1f} s for {doc['rooms_run']} rooms "
            f"({doc['rooms_run'] / wall2:.0f} rooms/s); peak RSS {rss2:.0f} MiB"
        )
        final = rows(args.dsn, schema)
        per_room = Counter((r["arm"], r["scenario"], r["item_name"], r["seed"]) for r in final)
        statuses = Counter(r["status"] for r in final)
        twice = sum(1 for n in per_room.values() if n > 1)
        print(
            f"log:        {len(final)} rooms for {len(per_room)} (arm, scenario, item, seed) of "
            f"{planned} planned; statuses {dict(statuses)}; run twice: {twice}"
        )
        if twice or len(per_room) != planned or statuses != {"completed": planned}:
            raise SystemExit("FAILED: a room missing or run twice")
        total = wall1 + wall2
        print(f"end to end: {total:.1f} s ({planned / total:.0f} rooms/s)")

        started = time.perf_counter()
        third = subprocess.Popen(
            [*mams(), "compare", experiment_id, "--json", "--markdown", str(tmp / "report.md")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert third.stdout is not None
        out = third.stdout.read()
        code, rss3 = waited(third)
        wall3 = time.perf_counter() - started
        compared = json.loads(out)
        print(
            f"compare:    {wall3:.1f} s over {sum(compared['rooms'].values())} rooms; "
            f"peak RSS {rss3:.0f} MiB (exit {code})"
        )
        for c in compared["comparisons"]:
            if c["significant"]:
                print(
                    f"            {c['arm']} - counters, {c['metric']}: "
                    f"{c['mean_difference']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}], "
                    f"p Holm {c['p_holm']:.4f}"
                )
    finally:
        if args.keep:
            print(f"schema kept: {schema}; files in {tmp}")
        else:
            asyncio.run(_admin(args.dsn, f'DROP SCHEMA "{schema}" CASCADE'))


if __name__ == "__main__":
    main()
