"""Agents as separate processes: `mams broker`, `mams seller`, `mams buyer`, and the
supervisor behind `mams run --processes`.

Every process finds the bus through NATS_URL (or --nats; credentials may ride in the URL,
as `mams creds` prints them) and one market name (the subject prefix, default "mams").
Only the broker touches the database (DATABASE_URL, or the embedded one).

Restarts: `mams broker` resumes the open negotiations of the log on start, those no live
broker serves (`storage.leases`; `--no-resume` skips them all, `--resume-session ID`
takes only that session's, as `mams run --resume --processes` does) and, stopped cleanly,
leaves open rooms open for the next broker to resume (`--abort-on-exit` records them as
aborted instead, as `mams run --processes` does).
Sellers and buyers say hello again every REHELLO_EVERY seconds, so after a broker restart
they are welcomed again and caught up on their open rooms (repeats are deduped).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
import msgspec
import structlog
from rich.console import Console
from rich.text import Text

from mams import forkserver
from mams.actors.agent import AgentActor
from mams.actors.market import (
    RunOptions,
    make_buyer_brain,
    make_seller_brain,
    resolve_model,
    resolve_models,
)
from mams.bus.auth import Credentials
from mams.bus.base import BusError, redact_url
from mams.bus.nats import NatsBus
from mams.bus.subjects import AgentId, Subjects
from mams.cli_render import untrusted
from mams.domain.config import Scenario, load_scenario, scenario_to_raw
from mams.domain.errors import ConfigError
from mams.domain.messages import (
    BuyerRoomOpened,
    Hello,
    InboxMessage,
    OpenRooms,
    Recap,
    Rejected,
    RoomClosed,
    RoomsOpened,
    SellerMessage,
    TurnStarted,
    Welcome,
    encode,
)
from mams.domain.money import fmt
from mams.domain.plan import (
    DEFAULT_MAX_ROUNDS,
    DEFAULT_ROUND_TIMEOUT,
    DEFAULT_RUNS,
    PlanError,
    PlanOptions,
    Window,
    pick_items,
    plan_rooms,
)
from mams.domain.transcript import describe_outcome
from mams.forkserver import ForkServer

if TYPE_CHECKING:  # imported where used: an agent process never loads the broker's modules
    from mams.actors.broker import Broker
    from mams.actors.monitor import QualityMonitor

log = structlog.get_logger("mams.processes")
HELLO_EVERY = 1.0
REHELLO_EVERY = 5.0
JOIN_TIMEOUT = 60.0
READY_TIMEOUT = 60.0


class PgSessions:
    """The broker's session store on the read-model tables."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def load(self, session_id: UUID) -> Scenario | None:
        """The scenario of a stored session, or None."""
        from mams.storage.readmodels import load_session

        async with self.pool.acquire() as conn:
            return await load_session(conn, session_id)

    async def save(self, session_id: UUID, scenario: Scenario) -> None:
        """Store a scenario as a new session."""
        from mams.storage.readmodels import save_session

        async with self.pool.acquire() as conn:
            await save_session(conn, session_id, scenario)


def _nats_url(args: argparse.Namespace) -> str:
    url: str | None = args.nats or os.environ.get("NATS_URL")
    if not url:
        raise ConfigError(
            "no bus given: set NATS_URL (or --nats) to the market's NATS server, "
            "e.g. the URL `mams broker` printed"
        )
    return url


# Set by `mams run --processes` (supervise) in its children's environment: the pid they
# watch, so that a supervisor killed outright (SIGKILL: no chance to stop them) does not
# leave its broker, sellers and buyer running forever.
SUPERVISOR_ENV = "MAMS_SUPERVISOR_PID"
ORPHAN_CHECK_EVERY = 0.5
ORPHAN_EXIT_WITHIN = 10.0  # an orphan that has not stopped by then exits outright


async def _until_signalled() -> bool:
    """Until SIGTERM/SIGINT (False), or until the supervising `mams run --processes` is
    gone (True; see SUPERVISOR_ENV)."""
    orphaned = False
    async with anyio.create_task_group() as tg:

        async def orphan_watch() -> None:
            nonlocal orphaned
            await _until_orphaned()
            orphaned = True
            tg.cancel_scope.cancel()

        tg.start_soon(orphan_watch)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        tg.cancel_scope.cancel()
    return orphaned


async def _until_orphaned() -> None:
    """Return once the supervising process (SUPERVISOR_ENV) is gone: this process has
    been handed to another parent. Without a supervisor, never returns. From the first
    call on, a thread ends the process outright ORPHAN_EXIT_WITHIN seconds after the
    supervisor is gone, if it has not ended by itself (`_orphan_deadline`)."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if not supervisor or not supervisor.isdigit():
        await anyio.sleep_forever()
    _orphan_deadline(int(str(supervisor)))
    while os.getppid() == int(str(supervisor)):  # noqa: ASYNC110 (no event for this)
        await anyio.sleep(ORPHAN_CHECK_EVERY)
    log.warning("processes.supervisor_gone", supervisor=supervisor, then="stopping")


_deadline_thread: list[threading.Thread] = []


def _orphan_deadline(supervisor: int) -> None:
    """An orphan must not linger, and its stop can hang: the embedded NATS server died
    with the supervisor, and nats-py's close waits on a reconnect that never comes (it
    even swallows the cancellation meant to bound it). So a thread of its own, which
    neither a hung stop nor a busy event loop holds up, watches the supervisor and ends
    the process ORPHAN_EXIT_WITHIN seconds after it is gone. Started once."""
    if _deadline_thread:
        return

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(ORPHAN_CHECK_EVERY)
        time.sleep(ORPHAN_EXIT_WITHIN)
        os._exit(1)

    _deadline_thread.append(threading.Thread(target=watch, name="orphan-deadline", daemon=True))
    _deadline_thread[0].start()


async def _close(bus: NatsBus) -> None:
    """Close the bus on the way out, even when cancelled. A server already gone (it may
    have died with the supervisor) is worth a warning, not an error telling the person
    to start one: nothing is lost, agents are caught up on their next hello."""
    with anyio.CancelScope(shield=True):
        try:
            await bus.close()
        except BusError as exc:
            log.warning("processes.bus_close_failed", error=str(exc).split(";")[0])


# -- broker ----------------------------------------------------------------------------------
Runner = Callable[..., Coroutine[Any, Any, None]]


async def _serve(
    args: argparse.Namespace,
    out: Console,
    role: str,
    build: Callable[[NatsBus, Any, contextlib.AsyncExitStack], Awaitable[tuple[Runner, str]]],
    label: str = "",
    on_signal: Callable[[], None] | None = None,
) -> None:
    """Connect as `<market>-<role>`, build the actor (its run and a note for the ready
    line; what it enters on the stack is left after the actor stops), run it until
    SIGTERM/SIGINT (then `on_signal`, before the actor stops) or until its supervisor is
    gone, then close the connection."""
    from mams.infra import servers

    if args.nats:
        os.environ["NATS_URL"] = args.nats
    durable = getattr(args, "durability", DURABLE) == DURABLE
    async with servers(need_bus=True, durable=durable) as srv:
        assert srv.nats_url is not None
        bus = await NatsBus.connect(srv.nats_url, name=f"{args.market}-{role}")
        try:
            async with contextlib.AsyncExitStack() as stack:
                run, note = await build(bus, srv, stack)
                async with anyio.create_task_group() as tg:
                    await tg.start(run)
                    relaxed = (
                        "" if durable else " (durability relaxed: commits do not wait for the disk)"
                    )
                    out.print(
                        f"{label or role} ready: market {args.market!r} on "
                        f"{redact_url(srv.nats_url)}; {srv.db_note}{relaxed}{note}"
                    )
                    _say_how_to_join(out, srv.nats_url, args.market)
                    sys.stdout.flush()
                    if not await _until_signalled() and on_signal is not None:
                        on_signal()
                    tg.cancel_scope.cancel()
        finally:
            await _close(bus)


def _say_how_to_join(out: Console, nats_url: str, market: str) -> None:
    """On an embedded nats-server (locked to this process's users), say how an agent gets
    credentials of its own to join: the owner's URL is never handed out."""
    from mams.bus.embedded import EmbeddedNats

    embedded = EmbeddedNats.serving(nats_url)
    users = embedded.users_path if embedded is not None else None
    if embedded is None or users is None:
        return
    out.print(
        f"agents join with credentials of their own: mams creds --conf {users} --role "
        f"seller --handle @TechMart --market {market} --server {embedded.address} "
        f"--reload-pid {embedded.pid} "
        "(prints the NATS_URL to start that agent with; --role buyer for the buyer)",
        soft_wrap=True,
    )


def _session_id(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a session id; `mams sessions` lists them"
        ) from None


def _configurer(text: str) -> str:
    try:
        return str(AgentId.from_handle(text) if text.startswith("@") else AgentId.from_str(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a handle or agent id: {exc}") from None


def _lanes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 16:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to 16")
    return value


async def cmd_broker(args: argparse.Namespace, out: Console) -> int:
    """Serve a market until SIGTERM/SIGINT (or its supervisor is gone)."""
    if args.no_resume and args.resume_session:
        raise ConfigError("give --no-resume or --resume-session, not both")
    from mams.actors.broker import Broker, open_stream_ids
    from mams.storage.leases import PgLeases

    brokers: list[Broker] = []

    def signalled() -> None:
        # Asked to stop (SIGTERM/SIGINT): only then are open rooms recorded as aborted,
        # if asked to. Stopped any other way (its `mams run --processes` killed, the bus
        # or the database lost), it leaves them open: interrupted, for the next broker
        # or `mams run --session ID --resume` to go on with.
        for broker in brokers:
            broker.abort_on_shutdown = args.abort_on_exit

    async def build(bus: NatsBus, srv: Any, stack: contextlib.AsyncExitStack) -> tuple[Runner, str]:
        leases = await stack.enter_async_context(PgLeases(srv.pool, srv.dsn))
        broker = Broker(
            bus,
            srv.store,
            Subjects(prefix=args.market),
            sessions=PgSessions(srv.pool),
            abort_on_shutdown=False,  # until signalled
            commit_lanes=args.commit_lanes,
            leases=leases,
            configurers=args.configurer,
        )
        brokers.append(broker)
        candidates = [] if args.no_resume else await open_stream_ids(srv.pool, args.resume_session)
        resumed = await broker.resume(candidates) if candidates else []
        note = f"; resumed {len(resumed)} open negotiation(s)" if resumed else ""
        if broker.left_to_live:
            note += f"; {broker.left_to_live} open negotiation(s) left to live brokers"
        return broker.run, note

    await _serve(args, out, "broker", build, on_signal=signalled)
    return 0


async def cmd_monitor(args: argparse.Namespace, out: Console) -> int:
    """Grade every negotiation of a market live until SIGTERM/SIGINT (an observer)."""
    from mams.actors.monitor import QualityMonitor, galileo_hook

    monitors: list[QualityMonitor] = []

    async def build(bus: NatsBus, srv: Any, stack: contextlib.AsyncExitStack) -> tuple[Runner, str]:
        subjects = Subjects(prefix=args.market)
        hook = galileo_hook(srv.store)
        monitors.append(QualityMonitor(bus, srv.store, subjects, on_ended=hook))
        return monitors[0].run, ""

    try:
        await _serve(args, out, "monitor", build, "quality monitor")
    finally:
        if monitors:
            st = monitors[0].stats
            out.print(
                f"graded {st.ended} negotiation(s), {st.events} event(s); "
                f"{st.recorded} flag(s) recorded"
            )
    return 0


# -- joining ---------------------------------------------------------------------------------
async def _join(actor: AgentActor, welcomed: anyio.Event, nats_url: str) -> None:
    """Say hello until the broker answers (it may start after us), bounded."""
    hello = encode(Hello(role=actor.role, brain=actor.label))
    with anyio.move_on_after(JOIN_TIMEOUT) as scope:
        while not welcomed.is_set():
            await actor.bus.publish(actor.subjects.outbox(actor.agent), hello)
            with anyio.move_on_after(HELLO_EVERY):
                await welcomed.wait()
    if scope.cancelled_caught:
        raise ConfigError(
            f"no broker answered within {JOIN_TIMEOUT:.0f} s on market "
            f"{actor.subjects.prefix!r} at {redact_url(nats_url)}; start "
            "`mams broker` there (same --market)"
        )


async def _keep_saying_hello(actor: AgentActor) -> None:
    """Hello every REHELLO_EVERY seconds, for ever: a restarted broker knows nothing of us
    until we say hello, and answers it with our open rooms (catch-up); a broker that knows
    us re-sends only the turns we owe (a keepalive). (After a NATS outage the actor itself
    says a full catch-up hello.)"""
    hello = encode(Hello(role=actor.role, brain=actor.label, catch_up=False))
    while True:
        await anyio.sleep(REHELLO_EVERY)
        await actor.bus.publish(actor.subjects.outbox(actor.agent), hello)


# -- seller ----------------------------------------------------------------------------------
async def cmd_seller(args: argparse.Namespace, out: Console) -> int:
    """Run one seller of a scenario until SIGTERM/SIGINT."""
    scenario = load_scenario(Path(args.scenario))
    wanted = args.handle.lower().removeprefix("@")
    seller = next((s for s in scenario.sellers if s.agent_id == wanted), None)
    if seller is None:
        handles = ", ".join(s.handle for s in scenario.sellers)
        raise ConfigError(
            f"--handle {args.handle}: not a seller of {args.scenario}; its sellers: {handles}"
        )
    url = _nats_url(args)
    brain = make_seller_brain(resolve_model(args.model or seller.model))
    bus = await NatsBus.connect(url, name=f"{args.market}-{seller.agent_id}")
    welcomed = anyio.Event()

    def on_message(message: InboxMessage) -> None:
        if isinstance(message, Welcome):
            welcomed.set()

    actor = AgentActor(
        bus, Subjects(prefix=args.market), seller.agent_id, brain, "seller", on_message=on_message
    )
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(actor.run)
            await _join(actor, welcomed, url)
            tg.start_soon(_keep_saying_hello, actor)
            out.print(f"seller {untrusted(seller.handle)} ready ({untrusted(brain.label)})")
            sys.stdout.flush()
            await _until_signalled()
            tg.cancel_scope.cancel()
    finally:
        await _close(bus)
    return 0


# -- durability ------------------------------------------------------------------------------
DURABLE = "durable"


def add_durability(p: argparse.ArgumentParser) -> None:
    """`--durability durable|relaxed` (see storage.pg.open_store)."""
    p.add_argument(
        "--durability",
        choices=[DURABLE, "relaxed"],
        default=DURABLE,
        help="durable (default): a message is delivered once its events are on disk; "
        "relaxed: once committed, before the disk flush (no disk stalls in the way; a crash "
        "of PostgreSQL's machine can lose the last ~0.6 s of the log)",
    )


# -- buyer -----------------------------------------------------------------------------------
_Pairs = tuple[tuple[str, int | None], ...]


def write_skip_file(path: Path, pairs: Collection[tuple[str, int | None]]) -> None:
    """The (item, seed) pairs a buyer is not to open, for `mams buyer --skip-file`."""
    path.write_bytes(msgspec.json.encode(sorted(pairs, key=lambda p: (p[0], p[1] or 0))))


def read_skip_file(path: Path) -> _Pairs:
    """What `write_skip_file` wrote; a clear error for anything else."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=_Pairs)
    except OSError as exc:
        raise ConfigError(f"--skip-file {path}: {exc.strerror}") from None
    except msgspec.ValidationError as exc:
        raise ConfigError(
            f"--skip-file {path}: {exc}; expected a JSON list of [item, seed] pairs, "
            'e.g. [["USB-C cable", 3]]'
        ) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"--skip-file {path}: not JSON ({exc})") from None


class _Rooms:
    """What a buyer process asked the broker for and heard back: its open_rooms requests,
    the rooms they opened (or that it took back), which of them closed. Every change sets
    `changed` (a fresh event after each)."""

    def __init__(self, *, resuming: bool, stream: bool = False) -> None:
        self.stream = stream  # each room's outcome as a JSON line as it closes
        self.sent: set[UUID] = set()  # request ids
        self.pending: set[UUID] = set()  # sent, not yet answered
        self.requests: dict[UUID, OpenRooms] = {}  # the pending ones, to send again
        # A welcome came while requests were pending: a broker that restarted may never
        # have seen them. Sent again (the broker answers a repeat by request_id, opening
        # nothing twice), until answered.
        self.resend = False
        self.all_sent = False
        self.ours: set[UUID] = set()
        self.taken_back = not resuming  # the welcome listing the rooms to take back came
        self.session_id: UUID | None = None
        self.closed: dict[UUID, RoomClosed] = {}
        self.ended_unseen: set[UUID] = set()  # ended while their room.closed was lost
        self.rejected: list[Rejected] = []
        self.changed = anyio.Event()
        # The sellers of our rooms (agent id -> handle), when each was first seen in a
        # room, and those heard from: a seller never heard from may not have joined.
        self.sellers: dict[str, str] = {}
        self.seen_at: dict[str, float] = {}
        self.heard_from: set[str] = set()
        self.told_silent: set[str] = set()
        self.round_timeout = 30.0
        self.join_hint = "mams seller --scenario FILE"

    def ended(self) -> set[UUID]:
        """Our rooms that have ended (heard closed, or ended while the broker restarted)."""
        return self.ours & (self.closed.keys() | self.ended_unseen)

    def finished(self) -> bool:
        return bool(self.rejected) or (
            self.all_sent
            and not self.pending
            and self.taken_back
            and self.ours <= self.closed.keys() | self.ended_unseen
        )

    def touch(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    def silent(self, *, seen_before: float) -> set[str]:
        """Sellers of our rooms never heard from (nor reported yet), first seen in a room
        before `seen_before` (anyio time)."""
        return {
            a
            for a, at in self.seen_at.items()
            if a not in self.heard_from and a not in self.told_silent and at <= seen_before
        }

    def note_silent(
        self,
        out: Console,
        round_: int | None = None,
        *,
        only: set[str] | None = None,
        seen_before: float | None = None,
    ) -> None:
        """Say which sellers of our rooms have never answered (all, those of `only`, or
        those first seen before `seen_before`): most likely they have not joined the
        market, and every round waits its whole deadline for them. Each is named once."""
        now = anyio.current_time()
        silent = self.silent(seen_before=now if seen_before is None else seen_before)
        if only is not None:
            silent &= only
        if not silent:
            return
        self.told_silent |= silent
        handles = sorted(self.sellers.get(a, a) for a in silent)
        who = untrusted(", ".join(handles))
        said = (
            f"round {round_} closed at its deadline without {who}, never heard from in any room"
            if round_
            else f"no answer yet from {who} in any room"
        )
        out.print(
            f"{said}: have they joined the market? Each round waits up to "
            f"{self.round_timeout:g} s for every seller; start one with: "
            f"{untrusted(f'{self.join_hint} --handle {handles[0]}')}",
            soft_wrap=True,  # one line, the command whole
        )

    def hear(self, message: InboxMessage, out: Console, agent_id: str) -> None:
        match message:
            case Welcome(rooms=rooms) if not self.taken_back:
                # Each comes with its recap, so the brain goes on from where it was.
                self.taken_back = True
                self.ours.update(rooms)
                out.print(f"resuming {len(rooms)} open room(s) of {untrusted(agent_id)}")
            case Welcome(rooms=rooms):
                # A buyer is only ever in its own rooms. One a welcome lists that we never
                # heard of: the broker restarted after opening it, before telling us.
                if (unknown := set(rooms) - self.ours) and self.pending:
                    self.ours |= unknown
                self.resend = self.resend or bool(self.pending)
                # One of ours missing from it has ended while its room.closed was lost (a
                # broker crash between commit and delivery). The outcome is in the log.
                self.ended_unseen |= self.ours - set(rooms) - self.closed.keys()
            case RoomsOpened(request_id=request_id) if request_id in self.sent:
                if request_id not in self.pending:
                    return  # the answer to a request sent again, heard before
                self.pending.discard(request_id)
                self.requests.pop(request_id, None)
                self.ours.update(message.negotiation_ids)
                self.session_id = self.session_id or message.session_id
                out.print(
                    f"opened {len(message.negotiation_ids)} room(s) in session {message.session_id}"
                )
            case Rejected(request_id=request_id) if request_id in self.sent:
                self.rejected.append(message)
            case BuyerRoomOpened(sellers=peers):
                now = anyio.current_time()
                for peer in peers:
                    self.sellers.setdefault(peer.agent_id, peer.handle)
                    self.seen_at.setdefault(peer.agent_id, now)
                return
            case Recap(message=SellerMessage(seller=peer)):
                self.heard_from.add(peer.agent_id)
                return
            case TurnStarted(unanswered=silent, round=n) if silent:
                # A round closed at its deadline without them: say so now if they have
                # never answered at all (they may not have joined the market).
                self.note_silent(out, n - 1, only=set(silent))
                return
            case SellerMessage(seller=peer, text=text, offer=offer, round=n):
                self.heard_from.add(peer.agent_id)
                if self.stream:
                    return
                price = f"  \\[offer {fmt(offer.unit_price)}]" if offer else ""
                out.print(f"r{n} {untrusted(peer.handle)}: {untrusted(text)}{price}")
            case RoomClosed(negotiation_id=nid) if nid not in self.closed:
                self.closed[nid] = message
                if self.stream:
                    sys.stdout.write(msgspec.json.encode(_closed_json(nid, message)).decode())
                    sys.stdout.write("\n")
                    sys.stdout.flush()
            case _:
                return
        self.touch()


def _closed_json(nid: UUID, closed: RoomClosed) -> dict[str, Any]:
    """A room's outcome as `mams buyer --json` (and `--stream`) prints it."""
    outcome = msgspec.to_builtins(closed.outcome)
    return {"negotiation_id": str(nid), "outcome": outcome, "status": closed.status}


def open_requests(
    options: PlanOptions,
    *,
    scenario: Scenario | None,
    session_id: UUID | None,
    items: Sequence[str] = (),
    skip: Collection[tuple[str, int | None]] = (),
) -> list[OpenRooms]:
    """The open_rooms a buyer sends for this plan: one for every room (the broker plans
    it), or with `options.rooms_at_once` one per room of the plan (`domain.plan`, as the
    broker would plan it), which `_open_all` sends as rooms end. Only the first carries an
    inline `scenario`: its answer names the session the others then use. Raises
    ConfigError (a flag out of range, an item unknown, or no items to plan with)."""
    for problem in options.problems():
        raise ConfigError(f"--{problem.path.replace('_', '-')} {problem.message}")
    inline = scenario_to_raw(scenario) if scenario else None
    if options.rooms_at_once is None:
        request = OpenRooms(
            request_id=uuid.uuid4(),
            session_id=session_id,
            scenario=inline,
            items=tuple(items),
            seed=options.seed,
            runs=options.runs,
            skip=tuple(skip),
            max_rounds=options.max_rounds,
            round_timeout=options.round_timeout,
        )
        return [request]
    try:
        if scenario is not None:
            items = [i.item_name for i in pick_items(scenario, items)]
        elif not items:
            raise ConfigError(
                "--rooms-at-once with --session needs the items named: --item NAME for each "
                "(or give --scenario FILE)"
            )
        plan = plan_rooms(items, options, skip)
    except PlanError as exc:
        raise ConfigError(str(exc)) from None
    return [
        OpenRooms(
            request_id=uuid.uuid4(),
            session_id=session_id,
            scenario=inline if n == 0 else None,
            items=(room.item_name,),
            seed=room.seed,
            runs=1,
            max_rounds=options.max_rounds,
            round_timeout=options.round_timeout,
        )
        for n, room in enumerate(plan.rooms)
    ]


async def _open_all(
    actor: AgentActor, requests: list[OpenRooms], at_once: int | None, rooms: _Rooms
) -> None:
    """Send the requests: all at once, or keeping at most `at_once` rooms open (the rooms
    taken back from a crashed buyer process count), the next as one ends."""
    window = Window(requests, at_once, already_open=len(rooms.ours))
    ended = len(rooms.ended())
    due = window.open_now()
    while due:
        for request in due:
            if request.session_id is None and request.scenario is None:
                # The session the first request stored.
                while rooms.session_id is None and not rooms.rejected:
                    await rooms.changed.wait()
                request = msgspec.structs.replace(request, session_id=rooms.session_id)
            if rooms.rejected:
                return
            rooms.sent.add(request.request_id)
            rooms.pending.add(request.request_id)
            rooms.requests[request.request_id] = request
            await actor.bus.publish(actor.subjects.outbox(actor.agent), encode(request))
        due = []
        while window.waiting and not due:
            await rooms.changed.wait()
            if rooms.rejected:
                return
            now_ended = len(rooms.ended())
            for _ in range(now_ended - ended):
                due += window.ended()
            ended = now_ended
    rooms.all_sent = True
    rooms.touch()


async def _send_again(actor: AgentActor, rooms: _Rooms) -> None:
    """Send the unanswered open_rooms again whenever a welcome finds some pending: an
    open_rooms in flight when a broker died is otherwise lost, and its rooms never open."""
    while True:
        await rooms.changed.wait()
        if not rooms.resend:
            continue
        rooms.resend = False
        again = [rooms.requests[r] for r in list(rooms.pending) if r in rooms.requests]
        if again:
            log.info("buyer.requests_sent_again", requests=len(again))
        for request in again:
            await actor.bus.publish(actor.subjects.outbox(actor.agent), encode(request))


def hear_safely(rooms: _Rooms, message: InboxMessage, out: Console, agent_id: str) -> bool:
    """`rooms.hear(message)`, which no exception leaves: one message, whatever it holds,
    must not stop the buyer, so what it cannot handle is logged with the reason and the
    next message is heard as usual. False if stdout's reader is gone (then stop)."""
    try:
        rooms.hear(message, out, agent_id)
    except (BrokenPipeError, SystemExit):  # rich says SystemExit: stdout's reader is gone
        return False
    except Exception as exc:
        log.warning(
            "buyer.message_failed",
            kind=type(message).__name__,
            negotiation_id=str(getattr(message, "negotiation_id", "")) or None,
            reason=f"{type(exc).__name__}: {exc}",
            then="ignored it; going on with the next message",
        )
        rooms.touch()  # it may have changed the rooms before it failed
    return True


SILENT_CHECK_EVERY = 1.0


async def _watch_silent(rooms: _Rooms, out: Console) -> None:
    """Name the sellers of our rooms that have not answered a third of a round's deadline
    after their room opened (so a buyer does not wait a whole deadline without a word)."""
    after = max(SILENT_CHECK_EVERY, rooms.round_timeout / 3)
    while True:
        await anyio.sleep(SILENT_CHECK_EVERY)
        try:
            rooms.note_silent(out, seen_before=anyio.current_time() - after)
        except (BrokenPipeError, SystemExit):  # stdout's reader is gone
            return


async def cmd_buyer(args: argparse.Namespace, out: Console) -> int:
    """Open the session's rooms (or, with --resume, take back the open rooms a crashed
    buyer process left; with --resume and --skip-file, both), negotiate them, print the
    outcomes, exit."""
    if bool(args.scenario) == bool(args.session):
        raise ConfigError("give --scenario FILE or --session SESSION_ID (one of them)")
    options = PlanOptions(
        max_rounds=args.max_rounds,
        round_timeout=args.round_timeout,
        seed=args.seed,
        runs=args.runs,
        rooms_at_once=args.rooms_at_once,
    )
    resuming = bool(args.resume)
    scenario = load_scenario(Path(args.scenario)) if args.scenario else None
    opening = not resuming or args.skip_file is not None
    requests = []
    if opening:
        requests = open_requests(
            options,
            scenario=scenario,
            session_id=args.session,
            items=args.item,
            skip=read_skip_file(Path(args.skip_file)) if args.skip_file else (),
        )
    model = args.model or (scenario.buyer.model if scenario else "auto")
    agent_id = scenario.buyer.agent_id if scenario else args.agent
    url = _nats_url(args)
    brain = make_buyer_brain(resolve_model(model))
    bus = await NatsBus.connect(url, name=f"{args.market}-{agent_id}")
    welcomed = anyio.Event()
    rooms = _Rooms(resuming=resuming, stream=args.stream)
    rooms.session_id = args.session

    orphan = anyio.Event()  # set if the supervising mams run --processes is gone

    rooms.round_timeout = args.round_timeout
    rooms.join_hint = f"mams seller --market {args.market} --scenario {args.scenario or 'FILE'}"

    def on_message(message: InboxMessage) -> None:
        if isinstance(message, Welcome):
            welcomed.set()
        if not hear_safely(rooms, message, out, agent_id):
            orphan.set()
            rooms.touch()

    actor = AgentActor(
        bus, Subjects(prefix=args.market), agent_id, brain, "buyer", on_message=on_message
    )
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(actor.run)
            await _join(actor, welcomed, url)
            tg.start_soon(_keep_saying_hello, actor)

            async def watch() -> None:
                await _until_orphaned()
                orphan.set()
                rooms.touch()

            tg.start_soon(watch)
            tg.start_soon(_watch_silent, rooms, out)
            tg.start_soon(_open_all, actor, requests, options.rooms_at_once, rooms)
            tg.start_soon(_send_again, actor, rooms)
            while not (rooms.finished() or orphan.is_set()):
                await rooms.changed.wait()
            tg.cancel_scope.cancel()
    finally:
        await _close(bus)
    if rooms.rejected:
        raise ConfigError(f"the broker refused to open the rooms: {rooms.rejected[0].reason}")
    if orphan.is_set():
        raise ConfigError("the supervising mams run is gone; stopped with rooms still open")
    results = [_closed_json(nid, c) for nid, c in rooms.closed.items()]
    for nid, c in [] if args.stream else rooms.closed.items():
        outcome = describe_outcome(c.outcome) if c.outcome else "closed"
        out.print(f"{nid}: {c.status}: {outcome}")
    for nid in sorted(rooms.ended_unseen - rooms.closed.keys()):
        out.print(f"{nid}: ended while the broker was restarting; `mams replay {nid}` shows it")
        results.append({"negotiation_id": str(nid), "outcome": None, "status": "unknown"})
    if resuming and not opening and not rooms.ours:
        out.print(f"no open rooms of {agent_id} on market {args.market!r}: nothing to resume")
    if args.json:
        session = rooms.session_id  # --resume --scenario: not known
        sys.stdout.write(
            msgspec.json.encode(
                {"session_id": str(session) if session else None, "negotiations": results}
            ).decode()
            + "\n"
        )
    return 0


def add_parsers(sub: Any) -> None:
    """The broker, seller and buyer subcommands."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--nats", help="NATS URL (default: $NATS_URL)")
        p.add_argument(
            "--market",
            default="mams",
            help="market name, the subject prefix every process shares (default mams)",
        )

    b = sub.add_parser("broker", help="run the broker of a market (needs the database)")
    common(b)
    b.add_argument(
        "--no-resume",
        action="store_true",
        help="do not resume the open negotiations found in the log on start (by default it "
        "resumes those whose broker is gone, never a live broker's)",
    )
    b.add_argument(
        "--resume-session",
        type=_session_id,
        metavar="SESSION_ID",
        help="resume only this session's open negotiations (those whose broker is gone), "
        "as `mams run --session ID --resume --processes` does",
    )
    b.add_argument(
        "--configurer",
        type=_configurer,
        action="append",
        default=[],
        metavar="HANDLE",
        help="let this agent (e.g. @Buyer) open rooms for a scenario it sends whole "
        "(`mams buyer --scenario`), i.e. set sellers' private terms; repeatable. Without it "
        "agents may only open rooms of sessions the operator stored (`mams buyer --session`)",
    )
    b.add_argument(
        "--commit-lanes",
        type=_lanes,
        default=2,
        metavar="N",
        help="commit to PostgreSQL on N connections side by side (rooms split by id; each "
        "room still in order; default 2). More lanes, more throughput while the database "
        "has cores to spare; 1 costs the least CPU per message at light load",
    )
    add_durability(b)
    b.add_argument(
        "--abort-on-exit",
        action="store_true",
        help="on SIGTERM/SIGINT record open negotiations as aborted (default: leave them "
        "open for the next broker to resume)",
    )
    m = sub.add_parser(
        "monitor", help="grade a market's negotiations live (an observer; needs the database)"
    )
    common(m)
    s = sub.add_parser("seller", help="run one seller of a scenario as its own process")
    common(s)
    s.add_argument("--scenario", required=True, help="the scenario file naming this seller")
    s.add_argument("--handle", required=True, help="which seller, e.g. @TechMart")
    s.add_argument("--model", help="brain override: baseline, auto or provider:model")
    u = sub.add_parser("buyer", help="run the buyer: open the rooms, negotiate, print outcomes")
    common(u)
    u.add_argument("--scenario", help="scenario file (stored by the broker as a new session)")
    u.add_argument("--session", type=_session_id, help="a stored session's id")
    u.add_argument("--agent", default="buyer", help="the buyer's agent id with --session")
    u.add_argument("--item", action="append", default=[], help="only this item (repeatable)")
    u.add_argument("--model", help="brain override: baseline, auto or provider:model")
    u.add_argument("--max-rounds", type=int, default=DEFAULT_MAX_ROUNDS)
    u.add_argument("--round-timeout", type=float, default=DEFAULT_ROUND_TIMEOUT)
    u.add_argument("--seed", type=int, default=None)
    u.add_argument(
        "--runs",
        type=int,
        default=DEFAULT_RUNS,
        metavar="N",
        help="negotiate every item N times at once, run r with seed + r (default 1)",
    )
    u.add_argument(
        "--rooms-at-once",
        type=int,
        metavar="N",
        help="keep at most N rooms open, opening the next as one ends (default: all at "
        "once); with --session, name the items (--item)",
    )
    u.add_argument("--json", action="store_true")
    u.add_argument(
        "--stream",
        action="store_true",
        help="print each room's outcome as one JSON line as it closes (the shape of an "
        "entry of --json's negotiations) instead of every seller message",
    )
    u.add_argument(
        "--resume",
        action="store_true",
        help="after this buyer's process died: take back its open rooms (each with its "
        "conversation so far) instead of opening new ones (with --skip-file: as well)",
    )
    u.add_argument(
        "--skip-file",
        metavar="FILE",
        help="a JSON list of [item, seed] pairs not to open (rooms the session already "
        "has), as `mams run --resume --processes` writes it",
    )


# -- supervisor: `mams run --processes` --------------------------------------------------------
async def _lines_of(stream: anyio.abc.ByteReceiveStream) -> AsyncIterator[str]:
    """A child's output, line by line (a line may arrive in several chunks)."""
    buffered = ""
    async for chunk in stream:
        buffered += chunk.decode(errors="replace")
        *done, buffered = buffered.split("\n")
        for line in done:
            yield line
    if buffered:
        yield buffered


async def _child_nats_urls(
    nats_url: str, subjects: Subjects, buyer: str, sellers: list[str]
) -> tuple[str, str, dict[str, str]]:
    """NATS_URL of the broker, the buyer and each seller (by agent id). On the embedded
    nats-server this run started, each gets a user of its own with its role's permissions
    (`mams.bus.auth`), so a child can do only what its role may; on a server named by
    NATS_URL, that URL serves all (its users are the operator's, `mams creds`)."""
    from mams.bus.embedded import EmbeddedNats

    server = EmbeddedNats.serving(nats_url)
    if server is None:
        return nats_url, nats_url, dict.fromkeys(sellers, nats_url)
    issued: list[Credentials] = await server.issue(
        subjects, [("broker", None), ("buyer", buyer), *(("seller", s) for s in sellers)]
    )
    urls = [c.url(server.address) for c in issued]
    return urls[0], urls[1], dict(zip(sellers, urls[2:], strict=True))


def _how_it_ended(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


class _Child:
    """One supervised `mams` process whose stdout we read line by line."""

    def __init__(self, name: str, process: anyio.abc.Process) -> None:
        self.name = name
        self.process = process
        self.lines: list[str] = []  # what wait_for_line read
        assert process.stdout is not None
        self.output = _lines_of(process.stdout)  # its stdout from where reading stopped

    async def wait_for_line(self, marker: str) -> None:
        """Read stdout until a line containing `marker`, keeping what was read. Callers
        bound it with a deadline."""
        async for line in self.output:
            self.lines.append(line)
            if marker in line:
                return
        raise ConfigError(f"{self.name} exited before it was ready: {self.lines[-5:]}")

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.process.returncode is None:
            self.process.terminate()
            with anyio.move_on_after(10):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()


async def supervise(
    *,
    scenario: Scenario,
    session_id: UUID,
    items: list[str],
    nats_url: str,
    dsn: str,
    options: RunOptions,
    out: Console,
    durability: str = DURABLE,
    resume: bool = False,
    skip: Collection[tuple[str, int | None]] | None = None,
    on_ended: Callable[[bool], None] | None = None,
) -> None:
    """Run broker, sellers and buyer as separate OS processes on one market; return when
    the buyer has finished (its rooms are all closed).

    `resume`: the broker first takes over the session's interrupted rooms (no live broker)
    and the buyer takes them back. `skip`: (item, seed) pairs the session already has, not
    opened again; None opens nothing new (with `resume`: only go on with the interrupted).
    `options`: the plan the buyer asks for (with `rooms_at_once`, it keeps at most that
    many rooms open, the next as one ends) and the models' overrides.
    `on_ended`: called (deal or not) as each room ends, instead of printing what the buyer
    hears (`mams buyer --stream`).

    Each child is `mams broker|seller|buyer ...`, forked from a warm fork server that has
    imported the CLI and the study's SDKs (`mams.forkserver`: a fork instead of an
    interpreter start and an SDK import per child; still this process's child, in a
    session of its own), or started afresh as `python -P -m mams ...` with
    MAMS_FORK_SERVER=0 or where fork servers are not available (anything but Linux).
    Credentials reach each child in its environment, never its argv (world-readable in
    /proc): NATS_URL with its own user (see `_child_nats_urls`), and DATABASE_URL for the
    broker alone. If the broker process dies while the run goes on, the other children are
    stopped and `ConfigError` names the command that resumes the session's open rooms."""
    async with contextlib.AsyncExitStack() as stack:
        await _supervise(
            stack,
            scenario=scenario,
            session_id=session_id,
            items=items,
            nats_url=nats_url,
            dsn=dsn,
            options=options,
            out=out,
            durability=durability,
            resume=resume,
            skip=skip,
            on_ended=on_ended,
        )


async def _supervise(
    stack: contextlib.AsyncExitStack,
    *,
    scenario: Scenario,
    session_id: UUID,
    items: list[str],
    nats_url: str,
    dsn: str,
    options: RunOptions,
    out: Console,
    durability: str,
    resume: bool,
    skip: Collection[tuple[str, int | None]] | None,
    on_ended: Callable[[bool], None] | None,
) -> None:
    market = f"mams-{uuid.uuid4().hex[:8]}"
    wanted = set(items)
    sellers = [s for s in scenario.sellers if any(s.stock(i) is not None for i in wanted)]
    common = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    common.update(
        {
            "MAMS_LOG_LEVEL": os.environ.get("MAMS_LOG_LEVEL", "warning"),
            SUPERVISOR_ENV: str(os.getpid()),
        }
    )
    # The fork server first: it imports while credentials are issued and the broker starts.
    forks: list[ForkServer] = []
    if forkserver.available():
        preload = forkserver.preload_for(resolve_models(scenario, options).values())
        room = 8192 + len(dsn) + sum(len(i) + 8 for i in items)
        forks.append(await stack.enter_async_context(forkserver.fork_server(preload, common, room)))
    broker_url, buyer_url, seller_urls = await _child_nats_urls(
        nats_url, Subjects(prefix=market), scenario.buyer.agent_id, [s.agent_id for s in sellers]
    )
    exe = [sys.executable, "-P", "-m", "mams"]  # -P: never the cwd first on sys.path
    children: list[_Child] = []

    async def spawn(name: str, *argv: str, nats: str, database: str | None = None) -> _Child:
        env = {**common, "NATS_URL": nats}
        if database is not None:
            env["DATABASE_URL"] = database
        # Its own session: a Ctrl-C at the terminal reaches the supervisor alone, which
        # stops the children in order (buyer, sellers, then the broker, which records
        # the open rooms as aborted while the bus and the database are still up).
        process: anyio.abc.Process | None = None
        if forks:  # forked warm (mams.forkserver), else started afresh
            try:
                process = await forks[0].spawn(argv, env)
            except forkserver.ForkServerError as exc:
                log.warning("processes.fork_server_failed", error=str(exc), then="exec")
                forks.clear()
        if process is None:
            process = await anyio.open_process(
                [*exe, *argv], env=env, stdout=-1, stderr=None, start_new_session=True
            )
        child = _Child(name, process)
        children.append(child)
        return child

    async def sellers_and_buyer(tmp: str, scenario_file: Path) -> None:
        for seller_config in sellers:
            handle = seller_config.handle
            argv = ["seller", "--scenario", str(scenario_file), "--handle", handle]
            argv += ["--market", market]
            if options.seller_model:
                argv += ["--model", options.seller_model]
            seller = await spawn(handle, *argv, nats=seller_urls[seller_config.agent_id])
            with anyio.fail_after(READY_TIMEOUT):
                await seller.wait_for_line("ready")
            out.print(f"[dim]process seller {handle} (pid {seller.process.pid}) ready[/dim]")
        argv = [
            "buyer",
            "--session",
            str(session_id),
            "--agent",
            scenario.buyer.agent_id,
            "--market",
            market,
            "--max-rounds",
            str(options.max_rounds),
            "--round-timeout",
            repr(options.round_timeout),
            "--runs",
            str(options.runs),
        ]
        for item in items:
            argv += ["--item", item]
        if options.seed is not None:
            argv += ["--seed", str(options.seed)]
        if options.buyer_model:
            argv += ["--model", options.buyer_model]
        if options.rooms_at_once is not None:
            argv += ["--rooms-at-once", str(options.rooms_at_once)]
        if on_ended is not None:
            argv.append("--stream")
        if resume:
            argv.append("--resume")
        if skip is not None and (resume or skip):
            skip_file = Path(tmp) / "skip.json"
            write_skip_file(skip_file, skip)
            argv += ["--skip-file", str(skip_file)]
        buyer = await spawn("buyer", *argv, nats=buyer_url)
        out.print(f"[dim]process buyer (pid {buyer.process.pid}) negotiating...[/dim]")
        async for line in buyer.output:
            if on_ended is not None and line.startswith('{"negotiation_id"'):
                ended = msgspec.json.decode(line)
                on_ended((ended.get("outcome") or {}).get("type") == "deal")
                continue
            out.print(Text("[buyer] ", style="dim") + Text(line), highlight=False)
        code = await buyer.process.wait()
        if code != 0:
            raise ConfigError(f"the buyer process exited with status {code}")

    async with anyio.TemporaryDirectory() as tmp:
        scenario_file = Path(tmp) / "scenario.json"
        scenario_file.write_bytes(msgspec.json.encode(scenario_to_raw(scenario)))
        try:
            broker = await spawn(
                "broker",
                "broker",
                "--market",
                market,
                "--abort-on-exit",
                *(["--resume-session", str(session_id)] if resume else ["--no-resume"]),
                "--durability",
                durability,
                nats=broker_url,
                database=dsn,
            )
            with anyio.fail_after(READY_TIMEOUT):
                await broker.wait_for_line("broker ready")
            out.print(f"[dim]process broker (pid {broker.process.pid}) ready[/dim]")
            broker_died: list[int] = []
            failed: list[Exception] = []

            async def watch_broker(scope: anyio.CancelScope) -> None:
                # Without its broker the buyer and sellers would wait for ever (they say
                # hello again every few seconds to a broker that never comes back).
                broker_died.append(await broker.process.wait())
                scope.cancel()

            async def rest(scope: anyio.CancelScope) -> None:
                try:
                    await sellers_and_buyer(tmp, scenario_file)
                except Exception as exc:  # raised below, not wrapped in an ExceptionGroup
                    failed.append(exc)
                finally:
                    scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_broker, tg.cancel_scope)
                tg.start_soon(rest, tg.cancel_scope)
            if broker_died:
                raise ConfigError(
                    f"the broker process (pid {broker.process.pid}) died "
                    f"({_how_it_ended(broker_died[0])}) during the run; the session's open "
                    "rooms are interrupted, not lost: go on with "
                    f"`mams run --session {session_id} --resume --processes`"
                )
            if failed:
                raise failed[0]
        finally:
            with anyio.CancelScope(shield=True):
                for child in reversed(children):
                    await child.stop()
