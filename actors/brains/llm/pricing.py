"""Estimated cost of an LLM call, from a small table of list prices.

The figures are estimates: list prices in USD per million tokens as published by the
vendors when this table was written, matched by model-name prefix. They ignore batch
discounts, regional pricing, long-context surcharges and whatever a router (OpenRouter)
or a self-hosted server actually charges. A model the table does not know costs `None`
(unknown), never 0. Edit `PRICES` to add a model; the longest matching prefix wins.
"""

from __future__ import annotations

import msgspec

__all__ = ["PRICES", "Price", "estimate_cost", "price_for"]


class Price(msgspec.Struct, frozen=True):
    """USD per million tokens. Cache rates default to the vendor's usual multiples of the
    input rate (reads 0.1x, writes 1.25x for Anthropic's 5-minute cache)."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None

    def read_rate(self) -> float:
        """USD per million tokens served from the prompt cache."""
        return self.input * 0.1 if self.cache_read is None else self.cache_read

    def write_rate(self) -> float:
        """USD per million tokens written to the prompt cache."""
        return self.input * 1.25 if self.cache_write is None else self.cache_write


# Keys are model-name prefixes, without a router's "vendor/" part.
PRICES: dict[str, Price] = {
    # Anthropic
    "claude-opus-4-5": Price(5.0, 25.0),
    "claude-opus-4-6": Price(5.0, 25.0),
    "claude-opus-4": Price(15.0, 75.0),  # 4.0 / 4.1
    "claude-sonnet-4": Price(3.0, 15.0),
    "claude-sonnet-5": Price(3.0, 15.0),  # assumed: the Sonnet tier's long-standing price
    "claude-haiku-4-5": Price(1.0, 5.0),
    "claude-3-5-haiku": Price(0.8, 4.0),
    # OpenAI (cached input is billed at the listed cached rate; writes are free)
    "gpt-5.5": Price(1.25, 10.0, cache_read=0.125, cache_write=1.25),  # assumed: gpt-5 tier
    "gpt-5-mini": Price(0.25, 2.0, cache_read=0.025, cache_write=0.25),
    "gpt-5-nano": Price(0.05, 0.4, cache_read=0.005, cache_write=0.05),
    "gpt-5": Price(1.25, 10.0, cache_read=0.125, cache_write=1.25),
    "gpt-4.1-mini": Price(0.4, 1.6, cache_read=0.1, cache_write=0.4),
    "gpt-4.1": Price(2.0, 8.0, cache_read=0.5, cache_write=2.0),
    "gpt-4o-mini": Price(0.15, 0.6, cache_read=0.075, cache_write=0.15),
    "gpt-4o": Price(2.5, 10.0, cache_read=1.25, cache_write=2.5),
}


def price_for(model: str) -> Price | None:
    """The price of `model` (longest matching prefix; a "vendor/" prefix is ignored)."""
    name = model.rsplit("/", 1)[-1]
    best = max((p for p in PRICES if name.startswith(p)), key=len, default=None)
    return None if best is None else PRICES[best]


def estimate_cost(
    model: str,
    *,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
) -> float | None:
    """Estimated USD for one call, or None for a model not in `PRICES`.

    `input_tokens` is the whole prompt, cached parts included (as `LLMResponse` counts it);
    the cached parts are billed at the cache rates instead of the input rate.
    """
    price = price_for(model)
    if price is None:
        return None
    fresh = max(0, input_tokens - cache_read_tokens - cache_write_tokens)
    usd = (
        fresh * price.input
        + cache_read_tokens * price.read_rate()
        + cache_write_tokens * price.write_rate()
        + output_tokens * price.output
    )
    return usd / 1_000_000
