"""The Brain protocols: an agent's own view in, its next action out.

Actors know nothing of how a brain decides; baseline (rule-based) and LLM brains plug in
the same way. A brain sees only its agent's view, so it cannot leak what it never had.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from mams.domain.errors import MamsError
from mams.domain.events import LLMCall, Offer
from mams.domain.guardrails import Violation
from mams.domain.messages import BuyerAction, GuardrailNote
from mams.domain.views import BuyerView, SellerView

BASELINE_LABEL = "baseline (no LLM)"


class BuyerDecision(msgspec.Struct, frozen=True, kw_only=True):
    """The buyer's next action and the private reasoning behind it."""

    action: BuyerAction
    reasoning: str = ""
    notes: tuple[GuardrailNote, ...] = ()
    llm_calls: tuple[LLMCall, ...] = ()


class SellerDecision(msgspec.Struct, frozen=True, kw_only=True):
    """A seller's reply text, optional offer, and private reasoning."""

    text: str
    offer: Offer | None = None
    reasoning: str = ""
    notes: tuple[GuardrailNote, ...] = ()
    llm_calls: tuple[LLMCall, ...] = ()


class BrainError(MamsError):
    """A brain could not produce a usable decision (provider down, output unusable).

    Carries the model calls it made and notes on what went wrong, so the log keeps them;
    the agent then takes its safe fallback action.
    """

    def __init__(
        self, reason: str, *, calls: tuple[LLMCall, ...] = (), notes: tuple[GuardrailNote, ...] = ()
    ) -> None:
        self.reason = reason
        self.calls = calls
        self.notes = notes
        super().__init__(reason)


class BuyerBrain(Protocol):
    """Decides the buyer's actions."""

    @property
    def label(self) -> str:
        """How this brain is named in logs and output, e.g. "baseline (no LLM)"."""
        ...

    async def decide(self, view: BuyerView) -> BuyerDecision:
        """The next action for the buyer's turn in `view.round`."""
        ...

    async def repair(
        self, view: BuyerView, rejected: BuyerDecision, problems: list[Violation]
    ) -> BuyerDecision:
        """A second attempt after `rejected` broke the listed constraints."""
        ...


class SellerBrain(Protocol):
    """Decides a seller's replies."""

    @property
    def label(self) -> str:
        """How this brain is named in logs and output."""
        ...

    async def decide(self, view: SellerView) -> SellerDecision:
        """The reply to the buyer's latest message in `view`."""
        ...

    async def repair(
        self, view: SellerView, rejected: SellerDecision, problems: list[Violation]
    ) -> SellerDecision:
        """A second attempt after `rejected` broke the listed constraints."""
        ...
