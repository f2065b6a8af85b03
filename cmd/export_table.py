"""`mams export --format parquet|csv -o OUT_DIR`: the log as two tables for analysis.

The rooms are those of a negotiation (`NEGOTIATION_ID`), a session (`--session`), an
experiment (`--experiment`) or, with none of these (or `--all`), every room the read models
list. OUT_DIR (created if missing) gets `rooms.<fmt>` and `messages.<fmt>`, each written
under a `.partial` name and renamed once complete. Parquet is written with pyarrow; CSV
with the standard library (a header line; empty for null; lists joined with `;`). Both
load in pandas (`read_parquet`, `read_csv`) and polars.

**rooms**: one row per negotiation, oldest first.

- `negotiation_id`, `session_id`: ids (text).
- `experiment_id`, `arm`, `scenario`: the experiment arm the room's session belongs to
  (`experiment_arms`, migration 0013); null for a room of no experiment.
- `item_name`, `seed`, `status` (completed, aborted, running), `outcome` (deal, no_deal,
  max_rounds, open), `rounds` (played), `max_rounds` (the room's limit).
- `buyer_model`, `buyer_strategy`: the buyer's brain label and strategy (null in logs from
  before strategies).
- `sellers` (how many); `seller_models`, `seller_strategies`, `seller_styles`: one entry
  per seller in the room's order (parquet: lists; CSV: `;`-joined).
- `buyer_min_price`, `buyer_max_price`: the buyer's private range per unit.
- `deal_seller` (handle), `unit_price`, `quantity`, `total`, `first_ask` (the deal
  seller's first offer), `saving_vs_first_ask_pct`, `saving_vs_max_pct`: the deal, null
  without one.
- `zone_floor`, `zone_ceiling`, `zone_empty`; `seller_share`, `buyer_share` (0..1, for a
  deal in a zone with a width); `took_cheapest`: as `domain.analysis` measures them.
- `messages`, `buyer_messages`, `seller_messages`; `flags` and `flags_<kind>` for
  price_hallucination, leakage, constraint, coherence (the checks run now and any stored);
  `guardrails` (trips of every agent).
- `llm_calls`, `input_tokens`, `output_tokens`, `cost_usd` (null when a call's is unknown).
- `started_at`, `ended_at`: UTC times from the read model.

**messages**: one row per message, room by room in the rooms' order, in log order:
negotiation_id, seq (the event's place in the room's stream), round, sender (agent id),
recipients (list / `;`-joined), text, offer_unit_price, offer_quantity (a seller's offer,
or the buyer's counter or accepted price), sent_at (UTC).

Money is a decimal with two places (parquet decimal128(14, 2); CSV as written), times are
UTC timestamps (CSV: ISO 8601).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol
from uuid import UUID

from rich.console import Console

from mams.audit import resolve_negotiation
from mams.domain.errors import ConfigError
from mams.infra import servers
from mams.storage.tables import (
    MessageRow,
    Room,
    has_experiment,
    message_rows,
    room_refs,
    rooms_of,
)

Kind = Literal["text", "int", "float", "money", "bool", "time", "list"]
CHUNK = 500  # rooms read and written at a time

ROOM_COLUMNS: tuple[tuple[str, Kind], ...] = (
    ("negotiation_id", "text"),
    ("session_id", "text"),
    ("experiment_id", "text"),
    ("arm", "text"),
    ("scenario", "text"),
    ("item_name", "text"),
    ("seed", "int"),
    ("status", "text"),
    ("outcome", "text"),
    ("rounds", "int"),
    ("max_rounds", "int"),
    ("buyer_model", "text"),
    ("buyer_strategy", "text"),
    ("sellers", "int"),
    ("seller_models", "list"),
    ("seller_strategies", "list"),
    ("seller_styles", "list"),
    ("buyer_min_price", "money"),
    ("buyer_max_price", "money"),
    ("deal_seller", "text"),
    ("unit_price", "money"),
    ("quantity", "int"),
    ("total", "money"),
    ("first_ask", "money"),
    ("saving_vs_first_ask_pct", "float"),
    ("saving_vs_max_pct", "float"),
    ("zone_floor", "money"),
    ("zone_ceiling", "money"),
    ("zone_empty", "bool"),
    ("seller_share", "float"),
    ("buyer_share", "float"),
    ("took_cheapest", "bool"),
    ("messages", "int"),
    ("buyer_messages", "int"),
    ("seller_messages", "int"),
    ("flags", "int"),
    ("flags_price_hallucination", "int"),
    ("flags_leakage", "int"),
    ("flags_constraint", "int"),
    ("flags_coherence", "int"),
    ("guardrails", "int"),
    ("llm_calls", "int"),
    ("input_tokens", "int"),
    ("output_tokens", "int"),
    ("cost_usd", "float"),
    ("started_at", "time"),
    ("ended_at", "time"),
)
MESSAGE_COLUMNS: tuple[tuple[str, Kind], ...] = (
    ("negotiation_id", "text"),
    ("seq", "int"),
    ("round", "int"),
    ("sender", "text"),
    ("recipients", "list"),
    ("text", "text"),
    ("offer_unit_price", "money"),
    ("offer_quantity", "int"),
    ("sent_at", "time"),
)

Row = dict[str, Any]


class ExportUsageError(ConfigError):
    """Bad command-line input for a table export; the CLI exits with status 2."""


def _strategy(terms: object) -> str | None:
    # Strategies arrived with the experiments (issue 20): older logs' terms have none.
    value = getattr(terms, "strategy", None)
    return value if isinstance(value, str) else None


def room_row(room: Room) -> Row:
    """A room as a row of the rooms table (see the module docstring)."""
    a, st, ref = room.analysis, room.started, room.ref
    deal = a.deal
    return {
        "negotiation_id": str(a.negotiation_id),
        "session_id": str(a.session_id),
        "experiment_id": str(ref.experiment_id) if ref.experiment_id else None,
        "arm": ref.arm,
        "scenario": ref.scenario,
        "item_name": a.item_name,
        "seed": st.seed,
        "status": a.status,
        "outcome": a.outcome,
        "rounds": a.rounds,
        "max_rounds": a.max_rounds,
        "buyer_model": st.buyer.brain,
        "buyer_strategy": _strategy(st.buyer),
        "sellers": len(st.sellers),
        "seller_models": [s.brain for s in st.sellers],
        "seller_strategies": [_strategy(s) or "" for s in st.sellers],
        "seller_styles": [s.style for s in st.sellers],
        "buyer_min_price": a.buyer_min_price,
        "buyer_max_price": a.buyer_max_price,
        "deal_seller": deal.handle if deal else None,
        "unit_price": deal.unit_price if deal else None,
        "quantity": deal.quantity if deal else None,
        "total": deal.total if deal else None,
        "first_ask": deal.first_ask if deal else None,
        "saving_vs_first_ask_pct": deal.saving_vs_first_ask_pct if deal else None,
        "saving_vs_max_pct": deal.saving_vs_max_pct if deal else None,
        "zone_floor": a.surplus.floor,
        "zone_ceiling": a.surplus.ceiling,
        "zone_empty": a.surplus.empty,
        "seller_share": a.surplus.seller_share,
        "buyer_share": a.surplus.buyer_share,
        "took_cheapest": a.efficiency.took_cheapest if a.efficiency else None,
        "messages": a.messages,
        "buyer_messages": a.buyer_messages,
        "seller_messages": a.seller_messages,
        "flags": len(a.flags),
        **{f"flags_{k}": n for k, n in a.flags_by_kind.items()},
        "guardrails": sum(sum(g.guardrails.values()) for g in a.agents),
        "llm_calls": a.llm.calls,
        "input_tokens": a.llm.input_tokens,
        "output_tokens": a.llm.output_tokens,
        "cost_usd": a.llm.cost_usd,
        "started_at": ref.started_at,
        "ended_at": ref.ended_at,
    }


def message_row(m: MessageRow) -> Row:
    """A message as a row of the messages table."""
    return {
        "negotiation_id": str(m.negotiation_id),
        "seq": m.seq,
        "round": m.round,
        "sender": m.sender,
        "recipients": list(m.recipients),
        "text": m.text,
        "offer_unit_price": m.offer_unit_price,
        "offer_quantity": m.offer_quantity,
        "sent_at": m.sent_at,
    }


class TableWriter(Protocol):
    """Rows in, a file out (`close` finishes it)."""

    def write(self, rows: Sequence[Row]) -> None: ...

    def close(self) -> None: ...


class CsvWriter:
    """A CSV table: a header, then one line per row; null empty, lists `;`-joined."""

    def __init__(self, path: Path, columns: Sequence[tuple[str, Kind]]) -> None:
        self.columns = columns
        self.file = path.open("w", encoding="utf-8", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow([name for name, _ in columns])

    def write(self, rows: Sequence[Row]) -> None:
        self.writer.writerows([[_cell(row[n], kind) for n, kind in self.columns] for row in rows])

    def close(self) -> None:
        self.file.close()


def _cell(value: object, kind: Kind) -> object:
    if value is None:
        return ""
    if kind == "list" and isinstance(value, list):
        return ";".join(str(v) for v in value)
    if kind == "time" and isinstance(value, datetime):
        return value.isoformat()
    if kind == "bool":
        return "true" if value else "false"
    return value


class ParquetWriter:
    """A parquet table with the columns' types (pyarrow, imported when used)."""

    def __init__(self, path: Path, columns: Sequence[tuple[str, Kind]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {
            "text": pa.string(),
            "int": pa.int64(),
            "float": pa.float64(),
            "money": pa.decimal128(14, 2),
            "bool": pa.bool_(),
            "time": pa.timestamp("us", tz="UTC"),
            "list": pa.list_(pa.string()),
        }
        self.pa = pa
        self.schema = pa.schema([(name, types[kind]) for name, kind in columns])
        self.writer = pq.ParquetWriter(str(path), self.schema)
        self.rows = 0

    def write(self, rows: Sequence[Row]) -> None:
        if rows:
            self.writer.write_table(self.pa.Table.from_pylist(list(rows), schema=self.schema))
            self.rows += len(rows)

    def close(self) -> None:
        if not self.rows:  # a table with its columns and no rows
            self.writer.write_table(self.schema.empty_table())
        self.writer.close()


@contextlib.contextmanager
def _table(
    out_dir: Path, name: str, fmt: str, columns: Sequence[tuple[str, Kind]]
) -> Iterator[TableWriter]:
    path = out_dir / f"{name}.{fmt}"
    partial = path.with_name(path.name + ".partial")
    writer: TableWriter = (
        ParquetWriter(partial, columns) if fmt == "parquet" else CsvWriter(partial, columns)
    )
    try:
        yield writer
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        with contextlib.suppress(OSError):
            partial.unlink()  # a failed export leaves no file that looks whole
        raise
    writer.close()
    partial.replace(path)


def _out_dir(path: Path) -> Path:
    """The output directory, created if missing."""
    if path.exists() and not path.is_dir():
        raise ExportUsageError(f"-o: {path} is a file; give a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportUsageError(f"cannot create {path}: {exc.strerror}") from None
    return path


def _uuid(flag: str, text: str | None) -> UUID | None:
    if text is None:
        return None
    try:
        return UUID(text)
    except ValueError:
        raise ExportUsageError(f"{flag}: {text!r} is not an id") from None


async def export_tables(args: argparse.Namespace, out: Console) -> int:
    """Write rooms.<fmt> and messages.<fmt> into the output directory."""
    fmt: str = args.format
    if not args.output:
        raise ExportUsageError(f"--format {fmt} writes two files: give -o OUT_DIR")
    if sum(bool(x) for x in (args.negotiation_id, args.session, args.experiment, args.all)) > 1:
        raise ExportUsageError(
            "give at most one of a negotiation id, --session, --experiment or --all"
        )
    out_dir = _out_dir(Path(args.output))
    session = _uuid("--session", args.session)
    experiment = _uuid("--experiment", args.experiment)
    note = Console(stderr=True, highlight=False)
    rooms = messages = 0
    async with servers(need_bus=False) as srv:
        async with srv.pool.acquire() as conn:
            negotiation = (
                await resolve_negotiation(conn, args.negotiation_id)
                if args.negotiation_id
                else None
            )
            if experiment is not None and not await has_experiment(conn, experiment):
                raise ExportUsageError(f"no experiment {experiment} in this log")
            refs = await room_refs(
                conn, negotiation=negotiation, session=session, experiment=experiment
            )
        if session is not None and not refs:
            raise ExportUsageError(f"no negotiations of session {session}; `mams sessions`")
        with (
            _table(out_dir, "rooms", fmt, ROOM_COLUMNS) as room_table,
            _table(out_dir, "messages", fmt, MESSAGE_COLUMNS) as message_table,
        ):
            for start in range(0, len(refs), CHUNK):
                chunk = refs[start : start + CHUNK]
                read = await rooms_of(srv.store, chunk)
                room_table.write([room_row(r) for r in read])
                async with srv.pool.acquire() as conn:
                    found = await message_rows(conn, [r.negotiation_id for r in chunk])
                message_table.write([message_row(m) for m in found])
                rooms += len(read)
                messages += len(found)
    note.print(
        f"[dim]exported {rooms:,} rooms and {messages:,} messages to "
        f"{out_dir / ('rooms.' + fmt)} and {out_dir / ('messages.' + fmt)}[/dim]"
    )
    return 0
