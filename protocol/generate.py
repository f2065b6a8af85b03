"""Generate protocol/schema.json: the JSON Schema of every MAMS bus message.

    python protocol/generate.py           # rewrite protocol/schema.json
    python protocol/generate.py --check   # exit 1 if the checked-in file is stale

One document (JSON Schema 2020-12) with every type under ``$defs``, built by msgspec from
the wire types themselves (``mams.domain.messages`` and ``mams.domain.events``), so it
cannot drift from what the code encodes. Four entry points:

- ``#/$defs/InboxMessage``: what the broker sends to ``<market>.agent.<id>.inbox``;
- ``#/$defs/OutboxMessage``: what an agent sends to ``<market>.broker.<id>.outbox``;
- ``#/$defs/CommittedEvent``: what observers receive on ``<market>.events.<hex>``;
- ``#/$defs/Event``: one logged event (the ``event`` field of a CommittedEvent).

Output is deterministic: sorted keys, two-space indent, trailing newline.
tests/protocol/test_schema_sync.py fails when the file is stale.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from mams.domain.events import Event
from mams.domain.messages import CommittedEvent, InboxMessage, OutboxMessage

SCHEMA_PATH = Path(__file__).resolve().parent / "schema.json"
SCHEMA_ID = "urn:mams:bus-protocol:1"
ENTRY_POINTS = ("InboxMessage", "OutboxMessage", "CommittedEvent", "Event")


def build_schema() -> dict[str, Any]:
    """The whole protocol as one JSON Schema document (a plain dict)."""
    roots, components = msgspec.json.schema_components(
        [InboxMessage, OutboxMessage, CommittedEvent, Event], ref_template="#/$defs/{name}"
    )
    defs: dict[str, Any] = dict(components)
    inbox, outbox, committed, event = roots
    # Unions have no name of their own in msgspec; give them one here.
    defs["InboxMessage"] = {
        "title": "InboxMessage",
        "description": "broker -> one agent, on <market>.agent.<agent_id>.inbox; "
        "discriminated by the `type` field.",
        **inbox,
    }
    defs["OutboxMessage"] = {
        "title": "OutboxMessage",
        "description": "one agent -> broker, on <market>.broker.<agent_id>.outbox; "
        "discriminated by the `type` field. The sender is the subject, never a field.",
        **outbox,
    }
    assert committed == {"$ref": "#/$defs/CommittedEvent"}, committed
    defs["Event"] = {
        "title": "Event",
        "description": "One logged event; discriminated by the `type` field.",
        **event,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "MAMS bus protocol",
        "description": "Every message on the MAMS bus. JSON; `type` names the message; "
        'decimals are strings (format decimal, e.g. "12.50"); UUIDs are strings. '
        "Validate an inbox message against #/$defs/InboxMessage, an outbox message "
        "against #/$defs/OutboxMessage, an observer's message against "
        "#/$defs/CommittedEvent. See PROTOCOL.md.",
        "anyOf": [{"$ref": f"#/$defs/{name}"} for name in ENTRY_POINTS[:3]],
        "$defs": defs,
    }


def normalise(node: Any) -> Any:
    """``node`` with every ``description`` cleaned as ``inspect.cleandoc`` does.

    msgspec copies docstrings into descriptions, and whether it strips their common
    indentation changed between releases (0.23 does, 0.18 did not): cleaning them here
    makes the document the same whichever msgspec is installed.
    """
    if isinstance(node, dict):
        return {
            key: inspect.cleandoc(value)
            if key == "description" and isinstance(value, str)
            else normalise(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [normalise(value) for value in node]
    return node


def render(schema: dict[str, Any]) -> str:
    """The document as the checked-in text: descriptions normalised, sorted keys, indent 2,
    trailing newline."""
    return json.dumps(normalise(schema), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, verify) protocol/schema.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--out", type=Path, default=SCHEMA_PATH)
    args = parser.parse_args(argv)
    text = render(build_schema())
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run python protocol/generate.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
