"""`GET /api/negotiations/{id}/events` (api/stream.py): Server-Sent Events of each viewer's
own view, on a real uvicorn server in the test process over the real NATS and PostgreSQL.

Each viewer's stream is compared with the domain's visibility policy applied to the
stored log: a buyer or seller gets exactly its own words and what the broker delivers to
its agent (`domain.visibility.seen_by`), an observer every event whole, each under its
event's seq.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import anyio
import asyncpg
import httpx
import msgspec
import uvicorn
from starlette.requests import Request

from mams.actors.live import Live
from mams.api.app import Api, ApiError, create_app
from mams.api.auth import Viewer
from mams.domain.config import scenario_to_raw
from mams.domain.events import decode_event
from mams.domain.negotiation import INITIAL, evolve
from mams.domain.visibility import seen_by
from mams.storage.eventstore import PostgresEventStore
from tests.integration.helpers import nats_connect
from tests.integration.scenarios import phone

HEADER = "x-test-viewer"
_encoder = msgspec.json.Encoder(decimal_format="number")
ITEM = "USB-C cable"  # sold by @TechMart and @QuickTech


async def authenticate(request: Request) -> Viewer:
    """The test's tokens: `role[:agent][@session]` in a header (operator without one)."""
    text = request.headers.get(HEADER, "operator")
    text, _, session = text.partition("@")
    role, _, agent = text.partition(":")
    if role not in ("operator", "buyer", "seller", "observer"):
        raise ApiError(401, f"unknown test role {role!r}")
    return Viewer(
        role=role,  # type: ignore[arg-type]  # checked just above
        session_id=uuid.UUID(session) if session else None,
        agent=agent or None,
    )


@dataclass
class Server:
    base: str
    api: Api
    client: httpx.AsyncClient


@asynccontextmanager
async def serving(
    nats_url: str, pool: asyncpg.Pool, store: PostgresEventStore
) -> AsyncIterator[Server]:
    """The API (its own `Live`) on a real uvicorn server on a free loopback port."""
    live = Live(nats_connect(nats_url), store)
    api = Api(pool, store, live, authenticate=authenticate)
    config = uvicorn.Config(
        create_app(api),
        log_level="warning",
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it a keep-alive response's second write waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with anyio.create_task_group() as tg:
        await tg.start(live.run)
        # uvicorn shuts down by itself (closing its listener and connections) once told to:
        # cancelling it would leave its listener registered on a file descriptor the next
        # socket reuses.
        async with anyio.create_task_group() as web:
            web.start_soon(server.serve, [sock])
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                yield Server(base, api, client)
            server.should_exit = True
        tg.cancel_scope.cancel()
    sock.close()


@dataclass
class Received:
    """One SSE event as a client reads it."""

    id: str | None
    event: str | None
    data: dict[str, Any]


@dataclass
class Viewing:
    """A viewer's stream, read in the background: what came, and whether it ended."""

    who: str
    got: list[Received] = field(default_factory=list)
    first: anyio.Event = field(default_factory=anyio.Event)
    ended: anyio.Event = field(default_factory=anyio.Event)
    status: int | None = None
    wanted: Callable[[Received], bool] | None = None
    reached: anyio.Event = field(default_factory=anyio.Event)

    def until(self, wanted: Callable[[Received], bool]) -> anyio.Event:
        """An event set once something `wanted` has arrived."""
        self.wanted, self.reached = wanted, anyio.Event()
        if any(wanted(r) for r in self.got):
            self.reached.set()
        return self.reached


async def sse_events(response: httpx.Response) -> AsyncIterator[Received]:
    """The SSE events of a response body (comments, the keep-alive pings, skipped)."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in fields:
                data = msgspec.json.decode(fields["data"].encode())
                yield Received(fields.get("id"), fields.get("event"), data)
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            fields[name] = fields[name] + "\n" + value if name in fields else value


async def watch(
    client: httpx.AsyncClient,
    nid: uuid.UUID,
    viewing: Viewing,
    *,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
) -> None:
    """Read `viewing.who`'s stream of room `nid` to its end (or drop the connection after
    `stop_after` events)."""
    url = f"/api/negotiations/{nid}/events"
    async with client.stream(
        "GET", url, headers={HEADER: viewing.who, **(headers or {})}
    ) as response:
        viewing.status = response.status_code
        if response.status_code == 200:
            async for received in sse_events(response):
                viewing.got.append(received)
                viewing.first.set()
                if viewing.wanted is not None and viewing.wanted(received):
                    viewing.reached.set()
                if stop_after is not None and len(viewing.got) >= stop_after:
                    break
    viewing.ended.set()


Expected = list[tuple[str, str, Any]]


async def expected(store: PostgresEventStore, nid: uuid.UUID, agent: str | None) -> Expected:
    """(seq, type tag, JSON) of what the domain's policy gives `agent` of the stored log:
    its own words and its deliveries (`seen_by`; every event whole for None: an operator or
    observer)."""
    state = INITIAL
    out: Expected = []
    for row in await store.read(nid):
        event = decode_event(row.data)
        state = evolve(state, event)
        items: list[object] = [event] if agent is None else list(seen_by(state, event, agent))
        for item in items:
            plain = msgspec.to_builtins(item, builtin_types=(Decimal,))
            out.append((str(row.seq), plain["type"], _json(plain)))
    return out


def _json(value: Any) -> Any:
    """A value as the client decodes it (decimals become floats through JSON)."""
    return msgspec.json.decode(_encoder.encode(value))


def seen(viewing: Viewing) -> Expected:
    return [(str(r.id), str(r.event), r.data) for r in viewing.got]


def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


async def new_session(client: httpx.AsyncClient) -> str:
    raw = scenario_to_raw(phone())
    body = msgspec.to_builtins(raw, builtin_types=(Decimal,))
    created = await client.post(
        "/api/sessions",
        content=msgspec.json.encode({"description": "stream", "scenario": body}),
        headers={"content-type": "application/json"},
    )
    return str(ok(created, 201)["session_id"])


async def start(client: httpx.AsyncClient, sid: str, buyer: str) -> uuid.UUID:
    started = await client.post(
        "/api/negotiations/start",
        json={"session_id": sid, "item_name": ITEM, "buyer": buyer, "seed": 7},
    )
    return uuid.UUID(ok(started, 201)["negotiation_id"])


async def turn(srv: Server, nid: uuid.UUID, n: int) -> None:
    """Until the person's turn `n` waits (`message` answers when its round closes, which
    the buyer's agent may hear of a moment after the API does)."""
    room = srv.api.live.room(nid)
    assert room is not None
    assert room.human is not None
    assert await room.human.next_turn(nid, after=n - 1) is not None


def viewers(sid: str) -> dict[str, Viewing]:
    return {
        "buyer": Viewing(f"buyer@{sid}"),
        "techmart": Viewing(f"seller:techmart@{sid}"),
        "quicktech": Viewing(f"seller:quicktech@{sid}"),
        "observer": Viewing("observer"),
    }


AGENT_OF = {"buyer": "buyer", "techmart": "techmart", "quicktech": "quicktech", "observer": None}


async def check_views(
    store: PostgresEventStore, nid: uuid.UUID, watching: dict[str, Viewing]
) -> dict[str, Expected]:
    """Each viewer got exactly the policy's view of the log, and nothing private."""
    views: dict[str, Expected] = {}
    for name, viewing in watching.items():
        assert viewing.status == 200, name
        want = await expected(store, nid, AGENT_OF[name])
        assert seen(viewing) == want, name
        views[name] = want
    # Teeth: what the policy keeps from each party is in the log, and never reached them.
    observer = views["observer"]
    tags = {tag for _, tag, _ in observer}
    assert {"reasoning.recorded", "seller.replied", "buyer.said"} <= tags
    buyer_tags = {tag for _, tag, _ in views["buyer"]}
    own_buyer = {"buyer.said", "deal.closed", "buyer.walked_away"}  # its own words
    assert (
        buyer_tags
        <= {"room.opened.buyer", "turn.started", "seller.message", "room.closed"} | own_buyer
    )
    assert "buyer.said" in buyer_tags
    buyer_text = str(views["buyer"])
    for private in ("least_price", "cost_price", "reasoning", "style", "weight"):
        assert private not in buyer_text
    for seller in ("techmart", "quicktech"):
        mine = views[seller]
        assert {tag for _, tag, _ in mine} <= {
            "room.opened.seller",
            "buyer.message",
            "room.closed",
            "seller.replied",  # its own replies, and no other seller's
        }
        assert all(d["seller"] == seller for _, tag, d in mine if tag == "seller.replied")
        # Its own terms only: its room-opened view names it, and no other seller.
        assert mine[0][2]["handle"].lower() == f"@{seller}"
        assert "seller.message" not in {tag for _, tag, _ in mine}
    return views


async def test_an_agent_buyer_room_streams_each_viewer_exactly_its_own_view(
    nats_url: str, db: tuple[asyncpg.Pool, PostgresEventStore]
) -> None:
    pool, store = db
    with anyio.fail_after(90):
        async with serving(nats_url, pool, store) as srv:
            sid = await new_session(srv.client)
            nid = await start(srv.client, sid, "agent")
            watching = viewers(sid)
            async with anyio.create_task_group() as tg:
                for viewing in watching.values():
                    tg.start_soon(watch, srv.client, nid, viewing)
            # Every stream ended by itself (the task group returned) after the end.
            for viewing in watching.values():
                assert viewing.got[-1].event in ("room.closed", "negotiation.ended")
            await check_views(store, nid, watching)


async def test_a_person_s_room_is_followed_live_and_a_message_to_one_seller_reaches_only_it(
    nats_url: str, db: tuple[asyncpg.Pool, PostgresEventStore]
) -> None:
    pool, store = db
    with anyio.fail_after(90):
        async with serving(nats_url, pool, store) as srv:
            sid = await new_session(srv.client)
            nid = await start(srv.client, sid, "human")
            watching = viewers(sid)
            async with anyio.create_task_group() as tg:
                for viewing in watching.values():
                    tg.start_soon(watch, srv.client, nid, viewing)
                # Each is connected and has what was committed so far; the room waits for
                # the person, so what follows reaches them live.
                await watching["buyer"].until(lambda r: r.event == "turn.started").wait()
                for viewing in watching.values():
                    await viewing.first.wait()
                await turn(srv, nid, 1)
                said = await srv.client.post(
                    f"/api/negotiations/{nid}/message",
                    json={"text": "Three cables, best price?", "recipients": ["all"]},
                )
                ok(said)
                await turn(srv, nid, 2)
                said = await srv.client.post(
                    f"/api/negotiations/{nid}/message",
                    json={
                        "text": "TechMart, can you do 5.60?",
                        "recipients": ["@TechMart"],
                        "counter_price": 5.60,
                    },
                )
                replies = ok(said)["seller_responses"]
                assert [r["handle"] for r in replies] == ["@TechMart"]
                await turn(srv, nid, 3)
                ok(
                    await srv.client.post(
                        f"/api/negotiations/{nid}/decide",
                        json={"decision": "walk_away", "text": "No deal."},
                    )
                )
            views = await check_views(store, nid, watching)
            # The message to @TechMart alone reached it and not @QuickTech.
            texts = {
                name: [d["text"] for _, tag, d in views[name] if tag == "buyer.message"]
                for name in ("techmart", "quicktech")
            }
            assert texts["techmart"] == ["Three cables, best price?", "TechMart, can you do 5.60?"]
            assert texts["quicktech"] == ["Three cables, best price?"]


async def test_a_dropped_connection_resumes_with_last_event_id_missing_nothing_and_nothing_twice(
    nats_url: str, db: tuple[asyncpg.Pool, PostgresEventStore]
) -> None:
    pool, store = db
    with anyio.fail_after(90):
        async with serving(nats_url, pool, store) as srv:
            sid = await new_session(srv.client)
            nid = await start(srv.client, sid, "human")
            first = Viewing(f"buyer@{sid}")
            observer = Viewing("observer")
            # The buyer's viewer drops right after the room-opened view; the observer's
            # after its second (the room then waits for the person).
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: watch(srv.client, nid, first, stop_after=1))
                tg.start_soon(lambda: watch(srv.client, nid, observer, stop_after=2))
            assert first.got[0].event == "room.opened.buyer"
            # While they are away, the person says something and the sellers answer.
            await turn(srv, nid, 1)
            ok(
                await srv.client.post(
                    f"/api/negotiations/{nid}/message",
                    json={"text": "Best price?", "recipients": ["all"]},
                )
            )
            rest, observer_rest = Viewing(first.who), Viewing(observer.who)
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: watch(
                        srv.client, nid, rest, headers={"last-event-id": first.got[-1].id or ""}
                    )
                )
                # ?after= does the same (a first connection resuming from a known seq).
                tg.start_soon(lambda: watch_after(srv.client, nid, observer_rest, observer))
                await turn(srv, nid, 2)
                ok(
                    await srv.client.post(
                        f"/api/negotiations/{nid}/decide", json={"decision": "walk_away"}
                    )
                )
            buyer_all = await expected(store, nid, "buyer")
            assert seen(first) + seen(rest) == buyer_all
            assert seen(observer) + seen(observer_rest) == await expected(store, nid, None)
            assert len(seen(observer)) == 2


async def watch_after(
    client: httpx.AsyncClient, nid: uuid.UUID, viewing: Viewing, before: Viewing
) -> None:
    last = before.got[-1].id
    assert last is not None
    url = f"/api/negotiations/{nid}/events?after={last}"
    async with client.stream("GET", url, headers={HEADER: viewing.who}) as response:
        viewing.status = response.status_code
        async for received in sse_events(response):
            viewing.got.append(received)
    viewing.ended.set()


async def test_an_ended_room_streams_its_log_and_closes_here_and_on_a_server_not_running_it(
    nats_url: str, db: tuple[asyncpg.Pool, PostgresEventStore]
) -> None:
    pool, store = db
    with anyio.fail_after(90):
        async with serving(nats_url, pool, store) as srv:
            sid = await new_session(srv.client)
            nid = await start(srv.client, sid, "agent")
            done = Viewing("observer")
            await watch(srv.client, nid, done)  # to its end
            again = Viewing(f"seller:techmart@{sid}")
            await watch(srv.client, nid, again)  # ended: from the room's events, then closes
            assert seen(again) == await expected(store, nid, "techmart")
        # Another server over the same database, which never ran the room: from the log.
        async with serving(nats_url, pool, store) as other:
            assert other.api.live.room(nid) is None
            for who, agent in (("observer", None), (f"buyer@{sid}", "buyer")):
                logged = Viewing(who)
                await watch(other.client, nid, logged)
                assert seen(logged) == await expected(store, nid, agent)
            resumed = Viewing("observer")
            await watch(other.client, nid, resumed, headers={"last-event-id": "4"})
            assert seen(resumed) == (await expected(store, nid, None))[4:]


async def test_unknown_rooms_are_404_and_a_bad_resume_point_422(
    nats_url: str, db: tuple[asyncpg.Pool, PostgresEventStore]
) -> None:
    pool, store = db
    with anyio.fail_after(60):
        async with serving(nats_url, pool, store) as srv:
            missing = await srv.client.get(f"/api/negotiations/{uuid.uuid4()}/events")
            assert missing.status_code == 404, missing.text
            assert "no negotiation" in missing.json()["error"]
            assert (await srv.client.get("/api/negotiations/nope/events")).status_code == 404
            sid = await new_session(srv.client)
            nid = await start(srv.client, sid, "agent")
            for header, query in (({"last-event-id": "x1"}, ""), ({}, "?after=%C2%B2")):
                bad = await srv.client.get(f"/api/negotiations/{nid}/events{query}", headers=header)
                assert bad.status_code == 422, bad.text
                path = "Last-Event-ID" if header else "after"
                assert bad.json()["problems"][0]["path"] == path
            other = await srv.client.get(
                f"/api/negotiations/{nid}/events", headers={HEADER: f"buyer@{uuid.uuid4()}"}
            )
            assert other.status_code == 403


async def test_a_server_told_to_stop_ends_its_open_streams_instead_of_waiting_for_the_rooms(
    nats_url: str, db: tuple[asyncpg.Pool, PostgresEventStore]
) -> None:
    """uvicorn waits for open responses before it stops; a stream of a room that waits
    for a person would keep it forever, but EventSourceResponse ends on shutdown."""
    pool, store = db
    live = Live(nats_connect(nats_url), store)
    api = Api(pool, store, live, authenticate=authenticate)
    config = uvicorn.Config(create_app(api), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)  # no graceful-shutdown timeout, as mams serve
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    stopped = anyio.Event()

    async def serve() -> None:
        await server.serve([sock])
        stopped.set()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(live.run)
            tg.start_soon(serve)
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                sid = await new_session(client)
                nid = await start(client, sid, "human")  # waits for the person: never ends
                viewing = Viewing("observer")
                tg.start_soon(watch, client, nid, viewing)
                await viewing.first.wait()
                server.should_exit = True
                await stopped.wait()
                await viewing.ended.wait()
            tg.cancel_scope.cancel()
    sock.close()
    assert viewing.got[0].event == "negotiation.started"
