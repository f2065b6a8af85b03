"""Money: prices are `Decimal`s with exactly two places, never binary floats."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, InvalidOperation

CENT = Decimal("0.01")


def cents(value: Decimal) -> Decimal:
    """Quantize to two places (banker's rounding); the canonical form of every price."""
    return value.quantize(CENT, rounding=ROUND_HALF_EVEN)


def cents_up(value: Decimal) -> Decimal:
    """Quantize to two places rounding up: a price that must not fall below a floor."""
    return value.quantize(CENT, rounding=ROUND_CEILING)


def cents_down(value: Decimal) -> Decimal:
    """Quantize to two places rounding down: a price that must not rise above a cap."""
    return value.quantize(CENT, rounding=ROUND_FLOOR)


def parse_price(raw: object) -> Decimal:
    """Read a price from TOML/JSON input (Decimal, int or numeric string).

    Raises ValueError with a reason a person can act on. Floats are refused because the
    loaders here parse decimals exactly; a float means precision was already lost.
    """
    if isinstance(raw, bool):
        raise ValueError("must be a number, not a boolean")
    if isinstance(raw, Decimal):
        value = raw
    elif isinstance(raw, int):
        value = Decimal(raw)
    elif isinstance(raw, str):
        try:
            value = Decimal(raw.strip().lstrip("$"))
        except InvalidOperation:
            raise ValueError(f"must be a number like 12.50, got {raw!r}") from None
    elif isinstance(raw, float):
        value = Decimal(repr(raw))
    else:
        raise ValueError(f"must be a number like 12.50, got {type(raw).__name__}")
    if not value.is_finite():
        raise ValueError("must be a finite number")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2:
        raise ValueError(f"must have at most 2 decimal places, got {value}")
    try:
        return cents(value)
    except InvalidOperation:
        # Too many digits to quantize in the default context (e.g. 1e30).
        raise ValueError(f"is far too large, got {value}") from None


def fmt(price: Decimal) -> str:
    """Format a price for people: `$12.50`."""
    return f"${cents(price):,.2f}"
