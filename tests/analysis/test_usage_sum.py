"""LLMUsageSum: the one sum of model calls, shared by the analysis and the CLI's run line."""

from __future__ import annotations

from mams.cli_render import LLMUsage
from mams.domain.analysis import LLMUsageSum
from mams.domain.events import LLMCall, LLMCalled, RoundOpened


def _call(agent: str, *, tokens: int, cost: float | None, error: str = "") -> LLMCalled:
    call = LLMCall(
        provider="anthropic",
        model="m",
        purpose="turn",
        prompt_digest="d",
        request="{}",
        input_tokens=tokens,
        output_tokens=tokens // 2,
        cache_read_tokens=tokens // 4,
        retries=1,
        cost_usd=cost,
        error=error,
    )
    return LLMCalled(agent=agent, round=1, call=call)


def _cost(usage: LLMUsageSum) -> float | None:
    return usage.cost_usd  # read afresh (mypy would keep the narrowed type of a property)


def test_sums_calls_and_ignores_other_events() -> None:
    usage = LLMUsageSum()
    usage.add(RoundOpened(round=1))
    usage.add(_call("buyer", tokens=100, cost=0.25))
    usage.add(_call("shop", tokens=40, cost=0.125, error="timeout"))
    assert (usage.calls, usage.failed, usage.retries) == (2, 1, 2)
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens) == (140, 70, 35)
    assert usage.cost_usd == 0.375
    usage.add(_call("shop", tokens=0, cost=None))
    assert _cost(usage) is None  # one unknown cost makes the total unknown
    assert not usage.cost_known
    assert usage.cost == 0.375


def test_the_run_line_counts_by_the_same_rule() -> None:
    events = [_call("buyer", tokens=10, cost=0.5), _call("shop", tokens=20, cost=None)]
    line, rule = LLMUsage(), LLMUsageSum()
    for e in events:
        line.add(e)
        rule.add(e)
    assert isinstance(line, LLMUsageSum)
    assert vars(line) == vars(rule)
    assert line.summary().startswith(
        "2 calls, 2 retries; 30 input tokens (7 from cache), 15 output; cost unknown"
    )
