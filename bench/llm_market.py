"""The cost of the system around the model, with LLM brains and an instant model.

Usage: python bench/llm_market.py [--runs 5] [--rooms 2] [--provider anthropic|openai]
                                   [--nats URL] [--dsn DSN] [--cli ROOMS]

Runs the phone-accessories market with every agent on "anthropic:claude-sonnet-5" (or
"openai:gpt-5.5"), served by a loopback API server that answers instantly with a
scripted negotiator, over the real NATS and PostgreSQL (NATS_URL / DATABASE_URL,
defaults to 127.0.0.1). Prints, per negotiation: LLM calls, prompt and completion tokens
(estimated from the bytes actually sent and received, ~4 characters per token, since
the fake's usage figures are made up), and the orchestration time per LLM call: wall time
of the room (opened to ended) divided by the calls on its critical path (rounds x 2: the
buyer's call, then the sellers' parallel calls), which is everything but the model.
Printed beside the seed's estimate (~20 calls, ~20,000 tokens per negotiation). `--runs`
market runs of `--rooms` rooms each (at most 20 open at once). Also the
orchestrator's CPU per LLM call: CPU time of the event loop's thread over the runs (the
fake answers on threads of its own, so its CPU is not counted), beside the same thread's
CPU for a bare HTTP round trip to the fake (the floor: what any client pays).

With `--cli ROOMS`, it then runs what a user runs, `mams run` as a child process over
ROOMS rooms (the market's items `ROOMS / items` times), three ways interleaved `--runs`
times (at least once): in-process, `--processes` with its children forked from the warm
fork server (`mams.forkserver`, the default), and `--processes` with every child started
afresh (MAMS_FORK_SERVER=0, as before the fork server). It prints each way's whole CPU
(the child and every process it waited for: fork server, broker, sellers, buyer;
start-up and imports included; the median of the runs) per LLM call and each
`--processes` way's ratio to in-process (CPU and wall), with what start-ups and SDK
imports account for when children start afresh (each process starts the interpreter and
each agent imports the SDK, which the in-process run does once) and what a child forked
from a warm parent costs instead. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx2
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mams.actors.market import RunOptions, run_market
from mams.bus.base import Bus
from mams.bus.nats import NatsBus
from mams.domain.config import load_scenario
from mams.domain.events import Event, LLMCalled, NegotiationEnded, decode_event
from mams.domain.negotiation import NegotiationState
from mams.forkserver import FORK_SERVER_ENV
from mams.storage.pg import open_store
from mams.storage.readmodels import ReadModelProjector, save_session
from tests.llm.fakes import (
    FakeAnthropic,
    FakeLLMServer,
    FakeOpenAI,
    Reply,
    anthropic_tool_use,
    openai_tool_call,
)

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "examples" / "phone-accessories.toml"
MODELS = {"anthropic": "anthropic:claude-sonnet-5", "openai": "openai:gpt-5.5"}


def _text(body: dict[str, Any]) -> tuple[str, str, str]:
    """(tool name, system prompt, last user message) of either wire format."""
    messages = body["messages"]
    if "system" in body:  # Anthropic
        system = body["system"]
        system = system[0]["text"] if isinstance(system, list) else system
        tool = body["tool_choice"]["name"]
    else:  # OpenAI: the system prompt is the first message
        system = messages[0]["content"] if messages[0]["role"] == "system" else ""
        tool = body["tool_choice"]["function"]["name"]
    user = messages[-1]["content"]
    return tool, system, user if isinstance(user, str) else user[0]["text"]


def decide(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A scripted, instant model: sellers concede toward their floor, the buyer counters
    twice and then takes the best standing offer. Returns (tool name, its arguments)."""
    tool, system, user = _text(body)
    if tool == "seller_reply":
        ask = float(re.search(r"asking price is \$([\d.,]+)", system).group(1))  # type: ignore[union-attr]
        floor = float(re.search(r"price\) is \$([\d.,]+)", system).group(1))  # type: ignore[union-attr]
        step = user.count("[round")
        price = max(floor, round(ask - (ask - floor) * 0.3 * step, 2))
        return tool, {
            "reasoning": "concede a little each round",
            "text": f"I can do ${price:.2f} per unit.",
            "offer_unit_price": price,
        }
    offers = re.findall(r"- (@\w+): \$([\d.]+) x (\d+)", user)
    round_ = int(re.search(r"round (\d+) of", user).group(1))  # type: ignore[union-attr]
    if not offers:
        return tool, {
            "reasoning": "ask everyone",
            "action": "message",
            "to": [],
            "text": "What is your best unit price?",
        }
    handle, price, qty = min(offers, key=lambda o: float(o[1]))
    if round_ >= 3:
        return tool, {
            "reasoning": "best offer is good enough",
            "action": "accept",
            "seller": handle,
            "unit_price": float(price),
            "quantity": int(qty),
            "text": "Deal.",
        }
    return tool, {
        "reasoning": "push for less",
        "action": "counter",
        "to": [],
        "unit_price": round(float(price) * 0.85, 2),
        "text": "Can you do better?",
    }


def negotiator(body: dict[str, Any]) -> Reply:
    """`decide` as an Anthropic Messages reply."""
    return anthropic_tool_use(*decide(body))


def openai_negotiator(body: dict[str, Any]) -> Reply:
    """`decide` as an OpenAI chat completion."""
    return openai_tool_call(*decide(body))


def fake_for(provider: str) -> FakeLLMServer:
    """The loopback server of `provider`, scripted with the negotiator."""
    fake: FakeLLMServer
    if provider == "anthropic":
        fake = FakeAnthropic()
        fake.handler = negotiator
    else:
        fake = FakeOpenAI()
        fake.handler = openai_negotiator
    return fake


def provider_env(provider: str, url: str) -> dict[str, str]:
    """The environment pointing `provider` at the fake (and nothing at the other one)."""
    if provider == "anthropic":
        return {"ANTHROPIC_API_KEY": "bench", "ANTHROPIC_BASE_URL": url}
    return {"OPENAI_API_KEY": "bench", "OPENAI_BASE_URL": url}


async def one_run(
    nats_url: str, dsn: str, schema: str, model: str, n_rooms: int
) -> tuple[list[dict[str, float]], float]:
    """One market run of `n_rooms` rooms (the items, as many times as it takes, at most
    20 open at once as `mams run` does with LLMs): per-room figures, and the event loop
    thread's CPU seconds."""
    pool, store = await open_store(dsn, schema, projector=ReadModelProjector())
    scenario = load_scenario(SCENARIO)
    session_id = uuid.uuid4()
    async with pool.acquire() as conn:
        await save_session(conn, session_id, scenario)

    async def connect(name: str) -> Bus:
        return await NatsBus.connect(nats_url, name=name)

    opened: dict[uuid.UUID, float] = {}
    ended: dict[uuid.UUID, float] = {}

    def on_event(nid: uuid.UUID, seq: int, event: Event, state: NegotiationState) -> None:
        opened.setdefault(nid, time.perf_counter())
        if isinstance(event, NegotiationEnded):
            ended[nid] = time.perf_counter()

    cpu = time.thread_time()
    rooms = await run_market(
        scenario,
        session_id,
        scenario.buyer.items,
        connect=connect,
        store=store,
        options=RunOptions(
            seed=1,
            round_timeout=30,
            runs=max(1, math.ceil(n_rooms / len(scenario.buyer.items))),
            rooms_at_once=20,
            buyer_model=model,
            seller_model=model,
        ),
        on_event=on_event,
    )
    cpu = time.thread_time() - cpu
    out = []
    for room in rooms:
        events = [decode_event(e.data) for e in await store.read(room.negotiation_id)]
        calls = [e.call for e in events if isinstance(e, LLMCalled)]
        prompt_chars = sum(len(c.request) for c in calls)
        completion_chars = sum(len(c.tool_input) + len(c.text) for c in calls)
        out.append(
            {
                "calls": len(calls),
                "rounds": room.state.round,
                "prompt_tokens": prompt_chars / 4,
                "completion_tokens": completion_chars / 4,
                "http_ms": statistics.mean(c.latency_ms for c in calls) if calls else 0.0,
                "per_call_ms": (ended[room.negotiation_id] - opened[room.negotiation_id])
                * 1000
                / max(1, 2 * room.state.round),
            }
        )
    await pool.close()
    return out, cpu


async def bare_http_cpu_ms(fake: FakeLLMServer, n: int = 200) -> float:
    """This thread's CPU per bare HTTP round trip to the fake (httpx2, keep-alive), with
    the body of a typical buyer request: the floor under any client."""
    if isinstance(fake, FakeAnthropic):
        endpoint = f"{fake.url}/v1/messages"
        body: dict[str, Any] = {
            "system": [{"type": "text", "text": "You are a buyer. " * 150}],
            "messages": [{"role": "user", "content": "round 1 of 8"}],
            "tool_choice": {"type": "tool", "name": "buyer_action"},
        }
    else:
        endpoint = f"{fake.url}/chat/completions"
        body = {
            "messages": [
                {"role": "system", "content": "You are a buyer. " * 150},
                {"role": "user", "content": "round 1 of 8"},
            ],
            "tool_choice": {"type": "function", "function": {"name": "buyer_action"}},
        }
    content = json.dumps(body).encode()
    async with httpx2.AsyncClient() as http:
        for _ in range(20):  # warm up the connection
            (await http.post(endpoint, content=content)).json()
        cpu = time.thread_time()
        for _ in range(n):
            (await http.post(endpoint, content=content)).json()
        return (time.thread_time() - cpu) * 1000 / n


def run_cli(
    provider: str,
    fake: FakeLLMServer,
    rooms: int,
    processes: bool,
    nats: str,
    dsn: str,
    *,
    fork: bool = True,
) -> tuple[float, float, int]:
    """`mams run` over `rooms` rooms as a child process, in a schema of its own: (CPU
    seconds of the child and every process it waited for, wall seconds, LLM calls).
    `fork`: with `processes`, children forked from the fork server (else started
    afresh)."""
    items = len(load_scenario(SCENARIO).buyer.items)
    runs = max(1, math.ceil(rooms / items))
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    model = MODELS[provider]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "OPENAI_", "OPENROUTER_", "SENTRY_"))
    }
    sep = "&" if "?" in dsn else "?"
    env |= provider_env(provider, fake.url) | {
        "NATS_URL": nats,
        # asyncpg passes unknown DSN parameters on as server settings.
        "DATABASE_URL": f"{dsn}{sep}search_path={schema}",
        FORK_SERVER_ENV: "1" if fork else "0",
    }
    cmd = [sys.executable, "-m", "mams", "run", str(SCENARIO), "--runs", str(runs)]
    cmd += ["--buyer-model", model, "--seller-model", model, "--seed", "1"]
    cmd += ["--processes"] if processes else []

    async def schema_sql(sql: str) -> None:
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(sql)
        finally:
            await admin.close()

    anyio.run(schema_sql, f'CREATE SCHEMA "{schema}"')
    try:
        calls = len(fake.requests)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        with tempfile.TemporaryFile() as output:
            done = subprocess.run(cmd, env=env, stdout=output, stderr=subprocess.STDOUT)
            wall = time.perf_counter() - started
            if done.returncode != 0:
                output.seek(0)
                tail = output.read().decode("utf-8", "replace")[-3000:]
                raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{tail}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return cpu, wall, len(fake.requests) - calls
    finally:
        anyio.run(schema_sql, f'DROP SCHEMA "{schema}" CASCADE')


def child_cpu(argv: list[str], n: int = 3) -> float:
    """Median CPU seconds of `n` runs of `python -P argv` (fresh interpreters)."""
    samples = []
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-P", *argv], stdout=subprocess.DEVNULL, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        samples.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    return statistics.median(samples)


def start_cpu() -> float:
    """CPU seconds of one `python -m mams --help` (what every child process starts with)."""
    return child_cpu(["-m", "mams", "--help"])


def sdk_import_cpu(provider: str) -> float:
    """CPU seconds a fresh interpreter spends importing `provider`'s SDK, beyond its own
    start (what each agent process of `--processes` pays once, before its first call)."""
    return child_cpu(["-c", f"import {provider}"]) - child_cpu(["-c", "pass"])


def forked_cpu(provider: str, n: int = 3) -> float:
    """CPU seconds of a child forked from a process that has already imported the CLI and
    `provider`'s SDK, building its provider and exiting: what a child would cost if
    `--processes` forked its children from a warm parent instead of starting them afresh."""
    code = (
        "import os, resource, statistics, mams.cli\n"
        "from mams.actors.brains.llm.providers import provider_for\n"
        f"provider_for({MODELS[provider]!r}, {provider_env(provider, 'http://127.0.0.1:9')!r})\n"
        "samples = []\n"
        f"for _ in range({n}):\n"
        "    b = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "    if (pid := os.fork()) == 0:\n"
        f"        provider_for({MODELS[provider]!r}, {provider_env(provider, 'http://127.0.0.1:9')!r})\n"
        "        os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
        "    a = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "    samples.append(a.ru_utime - b.ru_utime + a.ru_stime - b.ru_stime)\n"
        "print(statistics.median(samples))\n"
    )
    done = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True
    )
    return float(done.stdout.strip().splitlines()[-1])


async def in_process(args: argparse.Namespace, fake: FakeLLMServer) -> None:
    rows: list[dict[str, float]] = []
    cpus: list[float] = []
    calls_per_run: list[int] = []
    os.environ.update(provider_env(args.provider, fake.url))
    for _ in range(args.runs):
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(args.dsn)
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            out, run_cpu = await one_run(
                args.nats, args.dsn, schema, MODELS[args.provider], args.rooms
            )
            rows += out
            cpus.append(run_cpu)
            calls_per_run.append(sum(int(r["calls"]) for r in out))
        finally:
            await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
            await admin.close()
    floor = await bare_http_cpu_ms(fake)

    def mean(key: str) -> float:
        return statistics.mean(r[key] for r in rows)

    print(
        f"{len(rows)} negotiations, every agent an LLM brain ({MODELS[args.provider]}) "
        "on an instant loopback model"
    )
    print(f"  LLM calls per negotiation        {mean('calls'):8.1f}   (seed estimate ~20)")
    tokens = mean("prompt_tokens") + mean("completion_tokens")
    print(
        f"  tokens per negotiation (est.)    {tokens:8,.0f}   (seed estimate ~20,000)"
        f"  = {mean('prompt_tokens'):,.0f} prompt + {mean('completion_tokens'):,.0f} completion"
    )
    print(f"  rounds per negotiation           {mean('rounds'):8.1f}")
    print(f"  SDK + HTTP per call (mean)       {mean('http_ms'):8.2f} ms")
    print(
        f"  orchestration per critical call  {mean('per_call_ms'):8.2f} ms   "
        "(room open to end / (2 x rounds): bus, log, guardrails, prompts, SDK, fake)"
    )
    print(f"  bare HTTP round trip CPU         {floor:8.2f} ms   (the floor)")
    per_call = sum(cpus) * 1000 / max(1, sum(calls_per_run))
    print(
        f"  orchestrator CPU per LLM call    {per_call:8.2f} ms   = {per_call / floor:4.1f}x the "
        f"floor (event loop thread, {sum(cpus):.2f} s over {sum(calls_per_run)} calls: "
        "brains built, bus, log, SDK)"
    )
    if len(cpus) > 1:  # the first run pays the SDK import and the first connections
        warm = sum(cpus[1:]) * 1000 / max(1, sum(calls_per_run[1:]))
        print(
            f"    after the first run            {warm:8.2f} ms   = {warm / floor:4.1f}x the "
            "floor (SDK imported)"
        )


CLI_WAYS = {"in-process": (False, False), "forked": (True, True), "afresh": (True, False)}


def cli_runs(args: argparse.Namespace, fake: FakeLLMServer) -> None:
    start = start_cpu()
    sdk = sdk_import_cpu(args.provider)
    forked = forked_cpu(args.provider)
    samples: dict[str, list[tuple[float, float, int]]] = {way: [] for way in CLI_WAYS}
    for _ in range(max(1, args.runs)):  # interleaved: each way sees the same machine
        for way, (processes, fork) in CLI_WAYS.items():
            samples[way].append(
                run_cli(args.provider, fake, args.cli, processes, args.nats, args.dsn, fork=fork)
            )
    results = {
        way: tuple(statistics.median(s[i] for s in runs) for i in range(3))
        for way, runs in samples.items()
    }
    scenario = load_scenario(SCENARIO)
    agents = 1 + len(scenario.sellers)  # each an LLM brain: each imports the SDK
    n = len(samples["in-process"])
    print(
        f"`mams run` over {args.cli} rooms, {MODELS[args.provider]} on the instant model "
        f"(median of {n} interleaved run(s) each)"
    )
    print(f"  `python -m mams --help` start-up {start:8.2f} CPU-s")
    label = f"`import {args.provider}` (the SDK)"
    print(f"  {label:<32} {sdk:8.2f} CPU-s   (once in each process with an LLM brain)")
    labels = {
        "in-process": "in-process",
        "forked": "--processes (forked, default)",
        "afresh": "--processes (afresh, MAMS_FORK_SERVER=0)",
    }
    for way, (cpu, wall, calls) in results.items():
        cpus = ", ".join(f"{s[0]:.2f}" for s in samples[way])
        print(
            f"  {labels[way]:<41} {cpu:7.2f} CPU-s  {wall:6.1f} s wall  {calls:5.0f} LLM calls  "
            f"{cpu * 1000 / max(1, calls):6.2f} ms CPU per call (start-up included; runs: {cpus})"
        )
    base_cpu, base_wall, _ = results["in-process"]
    for way in ("forked", "afresh"):
        cpu, wall, _ = results[way]
        print(
            f"  {labels[way]} / in-process CPU  {cpu / base_cpu:6.2f}x   "
            f"(wall {wall / base_wall:.2f}x)"
        )
    # Started afresh, the broker, each seller and the buyer each pay the start-up, and
    # each agent the SDK import, that the in-process run pays once.
    extra = (agents + 1) * start + (agents - 1) * sdk
    print(
        f"    afresh: start-ups and SDK imports {extra:6.2f} CPU-s   "
        f"({agents + 1} more start-ups, {agents - 1} more SDK imports than in-process)"
    )
    print(
        f"  a child forked from a warm parent {forked:6.3f} CPU-s   "
        "(the CLI and SDK already imported: what each forked child costs at start)"
    )


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--runs",
        type=int,
        default=5,
        help="market runs, one after the other (with --cli: also how often each way runs)",
    )
    p.add_argument("--rooms", type=int, default=2, help="rooms per market run")
    p.add_argument("--provider", choices=sorted(MODELS), default="anthropic")
    p.add_argument("--cli", type=int, metavar="ROOMS", help="also time `mams run` over ROOMS")
    p.add_argument("--nats", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument(
        "--dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    args = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with fake_for(args.provider) as fake:
        if args.runs > 0:
            await in_process(args, fake)
        if args.cli:
            await anyio.to_thread.run_sync(cli_runs, args, fake)


if __name__ == "__main__":
    anyio.run(main)
