"""What the experiment tests share: a spec's text, scenarios forced to baseline brains."""

from __future__ import annotations

from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "phone-accessories.toml"

BASELINE = 'buyer_model = "baseline"\nseller_model = "baseline"\n'


def spec_text(
    *arms: tuple[str, str], repeats: int, seeds: int = 1, extra: str = "", control: str = ""
) -> str:
    """A spec over the example scenario: `arms` are (name, extra TOML lines), every arm's
    agents on baseline brains."""
    lines = [
        'name = "test"',
        f'control = "{control or arms[0][0]}"',
        f'scenarios = ["{EXAMPLE}"]',
        f"seeds = {seeds}",
        f"repeats = {repeats}",
        extra,
    ]
    for name, more in arms:
        lines += ["[[arms]]", f'name = "{name}"', BASELINE + more]
    return "\n".join(lines) + "\n"
