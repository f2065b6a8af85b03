"""LLM brains: a model decides the buyer's or a seller's turn through one forced tool call.

Every call, including failed ones, becomes an `LLMCall` carried with the decision (or
with the `BrainError`) so the broker logs it. An answer that cannot be parsed gets one
correction round; a decision the guardrails reject gets one repair round (the agent
asks through `repair`). After that the agent falls back to a safe action.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import TypeVar

import msgspec

from mams.actors.brains.base import BrainError, BuyerDecision, SellerDecision
from mams.actors.brains.llm.prompts import (
    BUYER_TOOL_NAME,
    BUYER_TOOL_SCHEMA,
    SELLER_TOOL_NAME,
    SELLER_TOOL_SCHEMA,
    OutputError,
    buyer_system,
    buyer_user,
    correction,
    parse_buyer,
    parse_seller,
    seller_system,
    seller_user,
)
from mams.actors.brains.llm.providers import (
    ChatMessage,
    LLMCallError,
    LLMRequest,
    LLMResponse,
    Provider,
    ToolSpec,
)
from mams.domain.events import LLMCall
from mams.domain.guardrails import Violation
from mams.domain.messages import GuardrailNote
from mams.domain.views import BuyerView, SellerView

BUYER_TOOL = ToolSpec(
    name=BUYER_TOOL_NAME,
    parameters=BUYER_TOOL_SCHEMA,
    description="Take your action for this turn of the negotiation.",
)
SELLER_TOOL = ToolSpec(
    name=SELLER_TOOL_NAME,
    parameters=SELLER_TOOL_SCHEMA,
    description="Reply to the buyer, with an optional committed offer.",
)

_T = TypeVar("_T")


def prompt_digest(request: LLMRequest) -> str:
    """A fingerprint of the provider-neutral prompt (what a rerun must rebuild exactly)."""
    return hashlib.sha256(msgspec.json.encode(request)).hexdigest()[:32]


def record(
    provider: Provider,
    request: LLMRequest,
    purpose: str,
    response: LLMResponse | None = None,
    error: LLMCallError | None = None,
) -> LLMCall:
    """An LLM call as the log keeps it, from its response or its failure."""
    digest = prompt_digest(request)
    if response is not None:
        return LLMCall(
            provider=response.provider,
            model=response.model,
            purpose=purpose,
            prompt_digest=digest,
            request=response.request_body,
            response=response.response_body,
            tool_input=json.dumps(response.tool_input) if response.tool_input is not None else "",
            text=response.text,
            input_tokens=response.input_tokens,
            output_tokens=response.output_tokens,
            cache_read_tokens=response.cache_read_tokens,
            cache_write_tokens=response.cache_write_tokens,
            latency_ms=response.latency_ms,
            retries=response.retries,
            cost_usd=response.cost_usd,
        )
    assert error is not None
    return LLMCall(
        provider=provider.name,
        model=provider.model,
        purpose=purpose,
        prompt_digest=digest,
        request=error.request_body,
        response=error.response_body or "",
        retries=error.retries,
        error=str(error),
    )


def _attempted(response: LLMResponse) -> str:
    if response.tool_input is not None:
        return json.dumps(response.tool_input)
    return response.text[:2000]


class _LLMBrain:
    """What buyer and seller brains share: calling, recording, one correction round."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    @property
    def label(self) -> str:
        """`provider:model`, as scenarios and reports name it."""
        return f"{self.provider.name}:{self.provider.model}"

    async def aclose(self) -> None:
        """Close the provider's HTTP client, if it has one."""
        close = getattr(self.provider, "aclose", None)
        if close is not None:
            await close()

    async def _call(self, request: LLMRequest, purpose: str, calls: list[LLMCall]) -> LLMResponse:
        try:
            response = await self.provider.complete(request)
        except LLMCallError as exc:
            calls.append(record(self.provider, request, purpose, error=exc))
            raise BrainError(f"{self.label} failed: {exc}", calls=tuple(calls)) from exc
        calls.append(record(self.provider, request, purpose, response))
        return response

    async def _ask(
        self,
        system: str,
        messages: list[ChatMessage],
        tool: ToolSpec,
        purpose: str,
        parse: Callable[[LLMResponse], _T],
        calls: list[LLMCall],
    ) -> tuple[_T, tuple[GuardrailNote, ...]]:
        """Call, parse; on unusable output, one correction round, else BrainError."""
        request = LLMRequest(system=system, messages=tuple(messages), tool=tool)
        response = await self._call(request, purpose, calls)
        try:
            return parse(response), ()
        except OutputError as first:
            note = dict(rule="invalid_output", detail=first.detail, attempted=_attempted(response))
            retry = [
                *messages,
                ChatMessage(role="assistant", content=_attempted(response)),
                ChatMessage(role="user", content=correction([first.detail])),
            ]
            request = LLMRequest(system=system, messages=tuple(retry), tool=tool)
            response = await self._call(request, "correct_output", calls)
            try:
                return parse(response), (GuardrailNote(**note, resolution="repaired"),)
            except OutputError as second:
                raise BrainError(
                    f"{self.label} gave unusable output twice: {second.detail}",
                    calls=tuple(calls),
                    notes=(GuardrailNote(**note, resolution="fallback"),),
                ) from second


class LLMBuyerBrain(_LLMBrain):
    """A buyer driven by a language model."""

    async def decide(self, view: BuyerView) -> BuyerDecision:
        """Ask the model for the buyer's action this turn."""
        return await self._buyer(
            view, [ChatMessage(role="user", content=buyer_user(view))], "decide"
        )

    async def repair(
        self, view: BuyerView, rejected: BuyerDecision, problems: list[Violation]
    ) -> BuyerDecision:
        """Tell the model why its action was rejected and ask once more."""
        attempted = msgspec.json.encode(rejected.action).decode()
        messages = [
            ChatMessage(role="user", content=buyer_user(view)),
            ChatMessage(role="assistant", content=attempted),
            ChatMessage(role="user", content=correction([p.detail for p in problems])),
        ]
        return await self._buyer(view, messages, "repair")

    async def _buyer(
        self, view: BuyerView, messages: list[ChatMessage], purpose: str
    ) -> BuyerDecision:
        calls: list[LLMCall] = []
        (action, reasoning), notes = await self._ask(
            buyer_system(view),
            messages,
            BUYER_TOOL,
            purpose,
            lambda r: parse_buyer(r.tool_input, view),
            calls,
        )
        return BuyerDecision(
            action=action, reasoning=reasoning, notes=notes, llm_calls=tuple(calls)
        )


class LLMSellerBrain(_LLMBrain):
    """A seller driven by a language model."""

    async def decide(self, view: SellerView) -> SellerDecision:
        """Ask the model for the seller's reply."""
        return await self._seller(
            view, [ChatMessage(role="user", content=seller_user(view))], "decide"
        )

    async def repair(
        self, view: SellerView, rejected: SellerDecision, problems: list[Violation]
    ) -> SellerDecision:
        """Tell the model why its offer was rejected and ask once more."""
        attempted = msgspec.json.encode({"text": rejected.text, "offer": rejected.offer}).decode()
        messages = [
            ChatMessage(role="user", content=seller_user(view)),
            ChatMessage(role="assistant", content=attempted),
            ChatMessage(role="user", content=correction([p.detail for p in problems])),
        ]
        return await self._seller(view, messages, "repair")

    async def _seller(
        self, view: SellerView, messages: list[ChatMessage], purpose: str
    ) -> SellerDecision:
        calls: list[LLMCall] = []
        (text, offer, reasoning), notes = await self._ask(
            seller_system(view),
            messages,
            SELLER_TOOL,
            purpose,
            lambda r: parse_seller(r.tool_input, view),
            calls,
        )
        return SellerDecision(
            text=text, offer=offer, reasoning=reasoning, notes=notes, llm_calls=tuple(calls)
        )
