"""Audit of a stored event stream: hash chain, sequence, and the domain's invariants.

Pure: give it the `StoredEvent`s of one stream (as `EventStore.read` returns them) and it
says what is wrong, first broken link first. Checks, in order of seq:

- chain: each event's `prev_hash` is the previous event's `hash` (32 zero bytes for the
  first) and its `hash` is recomputed from its own content (`mams.storage.chain`), so an
  edited, deleted, swapped or re-hashed row shows up at the first link it breaks;
- sequence: seqs run 1, 2, 3, ... with no gap and no duplicate;
- stream shape: it starts with negotiation.started and nothing follows negotiation.ended;
  the row's type column matches the tag in its data; every event decodes;
- guardrails (docs/DESIGN.md invariant 5): every committed SellerReplied offer is at least that
  seller's least_price and for the buyer's quantity; every DealClosed is at most the
  buyer's max_price, equals that seller's standing offer, for the buyer's quantity;
- visibility (invariant 1): deliveries (the policy's `route`) go only to participants,
  a seller never receives another seller's message, a buyer message is only addressed to
  sellers in the room, and a seller replies only when it was addressed;
- replay: the stream folds into a state without error;
- pin (given what an earlier audit saw): the stream still holds the event the earlier
  audit ended at, with the same hash. Per-stream chains cannot show a stream deleted
  whole, or cut back to an earlier end; checked against a pin, both show.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from uuid import UUID

import msgspec

from mams.domain.events import (
    OBSERVATION_TAGS,
    BuyerSaid,
    DealClosed,
    Event,
    NegotiationEnded,
    NegotiationStarted,
    SellerReplied,
    decode_event,
    decode_observation,
    event_type,
)
from mams.domain.messages import SellerMessage
from mams.domain.negotiation import INITIAL, NegotiationState, evolve
from mams.domain.visibility import route
from mams.storage.chain import GENESIS, legacy_link_hash, link_hash
from mams.storage.model import StoredEvent

_RANK = {"seq": 0, "unhashed": 1, "hash": 2, "link": 3}


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """One broken link or invariant: at which seq, which check, and why."""

    seq: int
    check: str
    why: str


class StreamReport(msgspec.Struct, frozen=True, kw_only=True):
    """The audit of one stream. `problems` are ordered by seq; the first is the first break."""

    stream_id: UUID
    events: int
    last_seq: int
    head: str  # hex hash of the last event (what an archive can pin)
    ended: bool
    problems: list[Problem]
    # "negotiation", or "observations" for a negotiation's companion stream of quality
    # flags and reviews (chain, seq and decoding are checked; it has no negotiation shape).
    kind: str = "negotiation"

    @property
    def ok(self) -> bool:
        """True when nothing is broken."""
        return not self.problems

    @property
    def first(self) -> Problem | None:
        """The first broken link, or None."""
        return self.problems[0] if self.problems else None


def check_chain(events: Sequence[StoredEvent]) -> list[Problem]:
    """Sequence and hash-chain problems of one stream's events (ordered by seq)."""
    problems: list[Problem] = []
    expected_seq = 1
    prev_hash = GENESIS
    for e in events:
        if e.seq != expected_seq:
            if e.seq < expected_seq:
                why = f"seq {e.seq} appears again (event {e.event_id})"
            else:
                missing = (
                    f"seq {expected_seq}"
                    if e.seq == expected_seq + 1
                    else f"seqs {expected_seq}..{e.seq - 1}"
                )
                why = f"{missing} missing: seq {e.seq} follows seq {expected_seq - 1}"
            problems.append(Problem(seq=e.seq, check="seq", why=why))
        expected_seq = max(expected_seq, e.seq + 1)
        problems += check_link(e, prev_hash)
        prev_hash = e.hash or GENESIS
    return problems


def check_link(e: StoredEvent, prev_hash: bytes) -> list[Problem]:
    """Hash problems of one event, given the hash of the event before it in its stream:
    its `prev_hash` must be that, and its `hash` must be recomputed from its content."""
    if not e.hash or not e.prev_hash:
        return [
            Problem(seq=e.seq, check="unhashed", why="row has no hash (written before the chain)")
        ]
    problems: list[Problem] = []
    if e.prev_hash != prev_hash:
        problems.append(
            Problem(
                seq=e.seq,
                check="link",
                why=f"prev_hash {e.prev_hash.hex()[:16]}... is not the hash of the event "
                f"before it ({prev_hash.hex()[:16]}...)",
            )
        )
    try:
        own = link_hash(e.prev_hash, e.stream_id, e.seq, e.event_id, e.type, e.data)
    except msgspec.DecodeError as exc:
        problems.append(Problem(seq=e.seq, check="hash", why=f"data is not JSON: {exc}"))
    else:
        # A row written before numbers were canonicalised may hold a float of 1e16 or
        # more, hashed as the float it was (`legacy_link_hash`): the same value.
        if own != e.hash and (
            legacy_link_hash(e.prev_hash, e.stream_id, e.seq, e.event_id, e.type, e.data) != e.hash
        ):
            problems.append(
                Problem(
                    seq=e.seq,
                    check="hash",
                    why=f"stored hash {e.hash.hex()[:16]}... does not match the event's "
                    f"content ({own.hex()[:16]}...): the row was changed after it was written",
                )
            )
    return problems


class Pin(msgspec.Struct, frozen=True, array_like=True):
    """What an earlier audit saw of a stream: its last seq and that event's hash (`head`).
    The chain makes it a commitment to every event up to it."""

    seq: int
    head: bytes


def check_pin(events: Sequence[StoredEvent], pin: Pin) -> list[Problem]:
    """The stream still holds the pinned event, with the pinned hash. As `check_chain`
    verifies every link up to it, the events before it are the pinned ones too; events
    after it are new, which is allowed."""
    seen = f"an earlier audit saw seq {pin.seq} with hash {pin.head.hex()[:16]}..."
    if not events:
        why = f"{seen}, and the log now holds none of this stream's events: they were deleted"
        return [Problem(seq=0, check="pin", why=why)]
    at = next((e for e in events if e.seq == pin.seq), None)
    if at is None:
        last = events[-1].seq
        if last > pin.seq:
            return [Problem(seq=pin.seq, check="pin", why=f"{seen}, and it is gone")]
        why = f"{seen}, and the stream now ends at seq {last}: events were removed from its end"
        return [Problem(seq=last, check="pin", why=why)]
    if at.hash != pin.head:
        why = f"{seen}, and it now has hash {at.hash.hex()[:16]}...: the stream was rewritten"
        return [Problem(seq=pin.seq, check="pin", why=why)]
    return []


def is_observation_stream(events: Sequence[StoredEvent]) -> bool:
    """Whether a stream holds observations (quality flags, reviews), not a negotiation."""
    return bool(events) and events[0].type in OBSERVATION_TAGS


def check_observations(events: Sequence[StoredEvent]) -> list[Problem]:
    """Every row of an observation stream decodes as an observation of its own type."""
    problems: list[Problem] = []
    for stored in events:
        try:
            obs = decode_observation(stored.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            problems.append(
                Problem(seq=stored.seq, check="decode", why=f"not a known observation: {exc}")
            )
            continue
        if (tag := event_type(obs)) != stored.type:
            problems.append(
                Problem(
                    seq=stored.seq,
                    check="type",
                    why=f"type column says {stored.type!r}, data says {tag!r}",
                )
            )
    return problems


def check_domain(events: Sequence[StoredEvent]) -> list[Problem]:
    """Stream shape, guardrail and visibility problems, and whether replay succeeds."""
    problems: list[Problem] = []
    state: NegotiationState = INITIAL
    ended_at: int | None = None
    sellers: frozenset[str] = frozenset()  # the room's, once it started (never changes)

    def bad(seq: int, check: str, why: str) -> None:
        problems.append(Problem(seq=seq, check=check, why=why))

    for i, stored in enumerate(events):
        seq = stored.seq
        try:
            event: Event = decode_event(stored.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            bad(seq, "decode", f"data is not a known event: {exc}")
            continue
        tag = event_type(event)
        if tag != stored.type:
            bad(seq, "type", f"type column says {stored.type!r}, data says {tag!r}")
        if i == 0 and not isinstance(event, NegotiationStarted):
            bad(seq, "order", f"stream starts with {tag}, not negotiation.started")
        if i > 0 and isinstance(event, NegotiationStarted):
            bad(seq, "order", "negotiation.started again in the middle of the stream")
        if ended_at is not None:
            bad(seq, "order", f"{tag} follows negotiation.ended (seq {ended_at})")
        problems.extend(_guardrails(state, seq, event))
        problems.extend(_addressing(state, sellers, seq, event))
        try:
            after = evolve(state, event)
        except Exception as exc:  # replay must be total; anything else is a broken log
            bad(seq, "replay", f"replay failed: {type(exc).__name__}: {exc}")
            continue
        if after.started is not state.started:
            sellers = after.seller_ids
        state = after
        problems.extend(_deliveries(state, sellers, seq, event))
        if isinstance(event, NegotiationEnded) and ended_at is None:
            ended_at = seq
    return problems


def _guardrails(state: NegotiationState, seq: int, event: Event) -> list[Problem]:
    started = state.started
    if started is None:
        return []
    buyer = started.buyer
    out: list[Problem] = []
    match event:
        case SellerReplied(seller=seller, offer=offer) if offer is not None:
            terms = state.seller(seller)
            if terms is not None and offer.unit_price < terms.least_price:
                out.append(
                    Problem(
                        seq=seq,
                        check="guardrail",
                        why=f"{seller} offered {offer.unit_price}, below its least_price "
                        f"{terms.least_price}",
                    )
                )
            if offer.quantity != buyer.quantity:
                out.append(
                    Problem(
                        seq=seq,
                        check="guardrail",
                        why=f"{seller} offered {offer.quantity} units; the buyer asked for "
                        f"{buyer.quantity}",
                    )
                )
        case DealClosed(seller=seller, unit_price=price, quantity=qty):
            if price > buyer.max_price:
                out.append(
                    Problem(
                        seq=seq,
                        check="guardrail",
                        why=f"deal at {price} is above the buyer's max_price {buyer.max_price}",
                    )
                )
            standing = state.offers.get(seller)
            if standing is None:
                out.append(
                    Problem(
                        seq=seq, check="guardrail", why=f"deal with {seller}, who made no offer"
                    )
                )
            elif standing.unit_price != price:
                out.append(
                    Problem(
                        seq=seq,
                        check="guardrail",
                        why=f"deal at {price} is not {seller}'s standing offer "
                        f"{standing.unit_price}",
                    )
                )
            if qty != buyer.quantity:
                out.append(
                    Problem(
                        seq=seq,
                        check="guardrail",
                        why=f"deal for {qty} units; the buyer asked for {buyer.quantity}",
                    )
                )
        case _:
            pass
    return out


def _addressing(
    state: NegotiationState, sellers: frozenset[str], seq: int, event: Event
) -> list[Problem]:
    """Visibility checks needing the state before the event (`sellers`: the room's)."""
    match event:
        case BuyerSaid(to=to):
            strangers = sorted(set(to) - sellers)
            if strangers:
                return [
                    Problem(
                        seq=seq,
                        check="visibility",
                        why=f"buyer message addressed to {', '.join(strangers)}, not sellers "
                        "in this negotiation",
                    )
                ]
        case SellerReplied(seller=seller):
            if seller not in sellers:
                return [
                    Problem(seq=seq, check="visibility", why=f"{seller} is not in this negotiation")
                ]
            if seller not in state.awaiting:
                return [
                    Problem(
                        seq=seq,
                        check="visibility",
                        why=f"{seller} replied without being addressed this round",
                    )
                ]
        case _:
            pass
    return []


def _deliveries(
    state: NegotiationState, sellers: frozenset[str], seq: int, event: Event
) -> list[Problem]:
    """What the visibility policy delivers for this event goes only where it may."""
    if state.started is None:
        return []
    buyer = state.started.buyer.agent_id
    out: list[Problem] = []
    for recipient, message in route(state, event):
        if recipient != buyer and recipient not in sellers:
            out.append(
                Problem(seq=seq, check="visibility", why=f"delivery to outsider {recipient}")
            )
        elif recipient in sellers and isinstance(message, SellerMessage):
            out.append(
                Problem(
                    seq=seq,
                    check="visibility",
                    why=f"seller {recipient} would receive {message.seller.agent_id}'s message",
                )
            )
    return out


def audit_stream(
    stream_id: UUID,
    events: Sequence[StoredEvent],
    *,
    expect_ended: bool = False,
    recorded: bool = False,
    pinned: Pin | None = None,
) -> StreamReport:
    """Audit one stream. With `expect_ended` (the run is recorded as finished), a stream
    without negotiation.ended is reported as truncated; with `recorded` (the read models
    know the run), a stream without events is reported as deleted; with `pinned` (what an
    earlier audit saw), the stream must still hold that event (`check_pin`)."""
    chain = check_chain(events)
    observations = is_observation_stream(events)
    domain = check_observations(events) if observations else check_domain(events)
    ended = observations or any(e.type == "negotiation.ended" for e in events)
    last_seq = events[-1].seq if events else 0
    tail: list[Problem] = []
    if not events and recorded:
        tail.append(
            Problem(
                seq=0,
                check="missing",
                why="the run is recorded (negotiation_runs) but the log holds none of its "
                "events: its rows were deleted",
            )
        )
    elif not events and pinned is None:
        tail.append(Problem(seq=0, check="order", why="no events in this stream"))
    elif expect_ended and not ended:
        tail.append(
            Problem(
                seq=last_seq,
                check="order",
                why="the run is recorded as finished but the log has no negotiation.ended "
                "(events were removed from its end)",
            )
        )
    if pinned is not None and not (not events and recorded):
        tail += check_pin(events, pinned)
    ranked = sorted(
        [(p, 0) for p in chain] + [(p, 1) for p in domain] + [(p, 2) for p in tail],
        key=lambda pr: (pr[0].seq, pr[1], _RANK.get(pr[0].check, 9)),
    )
    return StreamReport(
        stream_id=stream_id,
        events=len(events),
        last_seq=last_seq,
        head=events[-1].hash.hex() if events else "",
        ended=ended,
        problems=[p for p, _ in ranked],
        kind="observations" if observations else "negotiation",
    )


def log_digest(reports: Iterable[StreamReport]) -> str:
    """One hash over every audited stream's last seq and head (streams holding events,
    by id): two audits that print the same digest saw the same log, event for event,
    since each head commits to its whole stream."""
    lines = sorted(f"{r.stream_id} {r.last_seq} {r.head}\n" for r in reports if r.events)
    return hashlib.sha256("".join(lines).encode()).hexdigest()
