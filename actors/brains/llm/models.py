"""Which model runs by default, and which provider a plain run would use.

Kept free of the provider SDKs, so deciding "no LLM configured: baseline" costs no
import of anthropic or openai. Change the defaults here, in one place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

DEFAULT_MODELS: dict[str, str] = {
    "anthropic": "claude-sonnet-5",
    "openai": "gpt-5.5",
    "openrouter": "anthropic/claude-sonnet-5",
}


def available_llm(env: Mapping[str, str] = os.environ) -> str | None:
    """The provider a plain run would use, by which keys are set: "anthropic", then
    "openrouter", then "openai" (a key or a base URL); None when none is configured."""
    if env.get("ANTHROPIC_API_KEY"):
        return "anthropic"
    if env.get("OPENROUTER_API_KEY"):
        return "openrouter"
    if env.get("OPENAI_API_KEY") or env.get("OPENAI_BASE_URL"):
        return "openai"
    return None
