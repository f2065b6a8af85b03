"""protocol/schema.json is what the code encodes, and real traffic conforms to it.

- Regenerating the schema gives the checked-in file byte for byte (a changed message type
  without `python protocol/generate.py` fails here).
- Every message of a real negotiation's traffic (over the real NATS server: hellos,
  welcome, a refused open_rooms, open_rooms, every turn and view, a rejoin's catch-up,
  the closing, and every committed event) validates against the schema.

The `jsonschema` package is not installed in this venv (and no dependency may be added),
so validation uses `validate` below: a small validator for exactly the keywords msgspec
emits ($ref, anyOf + discriminator, type, properties, required, enum, items, format
uuid/decimal). It refuses any keyword it does not know, so it can never pass a schema
by ignoring part of it. Tags and required fields are also checked against the types.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, get_args
from uuid import UUID

import msgspec
import pytest

from mams.bus.nats import NatsBus
from mams.domain.events import Event
from mams.domain.messages import InboxMessage, OutboxMessage

REPO = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    """A module of protocol/ by path (the repo root is not on sys.path under importlib
    mode, and protocol/ is not part of the installed package)."""
    key = f"mams_protocol_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, REPO / "protocol" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


generate = _load("generate")
traffic = _load("traffic")

SCHEMA: dict[str, Any] = json.loads((REPO / "protocol" / "schema.json").read_text())

# -- a validator for the JSON Schema subset msgspec emits ------------------------------------
_ANNOTATIONS = {"title", "description", "default", "$schema", "$id", "$defs"}
_DECIMAL = re.compile(r"-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def _resolve(ref: str) -> dict[str, Any]:
    assert ref.startswith("#/$defs/"), ref
    found: dict[str, Any] = SCHEMA["$defs"][ref.removeprefix("#/$defs/")]
    return found


def _is_type(value: Any, kind: str) -> bool:
    match kind:
        case "object":
            return isinstance(value, dict)
        case "array":
            return isinstance(value, list)
        case "string":
            return isinstance(value, str)
        case "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        case "number":
            return isinstance(value, int | float) and not isinstance(value, bool)
        case "boolean":
            return isinstance(value, bool)
        case "null":
            return value is None
    raise AssertionError(f"unknown type keyword {kind!r}")


def errors(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Every way `value` breaks `schema` (empty if it conforms)."""
    unknown = (
        set(schema)
        - _ANNOTATIONS
        - {
            "$ref",
            "anyOf",
            "discriminator",
            "type",
            "properties",
            "required",
            "enum",
            "items",
            "format",
        }
    )
    assert not unknown, f"validator does not know keyword(s) {unknown} at {path}"
    out: list[str] = []
    if "$ref" in schema:
        out += errors(value, _resolve(schema["$ref"]), path)
    if "anyOf" in schema:
        disc = schema.get("discriminator")
        if disc is not None and isinstance(value, dict):
            tag = value.get(disc["propertyName"])
            target = disc["mapping"].get(tag)
            if target is None:
                out.append(f"{path}: unknown {disc['propertyName']} {tag!r}")
            else:
                out += errors(value, {"$ref": target}, path)
        elif not any(not errors(value, option, path) for option in schema["anyOf"]):
            out.append(f"{path}: matches none of anyOf")
    if "type" in schema and not _is_type(value, schema["type"]):
        return [*out, f"{path}: expected {schema['type']}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{path}: {value!r} not in {schema['enum']}")
    if "format" in schema and isinstance(value, str):
        fmt = schema["format"]
        if fmt == "uuid":
            try:
                if str(UUID(value)) != value:
                    out.append(f"{path}: uuid not in canonical form: {value!r}")
            except ValueError:
                out.append(f"{path}: not a uuid: {value!r}")
        elif fmt == "decimal":
            if _DECIMAL.fullmatch(value) is None:
                out.append(f"{path}: not a decimal string: {value!r}")
        else:
            raise AssertionError(f"unknown format {fmt!r}")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                out.append(f"{path}: missing required {name!r}")
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                out += errors(value[name], sub, f"{path}.{name}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += errors(item, schema["items"], f"{path}[{i}]")
    return out


def entry(name: str) -> dict[str, Any]:
    return {"$ref": f"#/$defs/{name}"}


# -- the file is in sync -----------------------------------------------------------------------
def test_checked_in_schema_is_regenerated() -> None:
    fresh = generate.render(generate.build_schema())
    checked_in = (REPO / "protocol" / "schema.json").read_text(encoding="utf-8")
    assert fresh == checked_in, "protocol/schema.json is stale: run python protocol/generate.py"


def test_generation_is_deterministic() -> None:
    assert generate.render(generate.build_schema()) == generate.render(generate.build_schema())
    assert generate.render(generate.build_schema()).endswith("}\n")


def _tag(cls: type) -> str:
    tag = cls.__struct_config__.tag  # type: ignore[attr-defined]
    assert isinstance(tag, str)
    return tag


@pytest.mark.parametrize(
    ("union", "name"),
    [(InboxMessage, "InboxMessage"), (OutboxMessage, "OutboxMessage"), (Event, "Event")],
)
def test_every_tag_and_required_field_is_in_the_schema(union: Any, name: str) -> None:
    mapping = SCHEMA["$defs"][name]["discriminator"]["mapping"]
    classes = get_args(union)
    assert set(mapping) == {_tag(c) for c in classes}
    for cls in classes:
        definition = _resolve(mapping[_tag(cls)])
        fields = msgspec.structs.fields(cls)
        required = {f.encode_name for f in fields if f.required}
        assert set(definition["required"]) == {"type", *required}, cls.__name__
        assert set(definition["properties"]) == {"type", *(f.encode_name for f in fields)}
        assert definition["properties"]["type"] == {"enum": [_tag(cls)]}


def test_validator_rejects_what_it_should() -> None:
    ok = {"type": "hello", "role": "seller"}
    assert errors(ok, entry("OutboxMessage")) == []
    assert errors({"type": "hello"}, entry("OutboxMessage"))  # role missing
    assert errors({"type": "hello", "role": "admin"}, entry("OutboxMessage"))
    assert errors({"type": "helo", "role": "seller"}, entry("OutboxMessage"))
    offer = {"unit_price": 12.5, "quantity": 1}  # a number where a decimal string belongs
    assert errors(offer, entry("Offer"))
    assert errors({"unit_price": "12.50", "quantity": 1}, entry("Offer")) == []
    assert errors({"type": "rejected", "request_id": "nope", "reason": ""}, entry("InboxMessage"))


# -- real traffic conforms -------------------------------------------------------------------
async def test_every_message_of_a_real_negotiation_validates(nats_url: str) -> None:
    async def connect(name: str) -> NatsBus:
        return await NatsBus.connect(nats_url, name=f"schema-{name}")

    captured = await traffic.capture(connect)
    by_kind = {"inbox": "InboxMessage", "outbox": "OutboxMessage", "events": "CommittedEvent"}
    problems = [
        f"{c.subject}: {p}" for c in captured for p in errors(c.json, entry(by_kind[c.kind]))
    ]
    assert problems == []
    tags = {(c.kind, c.type) for c in captured}
    # The capture covers every inbox and outbox message type (the test is not vacuous).
    inbox = {("inbox", _tag(c)) for c in get_args(InboxMessage)}
    outbox = {("outbox", _tag(c)) for c in get_args(OutboxMessage)}
    assert inbox <= tags, inbox - tags
    assert outbox <= tags, outbox - tags
    # The rejoining seller was welcomed with its open room.
    welcomes = [c.json for c in captured if c.kind == "inbox" and c.type == "welcome"]
    assert any(w["rooms"] for w in welcomes)
    assert all(isinstance(c.json, dict) for c in captured)


def test_descriptions_do_not_depend_on_how_msgspec_cleans_docstrings() -> None:
    # msgspec 0.18 kept a docstring's indentation, 0.23 strips it: both must render alike.
    kept = {"description": "First line.\n\n    `resolution`: repaired\n    or fallback."}
    stripped = {"description": "First line.\n\n`resolution`: repaired\nor fallback."}
    assert generate.render(kept) == generate.render(stripped)
    nested = {"$defs": {"A": {"properties": {"x": kept}}}, "anyOf": [kept]}
    assert "    `resolution`" not in generate.render(nested)
