"""The LLM analyst: a short qualitative review of one negotiation, from its full log.

Hosted evaluators guess; this analyst is told the truth the log keeps: both sides'
private facts (the buyer's maximum, each seller's cost and floor), every message,
each agent's private reasoning, the outcome, where the deal fell within
[seller floor, buyer max], and the grounded quality flags. It writes <= ~150 words:
each side's strategy, mistakes, and who captured the surplus.

The call goes through the brains' provider layer (one forced tool call, retries,
recorded as an `LLMCall`), so it is logged and priced like any agent call.

API (what `mams analyze` calls):

    spec = analyst_model(override=args.analyst_model)   # str | None
    if spec is None:
        print(NO_ANALYST)                                # computed metrics only
    else:
        review = await review_negotiation(events, flags, spec)   # -> AnalystReviewed
        await record_observations(store, nid, [review])

- `analyst_model(override=None, env=os.environ) -> str | None`: the model to use:
  `override` (e.g. `--analyst-model openrouter:google/gemini-2.5-flash`), else
  `MAMS_ANALYST_MODEL`, else the default model of the first configured provider
  (ANTHROPIC_API_KEY, then OPENROUTER_API_KEY, then OPENAI_API_KEY / OPENAI_BASE_URL);
  None when nothing is configured or the choice is "none".
- `review_negotiation(events, flags, model_spec, *, env=os.environ, provider=None,
  request_timeout=60.0, max_retries=3) -> AnalystReviewed`: `events` is the negotiation's
  decoded log (NegotiationStarted first), `flags` its `QualityFlagged` findings.
  Raises `ProviderConfigError` (a ConfigError: exit 2) when the model's provider is not
  configured, and `AnalystError` (carrying the failed `LLMCall` as `.call`) when the call
  fails or the answer holds no review.
- `analyst_prompt(events, flags) -> str`: the prompt alone (pure), for tests and `--json`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from mams.actors.brains.llm.brain import record
from mams.actors.brains.llm.models import DEFAULT_MODELS, available_llm
from mams.actors.brains.llm.providers import (
    ChatMessage,
    LLMCallError,
    LLMRequest,
    Provider,
    ToolSpec,
    provider_for,
)
from mams.domain.errors import MamsError
from mams.domain.events import (
    AnalystReviewed,
    DealClosed,
    Event,
    LLMCall,
    NegotiationEnded,
    NegotiationStarted,
    QualityFlagged,
    ReasoningRecorded,
)
from mams.domain.money import fmt
from mams.domain.transcript import describe_outcome, render

__all__ = [
    "NO_ANALYST",
    "REVIEW_TOOL",
    "AnalystError",
    "analyst_model",
    "analyst_prompt",
    "review_negotiation",
]

NO_ANALYST = (
    "computed metrics only; no LLM analyst configured (set ANTHROPIC_API_KEY / "
    "OPENAI_API_KEY / OPENROUTER_API_KEY or --analyst-model)"
)
MAX_WORDS = 150
_MAX_TEXT = 400  # characters kept of any one message or reasoning in the prompt

SYSTEM = (
    "You are an expert negotiation analyst reviewing one finished marketplace negotiation "
    "between a buyer and several sellers, some of them AI agents. You see everything: each "
    "side's private facts (which the other side never saw), every message, each agent's "
    "private reasoning, the outcome and the findings of exact automated checks. "
    f"Write a review of at most {MAX_WORDS} words covering: the strategy of the buyer and of "
    "each seller that mattered, the mistakes made (cite rounds), and who captured the "
    "surplus between the winning seller's floor and the buyer's maximum. Be concrete, cite "
    "prices, and do not restate the transcript. Call the submit_review tool once."
)

REVIEW_TOOL = ToolSpec(
    name="submit_review",
    description="Submit your review of the negotiation.",
    parameters={
        "type": "object",
        "properties": {
            "review": {
                "type": "string",
                "description": f"The qualitative review, at most {MAX_WORDS} words.",
            }
        },
        "required": ["review"],
    },
)


class AnalystError(MamsError):
    """The analyst's call failed or brought back no review; `call` is what the log keeps."""

    def __init__(self, message: str, *, call: LLMCall) -> None:
        self.call = call
        super().__init__(message)


def analyst_model(override: str | None = None, env: Mapping[str, str] = os.environ) -> str | None:
    """The analyst's model spec ("provider:model"), or None when no LLM is configured.

    `override` (a CLI flag) wins, then `MAMS_ANALYST_MODEL`, then the default model of
    the provider a plain run would use. "none" (any case) turns the analyst off.
    """
    for choice in (override, env.get("MAMS_ANALYST_MODEL")):
        if choice and choice.strip():
            return None if choice.strip().lower() == "none" else choice.strip()
    provider = available_llm(env)
    return None if provider is None else f"{provider}:{DEFAULT_MODELS[provider]}"


# -- the prompt (pure) -------------------------------------------------------------------


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def _facts(started: NegotiationStarted) -> list[str]:
    buyer = started.buyer
    lines = [
        f"Item: {buyer.quantity} x {started.item_name!r}; at most {started.max_rounds} rounds.",
        f"Buyer {buyer.handle} (brain {buyer.brain}): private target {fmt(buyer.min_price)} "
        f"per unit or less, hard maximum {fmt(buyer.max_price)}.",
    ]
    for s in started.sellers:
        lines.append(
            f"Seller {s.handle} (brain {s.brain}, style {s.style}): private cost "
            f"{fmt(s.cost_price)}, list price {fmt(s.selling_price)}, floor "
            f"{fmt(s.least_price)}; weights retention {s.customer_retention_weight}, "
            f"profit {s.profit_maximization_weight}."
        )
    return lines


def _surplus(started: NegotiationStarted, deal: DealClosed) -> str:
    """Where the deal price fell between the seller's floor and the buyer's maximum."""
    floor = next(s.least_price for s in started.sellers if s.agent_id == deal.seller)
    top = started.buyer.max_price
    span = top - floor
    if span <= 0:
        return f"No bargaining zone: floor {fmt(floor)} >= buyer maximum {fmt(top)}."
    buyer_share = (top - deal.unit_price) / span
    pct = (buyer_share * 100).quantize(Decimal(1))
    return (
        f"Deal at {fmt(deal.unit_price)} within [floor {fmt(floor)}, buyer max {fmt(top)}]: "
        f"the buyer kept {pct}% of that zone, the seller {100 - pct}%."
    )


def _outcome(events: Sequence[Event], started: NegotiationStarted) -> list[str]:
    handles = {s.agent_id: s.handle for s in started.sellers}
    lines: list[str] = []
    for event in events:
        if isinstance(event, NegotiationEnded):
            status = "" if event.status == "completed" else f" (aborted: {event.reason})"
            lines.append(describe_outcome(event.outcome, lambda a: handles.get(a, a)) + status)
        elif isinstance(event, DealClosed):
            lines.append(_surplus(started, event))
    return lines or ["Not finished: the log has no end yet."]


def _reasoning(events: Sequence[Event], started: NegotiationStarted) -> list[str]:
    names = {s.agent_id: s.handle for s in started.sellers}
    names[started.buyer.agent_id] = started.buyer.handle
    return [
        f"[r{e.round}] {names.get(e.agent, e.agent)}: {_clip(e.text)}"
        for e in events
        if isinstance(e, ReasoningRecorded)
    ]


def _flags(flags: Sequence[QualityFlagged]) -> list[str]:
    return [
        f"[{f.severity}] {f.kind} ({f.rule}) {f.agent} r{f.round}: {_clip(f.detail)}" for f in flags
    ]


def analyst_prompt(events: Sequence[Event], flags: Sequence[QualityFlagged]) -> str:
    """The user message: private facts, transcript, reasoning, outcome and flags."""
    if not events or not isinstance(events[0], NegotiationStarted):
        raise ValueError("a negotiation's log starts with negotiation.started")
    started = events[0]
    sections = [
        ("Private facts (hidden from the other side)", _facts(started)),
        ("Transcript (what the parties saw)", [_clip(e.plain()) for e in render(events)]),
        ("Private reasoning", _reasoning(events, started) or ["(none recorded)"]),
        ("Outcome", _outcome(events, started)),
        ("Automated checks", _flags(flags) or ["No quality flags."]),
    ]
    return "\n\n".join(f"## {title}\n" + "\n".join(lines) for title, lines in sections)


# -- the call ----------------------------------------------------------------------------


def _review_text(tool_input: dict[str, Any] | None, text: str) -> str:
    review = (tool_input or {}).get("review")
    if isinstance(review, str) and review.strip():
        return review.strip()
    return text.strip()  # a model that ignored the tool but wrote prose


async def review_negotiation(
    events: Sequence[Event],
    flags: Sequence[QualityFlagged],
    model_spec: str,
    *,
    env: Mapping[str, str] = os.environ,
    provider: Provider | None = None,
    request_timeout: float = 60.0,
    max_retries: int = 3,
) -> AnalystReviewed:
    """Ask `model_spec` for a review of the negotiation; the review, its call recorded.

    `provider` replaces the one `model_spec` would build (it is then not closed here).
    """
    started = events[0] if events else None
    if not isinstance(started, NegotiationStarted):
        raise ValueError("a negotiation's log starts with negotiation.started")
    request = LLMRequest(
        system=SYSTEM,
        messages=(ChatMessage(role="user", content=analyst_prompt(events, flags)),),
        tool=REVIEW_TOOL,
        # No temperature (reasoning models refuse one) and the brains' token budget, which
        # a reasoning model also spends on thinking before it answers.
        max_tokens=1024,
    )
    owned = provider is None
    llm = provider or provider_for(
        model_spec, env, timeout=request_timeout, max_retries=max_retries
    )
    try:
        response = await llm.complete(request)
    except LLMCallError as exc:
        call = record(llm, request, "analyst_review", error=exc)
        raise AnalystError(f"the analyst model failed: {exc}", call=call) from exc
    finally:
        close = getattr(llm, "aclose", None)
        if owned and close is not None:
            await close()
    call = record(llm, request, "analyst_review", response)
    review = _review_text(response.tool_input, response.text)
    if not review:
        raise AnalystError(
            f"{llm.name}:{llm.model} answered without a review (see the recorded response)",
            call=call,
        )
    return AnalystReviewed(
        negotiation_id=started.negotiation_id,
        model=f"{llm.name}:{llm.model}",
        text=review,
        call=call,
    )
