"""The hash chain over each event stream (tamper evidence for the log).

Every event carries `prev_hash`, the hash of the previous event of its stream (32 zero
bytes for the first), and its own `hash`:

    hash = sha256(prev_hash || stream_id (16 bytes) || seq (8 bytes, big-endian)
                  || event_id (16 bytes) || len(type) (4 bytes, big-endian) || type (UTF-8)
                  || canonical(data))

`canonical(data)` is the event's JSON parsed and re-encoded compactly with sorted keys, so
the hash survives PostgreSQL's jsonb normalisation (whitespace dropped, keys reordered).
Editing, deleting or reordering stored rows breaks the chain at the first changed link.

Numbers. jsonb stores every number as an exact `numeric`: it keeps the value and the
number of digits after the point, not the spelling. A float the writer encoded as `1e16`
reads back as `10000000000000000`, `1e308` as 309 digits, `-0.0` as `0.0`. Since the
writer hashes its own bytes and the audit hashes what it reads back, `canonical` must give
both spellings the same bytes, or any participant who puts such a float in an event (a
seller's self-reported `cost_usd`, say) makes the audit report tampering nobody did. So a
number is canonicalised by its exact value (`_number`):

- a literal with no digits after the point (an integer, or a float such as `1e16` or
  `1.5e16`, which jsonb turns into one) is its exact integer digits;
- any other zero is `0.0` (jsonb has no negative zero);
- any other literal whose value is exactly a float64's shortest form is that float, as
  the encoder writes it (`1.5`, `1e-07`: what the scheme always did);
- anything else (more digits than a float64 holds, beyond its range) is its exact
  decimal digits, trailing zeros dropped, so no change of value goes unseen.

Compatibility. Before numbers were canonicalised, `canonical` was a plain decode and
re-encode, which is exactly the above for every number this project's writers produce
except floats of 1e16 and beyond and negative zero: stored rows holding neither hash the
same under both, so logs already written verify unchanged. Rows that did hold a float of
1e16 or more were hashed with the float's shortest form (`1e16`), which jsonb no longer
shows; `legacy_link_hash` re-creates that reading for the audit to try when the current
one does not match. (A negative zero in such a row is lost for good: its minus sign is
not stored.)
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec

GENESIS = bytes(32)
HASH_SIZE = 32

# Beyond this many digits of exponent a number is written in scientific form rather than
# spelled out: jsonb cannot store it anyway (numeric holds 131072 digits before the point
# and 16383 after), and spelling out `1e999999999` would take a gigabyte.
_SPELL_OUT = 200_000


def _exact(value: Decimal) -> msgspec.Raw:
    """`value` (non-zero, finite) as exact JSON digits: fixed-point, trailing zeros
    after the point dropped; in scientific form if absurdly large or small."""
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite: JSON has no NaN or infinity
    if -_SPELL_OUT <= exponent <= _SPELL_OUT:
        text = format(value, "f")
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return msgspec.Raw(text.encode())
    coefficient = "".join(map(str, digits)).rstrip("0")
    exponent += len(digits) - len(coefficient)
    return msgspec.Raw(f"{'-' if sign else ''}{coefficient}e{exponent}".encode())


def _number(literal: str) -> Any:
    """The canonical form of one JSON number literal: the same for every spelling jsonb
    may give back for it (see the module's docstring)."""
    as_float = float(literal)
    # The usual case, decided without Decimal: a float's own shortest form with digits
    # after the point (`1.5`, `1e-07`; not `1e+16`, not a zero).
    if as_float and repr(as_float) == literal and "e+" not in literal:
        return as_float
    value = Decimal(literal)  # exact, whatever the literal
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent >= 0:  # no digits after the point: jsonb gives it back as an integer
        return 0 if not value else _exact(value)
    if not value:
        return 0.0
    if Decimal(repr(as_float)) == value:  # exactly a float64: written as the encoder does
        return as_float
    return _exact(value)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Integer literals are decoded by msgspec itself (exact Python ints, written back as the
# same digits, `-0` as `0`); float literals go through `_number`.
_decoder = msgspec.json.Decoder(float_hook=_number)
_encoder = msgspec.json.Encoder(order="sorted")
# The encoding before numbers were canonicalised (see `legacy_link_hash`).
_legacy_decoder = msgspec.json.Decoder()
# Floats the legacy writer spelled with an exponent that jsonb gives back as integers.
_LEGACY_FLOAT_FROM = 10**16


def _decode(data: bytes) -> Any:
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError:
        pass  # an integer literal too long for msgspec (thousands of digits): see below
    # The standard library hands every literal to a hook, so nothing is converted to a
    # Python int or float unless `_number` says so.
    try:
        return json.loads(data, parse_float=_number, parse_int=_number, parse_constant=_no_constant)
    except (ValueError, UnicodeError) as exc:
        raise msgspec.DecodeError(f"not valid JSON: {exc}") from exc


def canonical(data: bytes) -> bytes:
    """The JSON `data` in canonical form: compact, keys sorted, numbers by their exact
    value (so `1e16` and `10000000000000000` agree); equal JSON -> equal bytes."""
    return _encoder.encode(_decode(data))


def _link(
    prev_hash: bytes, stream_id: UUID, seq: int, event_id: UUID, type_: str, body: bytes
) -> bytes:
    tag = type_.encode("utf-8")
    # One buffer, one update: this runs for every appended event.
    return hashlib.sha256(
        b"".join(
            (
                prev_hash,
                stream_id.int.to_bytes(16, "big"),  # == stream_id.bytes, without the property
                seq.to_bytes(8, "big", signed=True),
                event_id.int.to_bytes(16, "big"),
                len(tag).to_bytes(4, "big"),
                tag,
                body,
            )
        )
    ).digest()


def link_hash(
    prev_hash: bytes, stream_id: UUID, seq: int, event_id: UUID, type_: str, data: bytes
) -> bytes:
    """The hash of one event given the hash of the event before it in its stream."""
    return _link(prev_hash, stream_id, seq, event_id, type_, canonical(data))


def _as_legacy_floats(value: Any) -> tuple[Any, bool]:
    # Integers of 1e16 and more that are the shortest form of a float back to that
    # float; and whether any was.
    if isinstance(value, bool):
        return value, False
    if isinstance(value, int):
        if abs(value) < _LEGACY_FLOAT_FROM:
            return value, False
        try:
            as_float = float(value)
        except OverflowError:
            return value, False
        # jsonb kept the exact value of the float's shortest form (1e23 -> 10**23, though
        # the float itself is 99999999999999991611392).
        if Decimal(repr(as_float)) == value:
            return as_float, True
        return value, False
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        changed = False
        for key, item in value.items():
            out[key], seen = _as_legacy_floats(item)
            changed = changed or seen
        return out, changed
    if isinstance(value, list):
        items = [_as_legacy_floats(item) for item in value]
        return [item for item, _ in items], any(seen for _, seen in items)
    return value, False


def legacy_link_hash(
    prev_hash: bytes, stream_id: UUID, seq: int, event_id: UUID, type_: str, data: bytes
) -> bytes | None:
    """How a writer from before numbers were canonicalised hashed an event whose stored
    (jsonb) `data` holds integers of 1e16 or more: as floats, which is what its encoder
    wrote. None when `data` holds no such integer (the legacy reading is `link_hash`'s)
    or is not JSON. Only for verifying old rows: it reads each such integer as a float,
    a change of spelling, never of value."""
    try:
        value, changed = _as_legacy_floats(_legacy_decoder.decode(data))
    except msgspec.DecodeError:
        return None
    if not changed:
        return None
    return _link(prev_hash, stream_id, seq, event_id, type_, _encoder.encode(value))
