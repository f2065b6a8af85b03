"""The red team's rig: a permissioned market under attack from one seller's credentials.

`hostile_market` starts a nats-server whose only users are the market's (per-agent
credentials and permissions from `bus/auth.py`, via `tests.auth.helpers.permissioned_market`),
a Broker on the test's PostgreSQL schema with a session store (`PgSessions`, as `mams
broker` runs it), the quality monitor, and the honest cast with baseline brains, each actor
on its own credentials. The attacker is a separate OS process (`tests/hostile/attacker.py`:
plain nats-py, no MAMS code) holding the credentials of the seller @Mallory, who stocks only
the "Screen protector" (a room of its own with @GadgetHub), so the honest rooms (the phone
case and the cable) never seat it.

What every test then checks (`HostileMarket.check_survived`): the broker, the honest agents
and the monitor are still up; the honest rooms ended with the outcomes the same rooms have
without any attacker (`baseline_outcomes`: same seeds, baseline brains, run on an in-memory
bus and log); every stream's seqs are 1..n and no event id is stored twice; the audit
`mams audit --all` runs (`storage.auditlog.audit_log`) finds nothing broken.
"""

from __future__ import annotations

import json
import sys
import tomllib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

import anyio
import asyncpg
import msgspec
import structlog.testing
from anyio.abc import TaskGroup, TaskStatus

from mams.actors.agent import AgentActor
from mams.actors.brains.base import BuyerBrain, SellerBrain
from mams.actors.brains.baseline import BaselineBuyer, BaselineSeller
from mams.actors.broker import Broker
from mams.actors.market import RunOptions, build_started, run_rooms
from mams.actors.monitor import QualityMonitor
from mams.bus.auth import Role
from mams.bus.base import Bus
from mams.bus.memory import InMemoryBus
from mams.bus.nats import NatsBus
from mams.bus.subjects import AgentId, Subjects
from mams.domain.config import Scenario, parse_scenario, parse_scenario_text
from mams.domain.events import NegotiationStarted
from mams.domain.messages import decode_committed
from mams.domain.negotiation import NegotiationState, evolve
from mams.processes import PgSessions
from mams.storage.audit import StreamReport
from mams.storage.auditlog import audit_log
from mams.storage.eventstore import InMemoryEventStore, PostgresEventStore
from tests.auth.helpers import Market, permissioned_market
from tests.processes.helpers import Cast, Child, cast, process_env

ATTACKER = "mallory"  # the seller whose real credentials the red team holds
ATTACKER_ITEM = "Screen protector"  # the only item it stocks (with @GadgetHub)
HONEST_ITEMS = ("iPhone 15 case", "USB-C cable")
HONEST_SEEDS = (11, 12, 13)
HONEST_SELLERS = ("gadgethub", "quicktech", "techmart")
ATTACKER_SCRIPT = Path(__file__).with_name("attacker.py")
WAIT = 90.0  # bound on the honest market and the attacker (slow shared CI); never a pause

MARKET = """
name = "hostile market (test)"

[buyer]
handle = "@Buyer"

[[buyer.items]]
item_name = "iPhone 15 case"
quantity = 2
min_price = 8.00
max_price = 14.00

[[buyer.items]]
item_name = "USB-C cable"
quantity = 3
min_price = 4.00
max_price = 9.00

[[buyer.items]]
item_name = "Screen protector"
quantity = 4
min_price = 5.00
max_price = 12.00

[[sellers]]
handle = "@TechMart"
style = "rude"
customer_retention_weight = 0.2
profit_maximization_weight = 0.8
[[sellers.inventory]]
item_name = "iPhone 15 case"
cost_price = 7.00
selling_price = 18.00
least_price = 11.00
[[sellers.inventory]]
item_name = "USB-C cable"
cost_price = 2.00
selling_price = 9.50
least_price = 8.50

[[sellers]]
handle = "@GadgetHub"
style = "neutral"
customer_retention_weight = 0.5
profit_maximization_weight = 0.5
[[sellers.inventory]]
item_name = "iPhone 15 case"
cost_price = 6.50
selling_price = 16.00
least_price = 10.00
[[sellers.inventory]]
item_name = "Screen protector"
cost_price = 3.00
selling_price = 11.00
least_price = 7.00

[[sellers]]
handle = "@QuickTech"
style = "sweet"
customer_retention_weight = 0.7
profit_maximization_weight = 0.3
[[sellers.inventory]]
item_name = "iPhone 15 case"
cost_price = 8.00
selling_price = 15.00
least_price = 12.50
[[sellers.inventory]]
item_name = "USB-C cable"
cost_price = 3.00
selling_price = 8.00
least_price = 6.00

[[sellers]]
handle = "@Mallory"
style = "sweet"
customer_retention_weight = 0.5
profit_maximization_weight = 0.5
[[sellers.inventory]]
item_name = "Screen protector"
cost_price = 2.00
selling_price = 10.00
least_price = 6.00
"""

# How a room ended, as compared across runs (sellers' replies within a round may be logged
# in arrival order, so the logs themselves are not compared).
OutcomeKey = tuple[str, str | None, Decimal | None, int | None, int]


def market_scenario() -> Scenario:
    """The market: the phone scenario's honest rooms plus the attacker's own item."""
    return parse_scenario_text(MARKET, fmt="toml")


def scenario_mapping() -> dict[str, Any]:
    """The market as the JSON mapping an `open_rooms` carries (prices as strings)."""
    raw: dict[str, Any] = tomllib.loads(MARKET)

    def strings(value: Any) -> Any:
        if isinstance(value, float):
            return f"{value:.2f}"
        if isinstance(value, dict):
            return {k: strings(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strings(v) for v in value]
        return value

    mapping: dict[str, Any] = strings(raw)
    return mapping


def forged_mapping() -> dict[str, Any]:
    """The market with @Mallory as its buyer (the real sellers, @Mallory not among them)."""
    forged = scenario_mapping()
    forged["buyer"]["handle"] = "@Mallory"
    forged["sellers"] = [s for s in forged["sellers"] if s["handle"] != "@Mallory"]
    return forged


def options(seed: int, *, max_rounds: int = 6, round_timeout: float = 30.0) -> RunOptions:
    """Baseline brains for everyone, whatever the environment offers."""
    return RunOptions(
        max_rounds=max_rounds,
        seed=seed,
        round_timeout=round_timeout,
        buyer_model="baseline",
        seller_model="baseline",
    )


def honest_starts(
    session_id: UUID, seeds: Sequence[int] = HONEST_SEEDS
) -> list[NegotiationStarted]:
    """The honest rooms: every honest item once per seed (none seats the attacker)."""
    scenario = market_scenario()
    return [
        build_started(scenario, session_id, scenario.buyer_item(item), options(seed))
        for seed in seeds
        for item in HONEST_ITEMS
    ]


def attacker_starts(
    session_id: UUID, seeds: Sequence[int], *, round_timeout: float = 3.0
) -> list[NegotiationStarted]:
    """Rooms of the attacker's item (it sits in each with @GadgetHub); short deadlines, since
    the attacker's answers are refused and its seat times out every round."""
    scenario = market_scenario()
    item = scenario.buyer_item(ATTACKER_ITEM)
    return [
        build_started(
            scenario, session_id, item, options(s, max_rounds=2, round_timeout=round_timeout)
        )
        for s in seeds
    ]


def key_of(started: NegotiationStarted) -> tuple[str, int | None]:
    return (started.item_name, started.seed)


def outcome_of(state: NegotiationState) -> OutcomeKey:
    outcome = state.outcome
    assert outcome is not None, f"room {state.started} has no outcome"
    return (outcome.type, outcome.seller, outcome.unit_price, outcome.quantity, outcome.rounds)


_BASELINE: dict[tuple[tuple[str, int | None], ...], dict[tuple[str, int | None], OutcomeKey]] = {}


def honest_brains() -> dict[str, BuyerBrain | SellerBrain]:
    brains: dict[str, BuyerBrain | SellerBrain] = {"buyer": BaselineBuyer()}
    brains.update({s: BaselineSeller() for s in HONEST_SELLERS})
    return brains


async def baseline_outcomes(
    starts: Sequence[NegotiationStarted],
) -> dict[tuple[str, int | None], OutcomeKey]:
    """The outcomes of these rooms without any attacker: the same rooms, seeds and brains on
    an in-memory bus and log (computed once per process)."""
    cache_key = tuple(sorted(key_of(s) for s in starts))
    if cache_key not in _BASELINE:
        shared = InMemoryBus()

        async def connect(name: str) -> Bus:
            return shared

        rooms = await run_rooms(
            [msgspec_replace_id(s) for s in starts],
            honest_brains(),
            connect=connect,
            store=InMemoryEventStore(),
            subjects=Subjects("baseline"),
        )
        _BASELINE[cache_key] = {
            key_of(s): outcome_of(r.state) for s, r in zip(starts, rooms, strict=True)
        }
    return dict(_BASELINE[cache_key])


def msgspec_replace_id(started: NegotiationStarted) -> NegotiationStarted:
    """The same room under a fresh id (the baseline's log is its own)."""
    return msgspec.structs.replace(started, negotiation_id=uuid.uuid4())


# -- the supervised actors -------------------------------------------------------------------
@dataclass
class Supervised:
    """An actor's `run` in a task of its own; `error` is what it died of, if it did."""

    name: str
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    error: BaseException | None = None
    ended: anyio.Event = field(default_factory=anyio.Event)

    @property
    def up(self) -> bool:
        return not self.ended.is_set()


async def _supervise(
    sup: Supervised,
    run: Callable[..., Awaitable[None]],
    on_death: anyio.Event,
    *,
    task_status: TaskStatus[None],
) -> None:
    started = False

    class _Started:  # passes the actor's "started" on, noting that it came
        def started(self, value: object = None) -> None:
            nonlocal started
            started = True
            task_status.started()

    try:
        with sup.scope:
            await run(task_status=_Started())
    except Exception as exc:  # the actor died: the test reports it, never swallows it
        sup.error = exc
        if not started:
            raise
    finally:
        sup.ended.set()
        if not sup.scope.cancel_called:
            on_death.set()


@dataclass
class Attack:
    """What the attacker process printed: its inbox, the server's errors, its steps."""

    child: Child
    lines: list[dict[str, Any]]

    @property
    def inbox(self) -> list[dict[str, Any]]:
        return [line["inbox"] for line in self.lines if "inbox" in line]

    @property
    def errors(self) -> list[str]:
        return [line["error"] for line in self.lines if "error" in line]

    def steps(self, op: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("step") == op]

    def replies(self, request_id: UUID | str) -> list[dict[str, Any]]:
        """Its inbox's answers (rejected / rooms.opened) to one request."""
        return [m for m in self.inbox if m.get("request_id") == str(request_id)]

    def rejected(self, request_id: UUID | str) -> dict[str, Any]:
        """The Rejected reply to `request_id`; fails naming what came instead."""
        replies = self.replies(request_id)
        assert [m.get("type") for m in replies] == ["rejected"], (
            f"expected one rejected reply to {request_id}, got {replies}; "
            f"attacker's output:\n{self.child.describe()}"
        )
        return replies[0]


@dataclass
class HostileMarket:
    market: Market
    subjects: Subjects
    pool: asyncpg.Pool
    store: PostgresEventStore
    procs: Cast
    tmp_path: Path
    tg: TaskGroup
    logs: list[MutableMapping[str, Any]]
    broker_kwargs: dict[str, Any]
    died: anyio.Event = field(default_factory=anyio.Event)
    broker: Broker | None = None
    broker_sup: Supervised | None = None
    actors: dict[str, Supervised] = field(default_factory=dict)
    buses: list[Bus] = field(default_factory=list)
    states: dict[UUID, NegotiationState] = field(default_factory=dict)
    changed: anyio.Event = field(default_factory=anyio.Event)
    session_id: UUID = field(default_factory=uuid.uuid4)
    attacker_session: UUID = field(default_factory=uuid.uuid4)
    _plans: int = 0

    # -- connections -------------------------------------------------------------------
    async def bus(self, name: str) -> Bus:
        """A NATS connection with `name`'s own credentials."""
        bus = await NatsBus.connect(self.market.url_for(name), name=name)
        self.buses.append(bus)
        return bus

    async def _start(self, name: str, run: Callable[..., Awaitable[None]]) -> Supervised:
        sup = Supervised(name)
        await self.tg.start(_supervise, sup, run, self.died)
        return sup

    async def start_broker(self, *, resume: bool = False) -> Broker:
        """A broker (its own credentials, the test's PostgreSQL log and session store, open
        rooms left open when it stops, as `mams broker`); with `resume`, it first takes
        over the open rooms of the log, as a restarted `mams broker` does."""
        broker = Broker(
            await self.bus("broker"),
            self.store,
            self.subjects,
            sessions=PgSessions(self.pool),
            abort_on_shutdown=False,
            **self.broker_kwargs,
        )
        if resume:
            await broker.resume()
        self.broker = broker
        self.broker_sup = await self._start("broker", broker.run)
        return broker

    async def stop_broker(self) -> None:
        """Stop the broker (as SIGTERM does `mams broker`: what it decided is committed)."""
        assert self.broker_sup is not None
        self.broker_sup.scope.cancel()
        with anyio.fail_after(WAIT):
            await self.broker_sup.ended.wait()

    async def restart_broker(self) -> Broker:
        """Stop the broker and start another that resumes the open rooms."""
        await self.stop_broker()
        return await self.start_broker(resume=True)

    # -- rooms ---------------------------------------------------------------------------
    async def open(self, starts: Sequence[NegotiationStarted]) -> None:
        """Open these rooms with the broker (it must be up)."""
        self.assert_up()
        assert self.broker is not None
        for started in starts:
            self.states.setdefault(started.negotiation_id, NegotiationState())
            await self.broker.open(started)

    async def finish(
        self, starts: Sequence[NegotiationStarted]
    ) -> dict[tuple[str, int | None], OutcomeKey]:
        """Wait (bounded) until these rooms have ended; their outcomes. Fails at once,
        naming it, if the broker or any actor died meanwhile."""
        ids = {s.negotiation_id for s in starts}
        with anyio.fail_after(WAIT):
            while True:
                changed = self.changed = anyio.Event()  # set by the next event, from now
                self.assert_up()
                if all(self.states[nid].phase == "ended" for nid in ids):
                    break
                async with anyio.create_task_group() as tg:

                    async def either(event: anyio.Event) -> None:
                        await event.wait()
                        tg.cancel_scope.cancel()

                    tg.start_soon(either, changed)
                    tg.start_soon(either, self.died)
        return {key_of(s): outcome_of(self.states[s.negotiation_id]) for s in starts}

    async def run_honest(self, seeds: Sequence[int] = HONEST_SEEDS) -> None:
        """Open the honest rooms, wait for them, and check every outcome is what it is
        without an attacker."""
        starts = honest_starts(self.session_id, seeds)
        await self.open(starts)
        got = await self.finish(starts)
        assert got == await baseline_outcomes(starts), "an honest room's outcome changed"

    # -- the attacker --------------------------------------------------------------------
    def attacker(
        self, steps: Sequence[dict[str, Any]], *, deadline: float = WAIT, quiet_inbox: bool = False
    ) -> Child:
        """Start the attacker process (the seller @Mallory's credentials) with these steps
        (with `quiet_inbox`, it does not print each inbox message)."""
        self._plans += 1
        plan = {
            "quiet_inbox": quiet_inbox,
            "url": self.market.url_for(ATTACKER),
            "inbox": self.subjects.inbox(AgentId(ATTACKER)),
            "outbox": self.subjects.outbox(AgentId(ATTACKER)),
            "deadline": deadline,
            "steps": list(steps),
        }
        path = self.tmp_path / f"attack-{self._plans}.json"
        path.write_text(json.dumps(plan))
        return self.procs.spawn("attacker", [sys.executable, str(ATTACKER_SCRIPT), str(path)])

    def payload_file(self, name: str, data: bytes) -> str:
        """A file holding `data`, for a step's "file" (bytes no JSON string can carry)."""
        path = self.tmp_path / name
        path.write_bytes(data)
        return str(path)

    async def attack(self, steps: Sequence[dict[str, Any]], *, deadline: float = WAIT) -> Attack:
        """Run the attacker to its end (bounded); what it saw."""
        child = self.attacker(steps, deadline=deadline)
        code = await child.wait(within=deadline + 30)
        assert code == 0, f"the attacker process failed: {child.describe()}"
        return finished_attack(child)

    async def attacker_in_rooms(
        self,
        steps: Sequence[dict[str, Any]],
        *,
        seeds: Sequence[int] = (21,),
        brain: str = "red team",
    ) -> tuple[Child, list[NegotiationStarted]]:
        """Start the attacker (it says hello with `brain`, then runs `steps`) and, once it
        is known, open rooms of its item seating it (one per seed); returns it and them."""
        child = self.attacker([{"op": "hello", "brain": brain}, {"op": "ready"}, *steps])
        await child.wait_for('"ready"', within=WAIT)
        starts = attacker_starts(self.session_id, seeds)
        await self.open(starts)
        return child, starts

    # -- checks ------------------------------------------------------------------------------
    def assert_up(self) -> None:
        """The broker, the honest agents and the monitor are all serving."""
        dead = [
            f"{s.name}: {s.error!r}"
            for s in [self.broker_sup, *self.actors.values()]
            if s is not None and not s.up
        ]
        assert not dead, f"died under attack: {dead}"

    def refusals(self, event: str = "broker.request_rejected") -> list[MutableMapping[str, Any]]:
        """The broker's log lines of this event about the attacker."""
        return [e for e in self.logs if e.get("event") == event and e.get("agent") == ATTACKER]

    def dropped(self) -> list[MutableMapping[str, Any]]:
        """What the broker dropped of the attacker's messages, with its reasons."""
        return self.refusals("broker.message_dropped")

    async def streams_whole(self) -> None:
        """Every stream's seqs are 1..n; no event id is stored twice."""
        ids = await self.store.stream_ids()
        streams = await self.store.read_streams(ids)
        event_ids: list[UUID] = []
        for sid in ids:
            events = streams.get(sid, [])
            assert [e.seq for e in events] == list(range(1, len(events) + 1)), sid
            event_ids += [e.event_id for e in events]
        assert len(event_ids) == len(set(event_ids)), "an event id is stored twice"

    async def audit(self) -> list[StreamReport]:
        """`mams audit --all` on this log: the broken streams' reports (none when clean)."""
        runs = await self.pool.fetch(
            "SELECT negotiation_id, status <> 'running' AS finished FROM negotiation_runs"
        )
        ids = await self.store.stream_ids()
        ids += [r["negotiation_id"] for r in runs if r["negotiation_id"] not in set(ids)]
        finished = {r["negotiation_id"] for r in runs if r["finished"]}
        recorded = {r["negotiation_id"] for r in runs}
        reports: list[StreamReport] = []
        async for chunk in audit_log(self.store, ids, finished=finished, recorded=recorded):
            reports += chunk
        return [r for r in reports if not r.ok]

    async def check_survived(self) -> None:
        """Everyone up, nothing lost or doubled, the audit clean."""
        self.assert_up()
        await self.streams_whole()
        broken = await self.audit()
        assert broken == [], f"the audit found broken streams: {broken}"


def finished_attack(child: Child) -> Attack:
    lines = [json.loads(line) for line in child.out().splitlines() if line.strip()]
    assert lines, f"the attacker printed nothing: {child.describe()}"
    assert lines[-1].get("done"), f"the attacker did not finish: {child.describe()}"
    return Attack(child, lines)


async def _follow(rig: HostileMarket, *, task_status: TaskStatus[None]) -> None:
    """Fold every committed event of the market into `rig.states` (as run_rooms does)."""
    observer = await rig.bus("observer")
    feed = await observer.subscribe(rig.subjects.all_events(), max_pending=1_000_000)
    task_status.started()
    async for msg in feed:
        committed = decode_committed(msg.data)
        state = rig.states.setdefault(committed.negotiation_id, NegotiationState())
        rig.states[committed.negotiation_id] = evolve(state, committed.event)
        rig.changed.set()


def market_cast() -> dict[str, Role]:
    cast_: dict[str, Role] = {"broker": "broker", "observer": "observer", "buyer": "buyer"}
    cast_.update({s: "seller" for s in (*HONEST_SELLERS, ATTACKER)})
    return cast_


@asynccontextmanager
async def hostile_market(
    tmp_path: Path,
    db: tuple[asyncpg.Pool, PostgresEventStore],
    **broker_kwargs: Any,
) -> AsyncIterator[HostileMarket]:
    """The market under attack (see the module docstring), its honest cast joined; the
    broker's and agents' logs captured in `logs`. `broker_kwargs` go to the Broker."""
    pool, store = db
    subjects = Subjects(f"h{uuid.uuid4().hex[:12]}")
    session_id = uuid.uuid4()  # the honest rooms' session, stored as an operator would
    await PgSessions(pool).save(session_id, market_scenario())
    # A session an operator stored with the attacker as its buyer: its requests pass the
    # role check, so the bounds on the request itself are what is tested with it.
    attacker_session = uuid.uuid4()
    await PgSessions(pool).save(attacker_session, parse_scenario(forged_mapping()))
    env = process_env("nats://unused", "postgresql://unused", tmp_path / "mams-data")
    async with permissioned_market(tmp_path, subjects, market_cast()) as m:
        with cast(tmp_path, env) as procs, structlog.testing.capture_logs() as logs:
            rig: HostileMarket | None = None
            try:
                async with anyio.create_task_group() as tg:
                    rig = HostileMarket(
                        m,
                        subjects,
                        pool,
                        store,
                        procs,
                        tmp_path,
                        tg,
                        logs,
                        broker_kwargs,
                        session_id=session_id,
                        attacker_session=attacker_session,
                    )
                    await tg.start(_follow, rig)
                    monitor = QualityMonitor(await rig.bus("observer"), store, subjects)
                    rig.actors["monitor"] = await rig._start("monitor", monitor.run)
                    broker = await rig.start_broker()
                    for agent_id, brain in honest_brains().items():
                        role: Literal["buyer", "seller"] = (
                            "buyer" if agent_id == "buyer" else "seller"
                        )
                        actor = AgentActor(await rig.bus(agent_id), subjects, agent_id, brain, role)
                        rig.actors[agent_id] = await rig._start(agent_id, actor.run)
                    with anyio.fail_after(WAIT):
                        await broker.joined({"buyer", *HONEST_SELLERS})
                    yield rig
                    tg.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    for bus in rig.buses if rig is not None else []:
                        with suppress(Exception):
                            await bus.close()
