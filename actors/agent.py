"""Agent actors: a buyer or a seller, each on its own private inbox subject.

An agent folds what the broker delivers into its own view of each negotiation, asks its
brain for a decision when it is its turn, checks the decision against its own
constraints (asking the brain once to repair a bad one, then falling back to a safe
action), and publishes the turn to its outbox. Brains may be slow (LLMs), so turns run
in a pool that grows while they are slow (`actors.queues.TurnPool`): rooms never wait
for each other.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar
from uuid import UUID

import anyio
import msgspec
import structlog
from anyio.abc import TaskStatus

from mams.actors.brains.base import (
    BrainError,
    BuyerBrain,
    BuyerDecision,
    SellerBrain,
    SellerDecision,
)
from mams.actors.ids import RandomIds
from mams.actors.queues import Job, TurnPool
from mams.actors.tuning import tune_gc
from mams.bus.base import Bus
from mams.bus.subjects import AgentId, Subjects
from mams.domain.bounds import BoundsError, check_offer, fit_label, fit_turn
from mams.domain.events import LLMCall
from mams.domain.guardrails import (
    Violation,
    buyer_fallback,
    buyer_turn_violations,
    seller_fallback,
    seller_offer_violations,
)
from mams.domain.messages import (
    ROOM_MESSAGES,
    BuyerMessage,
    BuyerRoomOpened,
    BuyerTurn,
    GuardrailNote,
    Hello,
    InboxMessage,
    Recap,
    Rejected,
    RoomClosed,
    Say,
    SellerMessage,
    SellerRoomOpened,
    SellerTurn,
    TurnStarted,
    decode_inbox,
    encode,
)
from mams.domain.views import (
    BuyerView,
    SellerView,
    buyer_recalled,
    buyer_received,
    buyer_sent,
    open_buyer_view,
    open_seller_view,
    seller_recalled,
    seller_received,
    seller_sent,
)

log = structlog.get_logger("mams.agent")

# Turns: TURN_WORKERS permanent tasks, more while a slow brain keeps them all busy, up to
# MAX_TURNS in flight (a model's calls are capped by its provider's limiter, not here).
TURN_WORKERS = 32
MAX_TURNS = 10_000
TURN_QUEUE = 10_000

_D = TypeVar("_D", BuyerDecision, SellerDecision)


def _notes(
    problems: list[Violation], attempted: object, resolution: str
) -> tuple[GuardrailNote, ...]:
    text = msgspec.json.encode(attempted).decode()
    return tuple(
        GuardrailNote(rule=p.rule, detail=p.detail, attempted=text, resolution=resolution)
        for p in problems
    )


class AgentActor:
    """One buyer or seller on the bus. `role` decides which messages it acts on."""

    def __init__(
        self,
        bus: Bus,
        subjects: Subjects,
        agent_id: str,
        brain: BuyerBrain | SellerBrain,
        role: Literal["buyer", "seller"],
        *,
        on_message: Callable[[InboxMessage], None] | None = None,
    ) -> None:
        self.on_message = on_message
        self.turns: TurnPool | None = None  # while running
        self.bus = bus
        self.subjects = subjects
        self.agent = AgentId(agent_id)
        self.brain = brain
        self.role = role
        self.buyer_views: dict[UUID, BuyerView] = {}
        self.seller_views: dict[UUID, SellerView] = {}
        # Deliveries may repeat (the broker re-sends open rooms to an agent that says hello
        # again): act once per buyer turn and once per buyer message.
        self.turns_taken: dict[UUID, int] = {}
        self.answered: set[UUID] = set()
        self.heard: dict[UUID, set[UUID]] = {}  # per open room, the line ids folded
        # Per open room, the last turn published and what it answered (the buyer's round,
        # or the buyer message a seller replied to). The broker re-sends a turn it is still
        # owed (it restarted, or the turn was lost on the bus): the same bytes go again,
        # and the broker folds each message id once.
        self.last_turn: dict[UUID, tuple[int | UUID, bytes]] = {}
        self._ids = RandomIds()  # message ids
        self.log = log.bind(agent=agent_id, role=role)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Subscribe to the inbox, signal started, then serve until cancelled. Raises the
        process's young-generation GC threshold (`actors.tuning`)."""
        tune_gc()
        sub = await self.bus.subscribe(self.subjects.inbox(self.agent))
        self.bus.on_reconnect(self._rejoin)
        pool = self.turns = TurnPool(TURN_WORKERS, MAX_TURNS, TURN_QUEUE)
        try:
            async with anyio.create_task_group() as tg:
                pool.start(tg)
                hello = Hello(role=self.role, brain=self.label)
                await self.bus.publish(self.subjects.outbox(self.agent), encode(hello))
                task_status.started()
                async for msg in sub:
                    job = self._handle(msg.data)
                    if job is not None:
                        await pool.submit(functools.partial(self._turn, job))
                pool.close()
        finally:
            pool.close()
            with anyio.CancelScope(shield=True):
                await sub.unsubscribe()

    @property
    def label(self) -> str:
        """The brain's label as announced: plain characters, bounded (domain.bounds), so
        the broker never refuses our hello for an odd model name."""
        return fit_label(self.brain.label)

    def _handle(self, data: bytes) -> Job | None:
        """One delivery: decoded and folded, or dropped with a logged reason. Nothing a
        message holds may stop the agent (its other rooms go on)."""
        try:
            message = decode_inbox(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.log.warning("agent.message_dropped", reason=f"malformed: {exc}")
            return None
        try:
            return self._receive(message)
        except Exception as exc:  # a value no view can fold; the message, not the agent, fails
            self.log.error(
                "agent.message_dropped",
                kind=type(message).__name__,
                negotiation_id=str(getattr(message, "negotiation_id", "")) or None,
                reason=f"could not fold it: {exc!r}"[:500],
            )
            return None

    async def _turn(self, job: Job) -> None:
        """Run one turn; a failure ends that turn (logged), never the agent: the room's
        deadline, or a re-sent turn, goes on from there."""
        try:
            await job()
        except Exception as exc:
            self.log.error("agent.turn_failed", error=repr(exc)[:500])

    async def _rejoin(self) -> None:
        """After a NATS outage: a full catch-up hello, since what was delivered to us
        meanwhile is lost (the broker re-sends on its own reconnect too); no recap, since
        the conversation so far is still here."""
        hello = Hello(role=self.role, brain=self.label, recap=False)
        await self.bus.publish(self.subjects.outbox(self.agent), encode(hello))

    def _receive(self, message: InboxMessage) -> Job | None:
        """Fold a delivery into its room's view; return the turn it calls for, if any."""
        if self.on_message is not None:
            self.on_message(message)
        if not isinstance(message, ROOM_MESSAGES):
            if isinstance(message, Rejected):
                self.log.error("agent.request_rejected", reason=message.reason)
            return None  # welcome / rooms.opened: nothing to act on here
        nid = message.negotiation_id
        match message:
            case BuyerRoomOpened() if self.role == "buyer":
                self.buyer_views.setdefault(nid, open_buyer_view(message))
            case SellerRoomOpened() if self.role == "seller":
                self.seller_views.setdefault(nid, open_seller_view(message, str(self.agent)))
            case _ if nid not in self.buyer_views and nid not in self.seller_views:
                # A line of a room whose opening has not reached us: it overtook our
                # catch-up (we just joined, or restarted). Noted nowhere, so the copy the
                # catch-up re-sends is taken as new and, if owed, answered.
                self.log.info(
                    "agent.message_before_room",
                    negotiation_id=str(nid),
                    kind=type(message).__name__,
                )
                return None
            case Recap(message=line) if not self._first(nid, line.message_id):
                return None  # a line already folded (this agent did not restart)
            case Recap() if nid in self.buyer_views:
                self.buyer_views[nid] = buyer_recalled(self.buyer_views[nid], message)
                if message.mine:  # that round's turn was taken
                    taken = self.turns_taken.get(nid, 0)
                    self.turns_taken[nid] = max(taken, message.message.round)
            case Recap() if nid in self.seller_views:
                self.seller_views[nid] = seller_recalled(self.seller_views[nid], message)
                if message.mine and message.replying_to is not None:
                    self.answered.add(message.replying_to)
            case SellerMessage(message_id=mid) if not self._first(nid, mid):
                return None  # a repeat delivery (re-sent on rejoin): folded once
            case TurnStarted() | SellerMessage() | RoomClosed() if nid in self.buyer_views:
                view = self.buyer_views[nid] = buyer_received(self.buyer_views[nid], message)
                if isinstance(message, TurnStarted):
                    if self.turns_taken.get(nid, 0) < message.round:
                        self.turns_taken[nid] = message.round
                        return functools.partial(self._buyer_turn, view)
                    return self._again(nid, message.round)
            case BuyerMessage(message_id=mid) if mid in self.answered:
                return self._again(nid, mid)  # a repeat delivery: folded and answered
            case BuyerMessage(message_id=mid) if not self._first(nid, mid):
                return None  # recalled, and no longer owed an answer
            case BuyerMessage() | RoomClosed() if nid in self.seller_views:
                sview = self.seller_views[nid] = seller_received(self.seller_views[nid], message)
                if isinstance(message, BuyerMessage) and message.message_id not in self.answered:
                    self.answered.add(message.message_id)
                    return functools.partial(self._seller_turn, sview, message.message_id)
            case _:
                self.log.warning(
                    "agent.message_dropped",
                    negotiation_id=str(nid),
                    reason=f"unexpected {type(message).__name__} for a {self.role}",
                )
                return None
        if isinstance(message, RoomClosed):
            self.turns_taken.pop(nid, None)
            self.heard.pop(nid, None)
            self.last_turn.pop(nid, None)
            self.buyer_views.pop(nid, None)
            self.seller_views.pop(nid, None)
        return None

    def _said(self, nid: UUID, message_id: UUID) -> None:
        """Note an own line of an open room (a recap of it after a reconnect is a repeat)."""
        if nid in self.buyer_views or nid in self.seller_views:
            self._first(nid, message_id)

    def _first(self, nid: UUID, message_id: UUID) -> bool:
        """Whether a line of room `nid` is new to this agent's view (then it is noted):
        deliveries and recaps repeat after a rejoin, and are folded once."""
        heard = self.heard.get(nid)
        if heard is None:
            heard = self.heard[nid] = set()
        elif message_id in heard:
            return False
        heard.add(message_id)
        return True

    def _again(self, nid: UUID, answering: int | UUID) -> Job | None:
        """Publish again the turn already sent for `answering`, if it was (a turn still
        being decided goes out when it is done)."""
        last = self.last_turn.get(nid)
        if last is None or last[0] != answering:
            return None
        return functools.partial(self._publish, nid, answering, last[1])

    async def _publish(self, nid: UUID, answering: int | UUID, turn: bytes) -> None:
        if nid in self.buyer_views or nid in self.seller_views:  # not once it closed
            self.last_turn[nid] = (answering, turn)
            await self.bus.publish(self.subjects.outbox(self.agent), turn)

    # -- turns -----------------------------------------------------------------------------
    async def _guarded(
        self,
        negotiation_id: UUID,
        decide: Callable[[], Awaitable[_D]],
        repair: Callable[[_D, list[Violation]], Awaitable[_D]],
        check: Callable[[_D], list[Violation]],
        fallback: Callable[[_D | None], _D],
        attempted: Callable[[_D], object],
    ) -> tuple[_D, tuple[GuardrailNote, ...], tuple[LLMCall, ...]]:
        """Decide, check, repair once, else fall back; collect notes and model calls."""
        notes: list[GuardrailNote] = []
        calls: list[LLMCall] = []
        try:
            decision = await decide()
            notes += decision.notes
            calls += decision.llm_calls
            problems = check(decision)
            if not problems:
                return decision, tuple(notes), tuple(calls)
            try:
                repaired = await repair(decision, problems)
            except BrainError as failure:
                calls += failure.calls
                notes += failure.notes
                repaired = None
            if repaired is not None:
                notes += repaired.notes
                calls += repaired.llm_calls
                if not check(repaired):
                    notes += _notes(problems, attempted(decision), "repaired")
                    return repaired, tuple(notes), tuple(calls)
            notes += _notes(problems, attempted(decision), "fallback")
            return fallback(decision), tuple(notes), tuple(calls)
        except BrainError as failure:
            calls += failure.calls
            notes += failure.notes
            reason = failure.reason
        except Exception as exc:  # a failing brain ends its turn safely, it never kills us
            reason = repr(exc)
        self.log.error("agent.brain_failed", negotiation_id=str(negotiation_id), error=reason)
        notes.append(
            GuardrailNote(
                rule="brain_error", detail=reason[:500], attempted="", resolution="fallback"
            )
        )
        return fallback(None), tuple(notes), tuple(calls)

    # -- buyer ---------------------------------------------------------------------------
    def _buyer_problems(self, view: BuyerView, decision: BuyerDecision) -> list[Violation]:
        return buyer_turn_violations(view, decision.action)

    async def _buyer_turn(self, view: BuyerView) -> None:
        brain: BuyerBrain = self.brain  # type: ignore[assignment]
        decision, notes, calls = await self._guarded(
            view.negotiation_id,
            lambda: brain.decide(view),
            lambda rejected, problems: brain.repair(view, rejected, problems),
            lambda d: self._buyer_problems(view, d),
            lambda d: BuyerDecision(
                action=buyer_fallback(), reasoning=d.reasoning if d is not None else ""
            ),
            lambda d: d.action,
        )
        action = decision.action
        if isinstance(action, Say):
            current = self.buyer_views.get(view.negotiation_id)
            if current is not None:
                self.buyer_views[view.negotiation_id] = buyer_sent(
                    current, action.text, action.to, action.counter_price
                )
        turn = BuyerTurn(
            negotiation_id=view.negotiation_id,
            round=view.round,
            message_id=self._ids.new(),
            action=action,
            reasoning=decision.reasoning,
            guardrails=notes,
            llm_calls=calls,
        )
        self._said(view.negotiation_id, turn.message_id)
        await self._publish(view.negotiation_id, view.round, encode(fit_turn(turn)))

    # -- seller --------------------------------------------------------------------------
    @staticmethod
    def _seller_problems(view: SellerView, decision: SellerDecision) -> list[Violation]:
        problems = seller_offer_violations(
            decision.offer, least_price=view.terms.least_price, quantity=view.quantity
        )
        if problems or decision.offer is None:
            return problems
        try:  # what the broker would drop (domain.bounds): an ask above MAX_PRICE, say
            check_offer(decision.offer, "offer")
        except BoundsError as exc:
            return [Violation(rule="offer_out_of_bounds", detail=str(exc))]
        return []

    async def _seller_turn(self, view: SellerView, replying_to: UUID) -> None:
        brain: SellerBrain = self.brain  # type: ignore[assignment]

        def fallback(d: SellerDecision | None) -> SellerDecision:
            text, offer = seller_fallback(
                view.my_offer, selling_price=view.terms.selling_price, quantity=view.quantity
            )
            return SellerDecision(
                text=text, offer=offer, reasoning=d.reasoning if d is not None else ""
            )

        decision, notes, calls = await self._guarded(
            view.negotiation_id,
            lambda: brain.decide(view),
            lambda rejected, problems: brain.repair(view, rejected, problems),
            lambda d: self._seller_problems(view, d),
            fallback,
            lambda d: d.offer,
        )
        current = self.seller_views.get(view.negotiation_id)
        if current is not None:
            self.seller_views[view.negotiation_id] = seller_sent(
                current, decision.text, decision.offer
            )
        turn = SellerTurn(
            negotiation_id=view.negotiation_id,
            round=view.round,
            message_id=self._ids.new(),
            text=decision.text,
            offer=decision.offer,
            reasoning=decision.reasoning,
            guardrails=notes,
            llm_calls=calls,
        )
        self._said(view.negotiation_id, turn.message_id)
        await self._publish(view.negotiation_id, replying_to, encode(fit_turn(turn)))


__all__ = ["AgentActor"]
