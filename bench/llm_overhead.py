"""LLM provider orchestration overhead: everything but the model.

Usage: python bench/llm_overhead.py [--n 500] [--concurrency 8]

Against a FakeAnthropic and a FakeOpenAI on loopback that answer instantly, times N
sequential `complete()` calls through each provider (SDK request building, HTTP,
response parsing, our retry/limiter/recording layer) and prints mean/p50/p99 ms per
call, then calls/s with `concurrency` calls in flight. As a floor it also times the bare
HTTP round trip to the same fake with the SDK's own HTTP client (httpx2), so the
difference is what the SDK and this layer add. Beside wall time, the CPU time of the
calling thread per call (the fakes answer on threads of their own, so theirs is not in
it), and its ratio to the floor's. The fakes share the GIL with the client, so absolute
wall figures are pessimistic. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mams.actors.brains.llm.providers import (
    AnthropicProvider,
    ChatMessage,
    LLMRequest,
    OpenAIProvider,
    ToolSpec,
)
from tests.llm.fakes import (
    FakeAnthropic,
    FakeOpenAI,
    Reply,
    anthropic_tool_use,
    openai_json_content,
    openai_tool_call,
)

TOOL = ToolSpec(
    name="make_offer",
    description="Propose a price to the other party.",
    parameters={
        "type": "object",
        "properties": {"price": {"type": "number"}, "message": {"type": "string"}},
        "required": ["price", "message"],
    },
)
REQUEST = LLMRequest(
    system="You are a buyer in a second-hand market. " * 40,  # a realistic ~2 KB prompt
    messages=tuple(
        ChatMessage("user" if i % 2 == 0 else "assistant", f"Turn {i}: offer {100 - i}.")
        for i in range(7)
    ),
    tool=TOOL,
)
ARGS = {"price": 90, "message": "Meet me at 90?"}


def summary(label: str, samples_ms: list[float]) -> None:
    ordered = sorted(samples_ms)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * len(ordered)) - 1)]
    print(
        f"  {label:<28} mean {statistics.fmean(ordered):7.3f} ms   "
        f"p50 {statistics.median(ordered):7.3f} ms   p99 {p99:7.3f} ms"
    )


async def timed(n: int, call: Callable[[], Awaitable[object]]) -> tuple[list[float], float]:
    """Wall ms of each of `n` calls, and this thread's CPU ms per call."""
    for _ in range(20):  # warm up: connection pool, imports, caches
        await call()
    samples = []
    cpu = time.thread_time()
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples, (time.thread_time() - cpu) * 1000 / n


async def throughput(n: int, concurrency: int, call: Callable[[], Awaitable[object]]) -> float:
    limiter = anyio.CapacityLimiter(concurrency)

    async def one() -> None:
        async with limiter:
            await call()

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return n / (time.perf_counter() - started)


async def bench(
    label: str,
    provider: AnthropicProvider | OpenAIProvider,
    endpoint: str,
    n: int,
    concurrency: int,
) -> None:
    body = json.dumps(provider.params(REQUEST)).encode()
    async with httpx2.AsyncClient() as http, provider:

        async def bare() -> object:
            return (await http.post(endpoint, content=body)).content

        async def full() -> object:
            return await provider.complete(REQUEST)

        print(f"{label} ({n} sequential calls):")
        floor, floor_cpu = await timed(n, bare)
        summary("bare HTTP round trip", floor)
        calls, calls_cpu = await timed(n, full)
        summary("provider.complete()", calls)
        added = statistics.fmean(calls) - statistics.fmean(floor)
        print(f"  {'SDK + provider layer adds':<28} {added:7.3f} ms per call (mean)")
        print(
            f"  {'CPU per call':<28} {calls_cpu:7.3f} ms   bare HTTP {floor_cpu:7.3f} ms   "
            f"= {calls_cpu / floor_cpu:4.2f}x the floor (+{calls_cpu - floor_cpu:.3f} ms)"
        )
        rate = await throughput(n, concurrency, full)
        print(f"  {'throughput':<28} {rate:7.0f} calls/s with {concurrency} in flight")


async def main(n: int, concurrency: int) -> None:
    anthropic_reply = anthropic_tool_use(TOOL.name, ARGS, cache_read=1500)
    tool_reply = openai_tool_call(TOOL.name, ARGS, cached_tokens=1500)
    json_reply = openai_json_content(ARGS, cached_tokens=1500)

    def openai_answer(body: dict[str, Any]) -> Reply:
        return json_reply if "response_format" in body else tool_reply

    with FakeAnthropic() as fa, FakeOpenAI() as fo:
        fa.handler = lambda _body: anthropic_reply
        fo.handler = openai_answer
        limiter = anyio.CapacityLimiter(concurrency)
        await bench(
            "anthropic",
            AnthropicProvider("claude-sonnet-5", api_key="bench", base_url=fa.url, limiter=limiter),
            f"{fa.url}/v1/messages",
            n,
            concurrency,
        )
        await bench(
            "openai (tools)",
            OpenAIProvider("gpt-5.5", api_key="bench", base_url=fo.url, limiter=limiter),
            f"{fo.url}/chat/completions",
            n,
            concurrency,
        )
        await bench(
            "openai (json_schema)",
            OpenAIProvider("gpt-5.5", api_key="bench", base_url=fo.url, structured="json_schema"),
            f"{fo.url}/chat/completions",
            n,
            concurrency,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    anyio.run(main, args.n, args.concurrency)
