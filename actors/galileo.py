"""Galileo: every negotiation as one trace, built from the stored log.

When `GALILEO_API_KEY` is set, `export_negotiation(store, nid)` sends a negotiation to
Galileo through the `galileo` SDK's `GalileoLogger` (batch mode). Because it reads the
log (the negotiation's stream and its observations stream), it works the same live at
negotiation end (the monitor calls it) and on demand for any stored negotiation.

Shape of what is sent:
- one trace per negotiation, `external_id` the negotiation id, input the opening (item,
  quantity, who is in the room), output the outcome sentence; metadata: ids, item,
  every agent's brain, outcome (type, rounds, seller, price), the grounded quality
  flags (`flags`: count, `flags.<kind>`: count per kind, `flag.<i>`: one finding each),
  and the analyst review if one was recorded; tags `mams`, `outcome:<type>`, the brains;
- an agent span per agent turn (buyer said / seller replied / deal / walk away), input
  what that agent had been told since its last turn, output what it said (with its
  price), metadata its role, brain, style, round, action, private reasoning, guardrail
  interventions and the flags about that turn;
- inside it, an LLM span per `llm.called` behind the turn: model, the prompt messages and
  the answer (the forced tool call), token counts, latency, cost and retries; the
  analyst's call is an LLM span of its own at the end.

Configuration: GALILEO_API_KEY (required to export), GALILEO_PROJECT (default "mams"),
GALILEO_LOG_STREAM (default "negotiations"), GALILEO_CONSOLE_URL for a self-hosted
Galileo. The SDK itself reads its key and URL from the process environment; the `env`
argument decides only whether to export and where (project, log stream). Exporting a
negotiation twice sends two traces with the same `external_id` (the negotiation id).

`galileo` is an optional extra (`pip install 'mams[galileo]'`): it brings a dozen
packages and takes seconds to import, so it is imported only when an export runs.

Offline: `ingestion_hook=` is the SDK's own hook (`GalileoLogger(ingestion_hook=...)`),
called at flush with the `TracesIngestRequest` the SDK would send; given one, no key and
no network are needed (tests use it). The trace is built in a pure step (`trace_of`,
returning plain `TraceSpec` data) and only then replayed into the SDK (`send`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import anyio.to_thread
import structlog

from mams.domain.errors import ConfigError, MamsError
from mams.domain.events import (
    AnalystReviewed,
    BuyerSaid,
    BuyerWalkedAway,
    DealClosed,
    Event,
    GuardrailTripped,
    LLMCall,
    LLMCalled,
    NegotiationEnded,
    NegotiationStarted,
    Observation,
    QualityFlagged,
    ReasoningRecorded,
    SellerReplied,
    decode_event,
)
from mams.domain.money import fmt
from mams.domain.transcript import describe_outcome
from mams.storage.eventstore import EventStore
from mams.storage.model import StoredEvent
from mams.storage.observations import load_observations

__all__ = [
    "AgentSpanSpec",
    "GalileoExportError",
    "LLMSpanSpec",
    "TraceSpec",
    "export_negotiation",
    "galileo_enabled",
    "send",
    "trace_of",
]

log = structlog.get_logger("mams.galileo")

IngestionHook = Callable[[Any], None]
_MAX_FLAGS = 50  # findings listed one by one in metadata; counts are always complete


class GalileoExportError(MamsError):
    """Galileo refused or could not take the trace; the message says what failed."""


@dataclass(frozen=True)
class LLMSpanSpec:
    """One model call, as an LLM span."""

    name: str
    model: str
    input: list[dict[str, Any]]
    output: dict[str, Any]
    created_at: datetime
    duration_ns: int
    num_input_tokens: int
    num_output_tokens: int
    metadata: dict[str, str | int | float | bool | None]


@dataclass
class AgentSpanSpec:
    """One agent turn, as an agent span holding the model calls behind it."""

    name: str
    input: str
    output: str
    created_at: datetime
    metadata: dict[str, str | int | float | bool | None]
    llm: list[LLMSpanSpec] = field(default_factory=list)


@dataclass
class TraceSpec:
    """One negotiation, as a trace."""

    name: str
    input: str
    output: str
    external_id: str
    created_at: datetime
    duration_ns: int
    metadata: dict[str, str | int | float | bool | None]
    tags: list[str]
    spans: list[AgentSpanSpec | LLMSpanSpec]


def galileo_enabled(env: Mapping[str, str] = os.environ) -> bool:
    """Whether negotiations are exported: GALILEO_API_KEY is set and not empty."""
    return bool(env.get("GALILEO_API_KEY", "").strip())


# -- the pure step: log -> TraceSpec -------------------------------------------------------


def _text_of(content: Any) -> str:
    """A message's content as text (Anthropic sends lists of blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_text_of(b.get("text", "")) for b in content if isinstance(b, dict))
    return json.dumps(content)


def _prompt(call: LLMCall) -> tuple[list[dict[str, Any]], str]:
    """The prompt messages of a recorded call, and the name of the tool it forced."""
    try:
        body = json.loads(call.request)
    except ValueError:
        return [{"role": "user", "content": call.request}], ""
    messages: list[dict[str, Any]] = []
    if "system" in body:  # Anthropic keeps the system prompt apart
        messages.append({"role": "system", "content": _text_of(body["system"])})
    for m in body.get("messages", []):
        messages.append({"role": m.get("role", "user"), "content": _text_of(m.get("content"))})
    tools = body.get("tools") or [{}]
    tool = tools[0].get("name") or tools[0].get("function", {}).get("name", "")
    return messages, str(tool)


def _answer(call: LLMCall, tool: str) -> dict[str, Any]:
    if call.error:
        return {"role": "assistant", "content": f"(call failed: {call.error})"}
    answer: dict[str, Any] = {"role": "assistant", "content": call.text}
    if call.tool_input:
        answer["tool_calls"] = [
            {"id": call.prompt_digest, "function": {"name": tool, "arguments": call.tool_input}}
        ]
    return answer


def _llm_span(call: LLMCall, name: str, at: datetime) -> LLMSpanSpec:
    messages, tool = _prompt(call)
    return LLMSpanSpec(
        name=name,
        model=call.model,
        input=messages,
        output=_answer(call, tool),
        created_at=at - timedelta(milliseconds=call.latency_ms),
        duration_ns=int(call.latency_ms * 1_000_000),
        num_input_tokens=call.input_tokens,
        num_output_tokens=call.output_tokens,
        metadata={
            "provider": call.provider,
            "purpose": call.purpose,
            "cost_usd": call.cost_usd,
            "retries": call.retries,
            "cache_read_tokens": call.cache_read_tokens,
            "cache_write_tokens": call.cache_write_tokens,
            "error": call.error or None,
        },
    )


def _flag_line(f: QualityFlagged) -> str:
    return f"[{f.severity}] {f.kind} {f.rule} {f.agent} r{f.round}: {f.detail}"


def _flag_metadata(flags: Sequence[QualityFlagged]) -> dict[str, str | int | float | bool | None]:
    meta: dict[str, str | int | float | bool | None] = {"flags": len(flags)}
    for f in flags:
        key = f"flags.{f.kind}"
        meta[key] = int(meta.get(key) or 0) + 1
    for i, f in enumerate(flags[:_MAX_FLAGS]):
        meta[f"flag.{i}"] = _flag_line(f)
    return meta


class _Builder:
    """Walks the log once, grouping each agent's private records with its next action."""

    def __init__(self, started: NegotiationStarted, flags: Sequence[QualityFlagged]) -> None:
        self.started = started
        self.flags = flags
        self.names = {s.agent_id: s.handle for s in started.sellers}
        self.names[started.buyer.agent_id] = started.buyer.handle
        self.sellers = {s.agent_id: s for s in started.sellers}
        self.spans: list[AgentSpanSpec | LLMSpanSpec] = []
        self.pending: dict[str, list[tuple[Event, datetime]]] = {}
        self.inbox: dict[str, list[str]] = {}

    def private(self, agent: str, event: Event, at: datetime) -> None:
        self.pending.setdefault(agent, []).append((event, at))

    def tell(self, agents: Sequence[str], line: str) -> None:
        for agent in agents:
            self.inbox.setdefault(agent, []).append(line)

    def turn(self, agent: str, round_: int, action: str, said: str, at: datetime) -> None:
        """Close `agent`'s turn: an agent span with its calls, reasoning and guardrails."""
        buyer = agent == self.started.buyer.agent_id
        seller = self.sellers.get(agent)
        meta: dict[str, str | int | float | bool | None] = {
            "agent": agent,
            "handle": self.names.get(agent, agent),
            "role": "buyer" if buyer else "seller",
            "brain": self.started.buyer.brain if buyer else (seller.brain if seller else ""),
            "style": seller.style if seller else None,
            "round": round_,
            "action": action,
        }
        span = AgentSpanSpec(
            name=f"{self.names.get(agent, agent)} r{round_} {action}",
            input="\n".join(self.inbox.pop(agent, [])) or "(no new messages)",
            output=said,
            created_at=at,
            metadata=meta,
        )
        guardrails: list[str] = []
        for event, when in self.pending.pop(agent, []):
            if isinstance(event, LLMCalled):
                span.llm.append(_llm_span(event.call, f"{span.name} {event.call.purpose}", when))
            elif isinstance(event, ReasoningRecorded):
                meta["reasoning"] = event.text
            elif isinstance(event, GuardrailTripped):
                guardrails.append(f"{event.rule} ({event.resolution}): {event.detail}")
        if guardrails:
            meta["guardrails"] = "; ".join(guardrails)
        mine = [f for f in self.flags if f.agent == agent and f.round == round_]
        if mine:
            meta.update(_flag_metadata(mine))
        self.spans.append(span)

    def feed(self, event: Event, at: datetime) -> None:
        buyer = self.started.buyer.agent_id
        match event:
            case LLMCalled(agent=a) | ReasoningRecorded(agent=a) | GuardrailTripped(agent=a):
                self.private(a, event, at)
            case BuyerSaid(round=r, to=to, text=text, counter_price=price):
                counter = f" [counter {fmt(price)}]" if price is not None else ""
                self.turn(buyer, r, "counter" if price is not None else "say", text + counter, at)
                heard = f"r{r} {self.names[buyer]}: {text}{counter}"
                self.tell(to or tuple(self.sellers), heard)
            case SellerReplied(round=r, seller=s, text=text, offer=offer):
                priced = f" [offer {fmt(offer.unit_price)} x {offer.quantity}]" if offer else ""
                self.turn(s, r, "offer" if offer else "reply", text + priced, at)
                self.tell((buyer,), f"r{r} {self.names.get(s, s)}: {text}{priced}")
            case DealClosed(round=r, seller=s, unit_price=p, quantity=q, text=text):
                accepted = f"{text} [accept {self.names.get(s, s)} at {fmt(p)} x {q}]"
                self.turn(buyer, r, "accept", accepted.strip(), at)
            case BuyerWalkedAway(round=r, text=text):
                self.turn(buyer, r, "walk_away", text, at)
            case _:
                pass

    def leftovers(self) -> None:
        """Calls with no action after them (a turn that timed out): a span of their own."""
        for agent, records in list(self.pending.items()):
            if records:
                rounds = [getattr(e, "round", 0) for e, _ in records]
                self.turn(agent, max(rounds), "no_action", "(no action committed)", records[-1][1])


def _opening(started: NegotiationStarted) -> str:
    sellers = ", ".join(f"{s.handle} ({s.brain}, {s.style})" for s in started.sellers)
    return (
        f"{started.buyer.handle} ({started.buyer.brain}) wants {started.buyer.quantity} x "
        f"{started.item_name!r}; sellers: {sellers}; at most {started.max_rounds} rounds"
    )


def trace_of(rows: Sequence[StoredEvent], observations: Sequence[Observation]) -> TraceSpec:
    """The trace of one negotiation's stored rows and its observations (pure)."""
    events = [(decode_event(row.data), row.recorded_at) for row in rows]
    if not events or not isinstance(events[0][0], NegotiationStarted):
        raise ValueError("a negotiation's log starts with negotiation.started")
    started = events[0][0]
    flags = [o for o in observations if isinstance(o, QualityFlagged)]
    reviews = [o for o in observations if isinstance(o, AnalystReviewed)]
    builder = _Builder(started, flags)
    for event, at in events:
        builder.feed(event, at)
    builder.leftovers()
    meta: dict[str, str | int | float | bool | None] = {
        "negotiation_id": str(started.negotiation_id),
        "session_id": str(started.session_id),
        "item": started.item_name,
        "quantity": started.buyer.quantity,
        "buyer_brain": started.buyer.brain,
        "seller_brains": ",".join(sorted({s.brain for s in started.sellers})),
        "seller_styles": ",".join(sorted({s.style for s in started.sellers})),
        "status": "open",
    }
    output = "(not finished)"
    ended = [e for e, _ in events if isinstance(e, NegotiationEnded)]
    if ended:
        o = ended[-1].outcome
        output = describe_outcome(o, lambda a: builder.names.get(a, a))
        meta |= {
            "status": ended[-1].status,
            "outcome": o.type,
            "rounds": o.rounds,
            "deal_seller": o.seller,
            "deal_unit_price": None if o.unit_price is None else str(o.unit_price),
        }
    meta |= _flag_metadata(flags)
    spans = builder.spans
    for review in reviews:
        meta |= {"analyst_model": review.model, "analyst_review": review.text}
        if review.call is not None:
            spans.append(_llm_span(review.call, "analyst review", events[-1][1]))
    brains = {started.buyer.brain, *(s.brain for s in started.sellers)}
    tags = ["mams", f"outcome:{meta.get('outcome', 'open')}", *sorted(brains)]
    if flags:
        tags.append("flagged")
    first, last = events[0][1], events[-1][1]
    return TraceSpec(
        name=f"negotiation {started.item_name}",
        input=_opening(started),
        output=output,
        external_id=str(started.negotiation_id),
        created_at=first,
        duration_ns=int((last - first).total_seconds() * 1e9),
        metadata=meta,
        tags=tags,
        spans=spans,
    )


# -- the SDK step ---------------------------------------------------------------------------


def _add_llm(logger: Any, span: LLMSpanSpec) -> None:
    logger.add_llm_span(
        input=span.input,
        output=span.output,
        model=span.model,
        name=span.name,
        created_at=span.created_at,
        duration_ns=span.duration_ns,
        num_input_tokens=span.num_input_tokens,
        num_output_tokens=span.num_output_tokens,
        total_tokens=span.num_input_tokens + span.num_output_tokens,
        metadata=span.metadata,
    )


def send(logger: Any, trace: TraceSpec) -> None:
    """Replay `trace` into a `GalileoLogger` (start, spans, conclude); flushing is the
    caller's."""
    logger.start_trace(
        input=trace.input,
        name=trace.name,
        created_at=trace.created_at,
        duration_ns=trace.duration_ns,
        metadata=trace.metadata,
        tags=trace.tags,
        external_id=trace.external_id,
    )
    for span in trace.spans:
        if isinstance(span, LLMSpanSpec):
            _add_llm(logger, span)
            continue
        logger.add_agent_span(
            input=span.input,
            output=span.output,
            name=span.name,
            created_at=span.created_at,
            metadata=span.metadata,
            agent_type="default",
        )
        for call in span.llm:
            _add_llm(logger, call)
        logger.conclude(output=span.output)  # the agent span holds its calls; close it
    logger.conclude(output=trace.output, duration_ns=trace.duration_ns)


def _export_sync(
    trace: TraceSpec, env: Mapping[str, str], ingestion_hook: IngestionHook | None
) -> None:
    try:
        from galileo import GalileoLogger  # seconds to import: only when exporting
    except ImportError as exc:
        raise ConfigError(
            "GALILEO_API_KEY is set but the galileo SDK is not installed: "
            "pip install 'mams[galileo]' (or unset GALILEO_API_KEY)"
        ) from exc

    project = env.get("GALILEO_PROJECT", "").strip() or "mams"
    stream = env.get("GALILEO_LOG_STREAM", "").strip() or "negotiations"
    errors: list[Exception] = []
    try:
        logger = GalileoLogger(
            project=project, log_stream=stream, mode="batch", ingestion_hook=ingestion_hook
        )
    except Exception as exc:
        raise GalileoExportError(
            f"cannot reach Galileo project {project!r} / log stream {stream!r}: {exc}. "
            "Check GALILEO_API_KEY (and GALILEO_CONSOLE_URL for a self-hosted Galileo)."
        ) from exc
    try:
        send(logger, trace)
        logger.flush(on_error=errors.append)
    finally:
        logger.terminate()
    if errors:
        raise GalileoExportError(f"Galileo did not take the trace: {errors[0]}") from errors[0]


async def export_negotiation(
    store: EventStore,
    negotiation_id: UUID,
    *,
    env: Mapping[str, str] = os.environ,
    ingestion_hook: IngestionHook | None = None,
) -> bool:
    """Send one stored negotiation to Galileo; whether it was sent.

    Does nothing (False) when GALILEO_API_KEY is not set and no `ingestion_hook` is
    given. Raises `ConfigError` when the negotiation is not in the log and
    `GalileoExportError` when Galileo cannot be reached or refuses the trace (the live
    monitor logs it and carries on). The SDK's blocking calls run in a worker thread.
    """
    if ingestion_hook is None and not galileo_enabled(env):
        return False
    rows = await store.read(negotiation_id)
    if not rows:
        raise ConfigError(
            f"negotiation {negotiation_id} is not in the log; list them with `mams negotiations`"
        )
    trace = trace_of(rows, await load_observations(store, negotiation_id))
    await anyio.to_thread.run_sync(_export_sync, trace, env, ingestion_hook)
    log.info(
        "galileo.exported",
        negotiation_id=str(negotiation_id),
        spans=len(trace.spans),
        flags=trace.metadata.get("flags"),
    )
    return True
