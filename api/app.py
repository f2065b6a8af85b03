"""The HTTP API (`mams serve`): the specification's endpoints over the one runtime.

Sessions are assembled (or posted whole) as drafts and frozen into a stored session when
their first room opens; rooms open through `actors.live.Live`, i.e. `run_market`, with
the buyer an agent or the caller (`actors.human.HumanBuyer`). Every body is read by
`api.bodies` (422 with every problem and its JSON path, nothing written), unknown ids are
404, a wrong state 409, each with a sentence a person can act on.

Starlette gives the routing, requests and responses; the bodies and the OpenAPI document
are the msgspec types of `api.bodies`, so there is no second set of models.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from uuid import UUID

import anyio.to_thread
import msgspec
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from mams.actors.human import ActionRefusedError, HumanBuyer, NotYourTurnError
from mams.actors.live import Live, LiveRoom, StartError
from mams.actors.market import RunOptions, check_brains
from mams.api.auth import OPEN, AuthError, TokenBody, TokenMinted, Viewer
from mams.api.bodies import (
    BodyError,
    BuyerConfigBody,
    DealSummary,
    DecideBody,
    Decided,
    MessageAnswered,
    MessageBody,
    NewSeller,
    NewSession,
    OfferOut,
    SellerAdded,
    SellerResponse,
    SessionCreated,
    StartBody,
    Started,
    decode_json,
    read,
    seller_path,
    seller_raw,
)
from mams.api.limits import BodyLimit, RateLimits
from mams.domain.analysis import NegotiationAnalysis, analyze
from mams.domain.config import (
    BASELINE_MODEL,
    Problem,
    Scenario,
    ScenarioError,
    agent_id_of,
    item_key,
    parse_buyer,
    parse_scenario,
    parse_seller,
    scenario_to_raw,
)
from mams.domain.debrief import debrief
from mams.domain.errors import ConfigError
from mams.domain.events import (
    BuyerSaid,
    Event,
    NegotiationEnded,
    NegotiationStarted,
    RoundClosed,
    SellerReplied,
    decode_event,
)
from mams.domain.messages import Accept, Say, SellerMessage, WalkAway
from mams.domain.negotiation import INITIAL, NegotiationState, evolve
from mams.domain.plan import (
    HUMAN_TURN_TIMEOUT,
    PlanError,
    pick_items,
)
from mams.domain.report import build_report
from mams.domain.views import BuyerView
from mams.domain.visibility import route, seen_by
from mams.storage.analyses import analyses_of, analysis_of
from mams.storage.drafts import (
    DraftFrozenError,
    change_draft,
    create_draft,
    freeze_draft,
    get_draft,
    list_session_summaries,
)
from mams.storage.eventstore import EventStore
from mams.storage.readmodels import RunRow, list_runs, load_session, negotiation_ids
from mams.storage.tokens import mint_token, revoke_token

log = structlog.get_logger("mams.api")

_json = msgspec.json.Encoder(decimal_format="number")
T = TypeVar("T")
LIST_LIMIT = 50
REPORT_CHUNK = 200  # negotiations read and analysed at a time for a session's report
PLOT_ROOMS = 18  # rooms drawn in a report's trajectory plots (two pages)
PLOT_CACHE = 16  # sessions whose drawn plots are kept
MAX_LIST = 500
MAX_OFFSET = 1_000_000


class ApiError(Exception):
    """An answer other than success: its status, a sentence, and problems with paths."""

    def __init__(
        self,
        status: int,
        message: str,
        problems: Sequence[Problem] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.problems = list(problems)
        self.headers = headers
        super().__init__(message)


def not_found(what: str) -> NoReturn:
    raise ApiError(404, what)


def conflict(message: str, problems: Sequence[Problem] = ()) -> NoReturn:
    raise ApiError(409, message, problems)


def invalid(message: str, problems: Sequence[Problem]) -> NoReturn:
    raise ApiError(422, message, problems)


def json_response(body: object, status: int = 200) -> Response:
    return Response(_json.encode(body), status_code=status, media_type="application/json")


def error_response(exc: ApiError) -> Response:
    body = {
        "error": exc.message,
        "problems": [{"path": p.path, "message": p.message} for p in exc.problems],
    }
    response = json_response(body, exc.status)
    response.headers.update(exc.headers or {})
    return response


Authenticate = Callable[[Request], Awaitable[Viewer]]


async def open_access(request: Request) -> Viewer:
    """No token configured (loopback only): every caller is the operator."""
    return OPEN


def _uuid(text: str, what: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        not_found(f"no {what} {text!r}: not an id like 3f2b6c1e-8d4a-4b7e-9c1d-2a5e6f7a8b9c")


def _new_config(description: str) -> dict[str, Any]:
    return {
        "name": "api session",
        "description": description,
        "buyer": {"handle": "@Buyer", "items": []},
        "sellers": [],
    }


def _prefixed(prefix: str, problems: Sequence[Problem]) -> list[Problem]:
    return [Problem(f"{prefix}.{p.path}" if p.path else prefix, p.message) for p in problems]


class Api:
    """The API's handlers over one database (pool, store) and one `Live` runtime."""

    def __init__(
        self,
        pool: Any,
        store: EventStore,
        live: Live,
        *,
        authenticate: Authenticate = open_access,
        limits: RateLimits | None = None,
    ) -> None:
        self.pool = pool
        self.store = store
        self.live = live
        self.authenticate = authenticate
        self._plots: dict[UUID, tuple[tuple[UUID, int, int], dict[str, bytes]]] = {}
        self.limits = limits

    # -- plumbing -------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        from mams.api.stream import events_endpoint  # it imports this module

        h = self._handler
        return [
            Route("/api/sessions", h(self.create_session), methods=["POST"]),
            Route("/api/sessions", h(self.list_sessions), methods=["GET"]),
            Route("/api/sessions/{session_id}", h(self.get_session), methods=["GET"]),
            Route(
                "/api/sessions/{session_id}/buyer-config", h(self.buyer_config), methods=["POST"]
            ),
            Route("/api/sessions/{session_id}/sellers", h(self.add_seller), methods=["POST"]),
            Route("/api/sessions/{session_id}/tokens", h(self.mint), methods=["POST"]),
            Route("/api/tokens", h(self.mint), methods=["POST"]),
            Route("/api/tokens/{token_id}", h(self.revoke), methods=["DELETE"]),
            Route("/api/openapi.json", h(self.openapi), methods=["GET"]),
            Route("/api/sessions/{session_id}/report", h(self.report), methods=["GET"]),
            Route("/api/sessions/{session_id}/report/plots", h(self.plots), methods=["GET"]),
            Route("/api/sessions/{session_id}/report/plots/{name}", h(self.plot), methods=["GET"]),
            Route("/api/negotiations/start", h(self.start), methods=["POST"]),
            Route("/api/negotiations", h(self.list_negotiations), methods=["GET"]),
            Route("/api/negotiations/{nid}", h(self.get_negotiation), methods=["GET"]),
            Route("/api/negotiations/{nid}/message", h(self.message), methods=["POST"]),
            Route("/api/negotiations/{nid}/decide", h(self.decide), methods=["POST"]),
            Route("/api/negotiations/{nid}/analytics", h(self.analytics), methods=["GET"]),
            Route("/api/negotiations/{nid}/replay", h(self.replay), methods=["GET"]),
            Route("/api/negotiations/{nid}/audio/{message_id}", h(self.audio), methods=["GET"]),
            Route("/api/negotiations/{nid}/events", h(events_endpoint(self)), methods=["GET"]),
        ]

    def _handler(
        self, method: Callable[[Request, Viewer], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                viewer = await self.authenticate(request)
                if self.limits is not None:
                    wait = await self.limits.retry_after(viewer.token_id)
                    if wait is not None:
                        raise ApiError(
                            429,
                            f"too many requests with this token (at most {self.limits.spec}); "
                            f"try again in {wait} s",
                            headers={"Retry-After": str(wait)},
                        )
                return await method(request, viewer)
            except AuthError as exc:
                return error_response(
                    ApiError(401, exc.message, headers={"WWW-Authenticate": "Bearer"})
                )
            except ApiError as exc:
                return error_response(exc)
            except BodyError as exc:
                return error_response(ApiError(422, exc.message, exc.problems))

        endpoint.__name__ = method.__name__
        return endpoint

    @staticmethod
    async def _body(request: Request, kind: type[T]) -> T:
        return read(decode_json(await request.body()), kind)

    @staticmethod
    def _require(viewer: Viewer, *roles: str) -> None:
        if viewer.role not in roles:
            raise ApiError(
                403, f"a {viewer.role} token may not do this; it needs: {', '.join(roles)}"
            )

    @staticmethod
    def _require_session(viewer: Viewer, session_id: UUID) -> None:
        """The operator and unbound observers see every session; a token minted for a
        session only that one."""
        if not viewer.may_see(session_id):
            raise ApiError(403, "this token belongs to another session")

    # -- sessions --------------------------------------------------------------------------
    async def create_session(self, request: Request, viewer: Viewer) -> Response:
        self._require(viewer, "operator")
        raw = decode_json(await request.body())
        body = read(raw, NewSession)
        if body.scenario is not None:
            try:
                scenario = parse_scenario(body.scenario, source="scenario")
            except ScenarioError as exc:
                invalid("the scenario is not valid", _prefixed("scenario", exc.problems))
            config = scenario_to_raw(scenario)
            if body.description:
                config["description"] = body.description
        else:
            config = _new_config(body.description)
        draft = await create_draft(self.pool, uuid.uuid4(), body.description, config)
        created = SessionCreated(session_id=draft.session_id, created_at=draft.created_at)
        return json_response(created, 201)

    async def list_sessions(self, request: Request, viewer: Viewer) -> Response:
        self._require(viewer, "operator", "observer")
        if viewer.session_id is not None:
            raise ApiError(
                403, f"this token reads one session: GET /api/sessions/{viewer.session_id}"
            )
        limit, offset = _paging(request)
        rows = await list_session_summaries(self.pool, limit=limit + 1, offset=offset)
        return json_response(
            {
                "sessions": rows[:limit],
                "next_offset": offset + limit if len(rows) > limit else None,
            }
        )

    async def get_session(self, request: Request, viewer: Viewer) -> Response:
        sid = _uuid(request.path_params["session_id"], "session")
        self._require_session(viewer, sid)
        draft = await get_draft(self.pool, sid)
        if draft is not None:
            config, description = draft.config, draft.description
            created_at, frozen = draft.created_at, draft.frozen_at is not None
        else:
            stored = await load_session(self.pool, sid)
            if stored is None:
                not_found(f"no session {sid}; GET /api/sessions lists them")
            config, description = scenario_to_raw(stored), stored.description
            created_at, frozen = None, True
        sellers = config.get("sellers", [])
        buyer = config.get("buyer")
        if not viewer.sees_everything:  # a player sees the sellers' handles, never terms
            sellers = [{"handle": s.get("handle")} for s in sellers]
            if viewer.role != "buyer" and isinstance(buyer, dict):  # nor the buyer's range
                buyer = {"handle": buyer.get("handle")}
        return json_response(
            {
                "session_id": sid,
                "description": description,
                "created_at": created_at,
                "frozen": frozen,
                "buyer": buyer,
                "sellers": sellers,
            }
        )

    async def buyer_config(self, request: Request, viewer: Viewer) -> Response:
        self._require(viewer, "operator")
        sid = _uuid(request.path_params["session_id"], "session")
        raw = decode_json(await request.body())
        read(raw, BuyerConfigBody)  # the shape, every field's type
        try:
            buyer = parse_buyer(raw)
        except ScenarioError as exc:
            invalid("the buyer's configuration is not valid", exc.problems)
        part = _plain(buyer)

        def change(config: dict[str, Any]) -> dict[str, Any]:
            return {**config, "buyer": part}

        await self._change(sid, change)
        return json_response({"session_id": sid, "items": len(buyer.items)})

    async def add_seller(self, request: Request, viewer: Viewer) -> Response:
        self._require(viewer, "operator")
        sid = _uuid(request.path_params["session_id"], "session")
        raw = decode_json(await request.body())
        entry, problems = seller_raw(raw)
        try:
            seller = parse_seller(entry)
        except ScenarioError as exc:  # every problem once, by the body's paths
            said = {p.path for p in problems}
            for problem in exc.problems:
                path = seller_path(problem.path)
                if path not in said and not (
                    path.startswith("priorities") and "priorities" in said
                ):
                    problems.append(Problem(path, problem.message))
        if problems:
            invalid("the seller is not valid", problems)
        read(raw, NewSeller)  # the rest of the shape (the validator has the messages)
        part = _plain(seller)

        def change(config: dict[str, Any]) -> dict[str, Any]:
            sellers = list(config.get("sellers", []))
            taken = {item_key(str(s.get("handle", "")).lstrip("@")) for s in sellers}
            buyer = str(config.get("buyer", {}).get("handle", "@Buyer"))
            if seller.agent_id in taken or seller.agent_id == item_key(buyer.lstrip("@")):
                conflict(f"the session already has an agent with handle {seller.handle}")
            return {**config, "sellers": [*sellers, part]}

        await self._change(sid, change)
        added = SellerAdded(seller_id=seller.agent_id, handle=seller.handle)
        return json_response(added, 201)

    async def _change(self, sid: UUID, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        async with self.pool.acquire() as conn:
            try:
                draft = await change_draft(conn, sid, change)
            except DraftFrozenError as exc:
                conflict(str(exc))
        if draft is None:
            if await load_session(self.pool, sid) is not None:
                conflict(f"session {sid} was stored whole (mams run): its configuration is fixed")
            not_found(f"no session {sid}; POST /api/sessions creates one")

    async def _scenario(self, sid: UUID) -> Scenario:
        """The session's scenario, freezing its draft (validated whole) if it is one."""

        def validate(config: dict[str, Any]) -> Scenario:
            return parse_scenario(config, source=f"session {sid}")

        async with self.pool.acquire() as conn:
            try:
                scenario = await freeze_draft(conn, sid, validate)
            except ScenarioError as exc:
                conflict(
                    f"session {sid} is not ready to negotiate: complete its configuration "
                    "(buyer-config, sellers)",
                    exc.problems,
                )
        if scenario is None:
            not_found(f"no session {sid}; GET /api/sessions lists them")
        return scenario

    # -- tokens ---------------------------------------------------------------------------
    async def mint(self, request: Request, viewer: Viewer) -> Response:
        """A token for a player or an observer of one session (`/api/sessions/{id}/tokens`)
        or, for an observer only, of every session (`/api/tokens`)."""
        self._require(viewer, "operator")
        body = await self._body(request, TokenBody)
        text = request.path_params.get("session_id")
        if text is None:
            if body.role != "observer":
                invalid(
                    f"a {body.role} token is for one session",
                    [Problem("role", "POST /api/sessions/{id}/tokens mints it")],
                )
            token, stored = await mint_token(self.pool, "observer", None, None)
        else:
            sid = _uuid(text, "session")
            buyer, sellers = await self._cast(sid)
            agent: str | None = None
            if body.role in ("buyer", "seller"):
                known = [buyer] if body.role == "buyer" else sellers
                names = ", ".join(known) or "none yet"
                if body.handle is None and body.role == "seller":
                    invalid(
                        "a seller token views as one seller",
                        [Problem("handle", f"is required: one of {names}")],
                    )
                handle = body.handle or buyer
                agent = next((agent_id_of(h) for h in known if _same_handle(h, handle)), None)
                if agent is None:
                    invalid(
                        f"no {body.role} {handle!r} in session {sid}",
                        [Problem("handle", f"must be one of: {names}")],
                    )
            elif body.handle is not None:
                invalid("an observer reads every party", [Problem("handle", "leave it out")])
            token, stored = await mint_token(self.pool, body.role, sid, agent)
        log.info("api.token_minted", token_id=stored.token_id, role=stored.role)
        minted = TokenMinted(
            token=token,
            token_id=stored.token_id,
            role=stored.role,
            session_id=stored.session_id,
            agent=stored.agent,
        )
        return json_response(minted, 201)

    async def revoke(self, request: Request, viewer: Viewer) -> Response:
        """Refuse a minted token from now on (by its public id)."""
        self._require(viewer, "operator")
        token_id = request.path_params["token_id"]
        if not await revoke_token(self.pool, token_id):
            not_found(f"no live token {token_id!r}: its id is the token_id it was minted with")
        log.info("api.token_revoked", token_id=token_id)
        return json_response({"token_id": token_id, "revoked": True})

    async def _cast(self, sid: UUID) -> tuple[str, list[str]]:
        """The handles of a session's buyer and sellers (a draft's as assembled so far)."""
        draft = await get_draft(self.pool, sid)
        if draft is not None:
            buyer = str(draft.config.get("buyer", {}).get("handle", "@Buyer"))
            return buyer, [str(s.get("handle")) for s in draft.config.get("sellers", [])]
        stored = await load_session(self.pool, sid)
        if stored is None:
            not_found(f"no session {sid}; GET /api/sessions lists them")
        return stored.buyer.handle, [s.handle for s in stored.sellers]

    async def openapi(self, request: Request, viewer: Viewer) -> Response:
        """The OpenAPI 3.1 document of this API (`api.openapi`)."""
        from mams.api.openapi import document  # it reads this module's routes

        return json_response(document())

    # -- negotiations ----------------------------------------------------------------------
    async def start(self, request: Request, viewer: Viewer) -> Response:
        body = await self._body(request, StartBody)
        if body.buyer == "agent":
            self._require(viewer, "operator")
        else:
            self._require(viewer, "operator", "buyer")
            self._require_session(viewer, body.session_id)
        scenario = await self._scenario(body.session_id)
        try:
            items = pick_items(scenario, [body.item_name] if body.item_name else [])
        except PlanError as exc:
            invalid("no such item", [Problem("item_name", p.message) for p in exc.problems])
        human = body.buyer == "human"
        if human and (len(items) != 1 or body.runs != 1):
            invalid(
                "a person plays one room at a time",
                [Problem("item_name", "name the one item to play, with runs 1")],
            )
        options = RunOptions(
            seller_model=body.seller_model,
            buyer_model=body.buyer_model if not human else BASELINE_MODEL,
            monitor=body.monitor,
        )
        try:
            models = check_brains(scenario, items, options)
        except ConfigError as exc:
            field = "seller_model" if body.seller_model else "buyer_model"
            invalid("a model's provider is not configured", [Problem(field, str(exc))])
        agents = {a: m for a, m in models.items() if not (human and a == scenario.buyer.agent_id)}
        llm = any(m != BASELINE_MODEL for m in agents.values())
        options = RunOptions.given(
            llm=llm,
            max_rounds=body.max_rounds,
            round_timeout=body.round_timeout,
            seed=body.seed,
            runs=body.runs,
            rooms_at_once=body.rooms_at_once,
            buyer_timeout=HUMAN_TURN_TIMEOUT if human else None,
            buyer_model=options.buyer_model,
            seller_model=options.seller_model,
            monitor=options.monitor,
        )
        if problems := options.problems():
            invalid("the room options are out of range", problems)
        seat = HumanBuyer() if human else None
        try:
            rooms = await self.live.start(scenario, body.session_id, items, options, human=seat)
        except StartError as exc:
            conflict(f"the rooms could not start: {exc}")
        handles = sorted(
            {s.handle for i in items for s in scenario.sellers if s.stock(i.item_name)}
        )
        started = Started(
            negotiation_id=rooms[0].negotiation_id,
            negotiation_ids=[r.negotiation_id for r in rooms],
            status="in_progress",
            available_sellers=handles,
            buyer=body.buyer,
        )
        return json_response(started, 201)

    async def list_negotiations(self, request: Request, viewer: Viewer) -> Response:
        session = request.query_params.get("session_id")
        sid = _uuid(session, "session") if session else None
        if viewer.session_id is not None:
            sid = sid or viewer.session_id
            self._require_session(viewer, sid)
        limit, offset = _paging(request)
        rows = await list_runs(self.pool, session_id=sid, limit=limit + offset + 1)
        page = rows[offset : offset + limit]
        if viewer.role == "seller":  # a seller learns only whether it got the deal
            page = [r if r.seller == viewer.agent else _unwon(r) for r in page]
        return json_response(
            {
                "negotiations": page,
                "next_offset": offset + limit if len(rows) > offset + limit else None,
            }
        )

    async def _events(self, nid: UUID) -> list[tuple[int, Event, NegotiationState]]:
        """A room's events with the state after each: live if this process runs it, else
        read from the log."""
        room = self.live.room(nid)
        if room is not None:
            return list(room.events)
        stored = await self.store.read(nid)
        out: list[tuple[int, Event, NegotiationState]] = []
        state: NegotiationState | None = None
        for row in stored:
            event = decode_event(row.data)
            state = evolve(INITIAL if state is None else state, event)
            out.append((row.seq, event, state))
        return out

    async def _started(self, nid: UUID, viewer: Viewer) -> tuple[NegotiationStarted, list[Any]]:
        events = await self._events(nid)
        if not events or not isinstance(events[0][1], NegotiationStarted):
            not_found(f"no negotiation {nid}; GET /api/negotiations lists them")
        started = events[0][1]
        self._require_session(viewer, started.session_id)
        return started, events

    async def get_negotiation(self, request: Request, viewer: Viewer) -> Response:
        nid = _uuid(request.path_params["nid"], "negotiation")
        started, events = await self._started(nid, viewer)
        state = events[-1][2]
        room = self.live.room(nid)
        body: dict[str, Any] = {
            "negotiation_id": nid,
            "session_id": started.session_id,
            "item_name": started.item_name,
            "status": "ended" if state.phase == "ended" else "in_progress",
            "phase": state.phase,
            "round": state.round,
            "max_rounds": started.max_rounds,
            "sellers": [s.handle for s in started.sellers],
            "buyer": "human" if room is not None and room.human is not None else "agent",
            "outcome": _plain(state.outcome) if _told(viewer, state) else None,
        }
        if room is not None and room.human is not None:
            body["your_turn"] = room.human.waiting(nid) is not None
        return json_response(body)

    async def _turn(
        self, request: Request, viewer: Viewer, kind: type[T]
    ) -> tuple[UUID, LiveRoom, HumanBuyer, BuyerView, T]:
        """The room the caller plays, its body, and the turn waiting for the person."""
        nid, room, human = self._played(request, viewer)
        body = await self._body(request, kind)
        view = human.waiting(nid)
        if view is None and human.turns(nid) == 0:  # just started: the first turn is coming
            view = await human.next_turn(nid)
        if view is None:
            conflict("it is not the buyer's turn: the sellers are still answering")
        return nid, room, human, view, body

    def _played(self, request: Request, viewer: Viewer) -> tuple[UUID, LiveRoom, HumanBuyer]:
        nid = _uuid(request.path_params["nid"], "negotiation")
        room = self.live.room(nid)
        if room is None:
            not_found(f"no live room {nid} in this server; GET /api/negotiations lists rooms")
        self._require(viewer, "operator", "buyer")
        self._require_session(viewer, room.session_id)
        if room.human is None:
            conflict('this room\'s buyer is an agent; start one with "buyer": "human" to play')
        if room.ended:
            conflict(f"negotiation {nid} has ended; GET its analytics for the debrief")
        return nid, room, room.human

    async def message(self, request: Request, viewer: Viewer) -> Response:
        nid, room, human, view, body = await self._turn(request, viewer, MessageBody)
        problems: list[Problem] = []
        if not body.text.strip():
            problems.append(Problem("text", "is required: what you say to the sellers"))
        to: list[str] = []
        for i, name in enumerate(body.recipients):
            if name == "all":
                continue
            agent = _seller_id(view, name)
            if agent is None:
                known = ", ".join(p.handle for p in view.sellers)
                problems.append(Problem(f"recipients[{i}]", f"no seller {name!r}; here: {known}"))
            else:
                to.append(agent)
        if problems:
            invalid("the message is not valid", problems)
        action = Say(text=body.text, to=tuple(to), counter_price=body.counter_price)
        seq = room.events[-1][0] if room.events else 0
        turns = human.turns(nid)
        self._act(human, nid, action)
        said_round = view.round
        events = await _until(room, seq, lambda e: _closes_round(e, said_round))
        # Answer once the person may act again (or the room has ended), so a `decide` or
        # `message` sent on this answer never finds the buyer's turn not yet open.
        await human.next_turn(nid, after=turns)
        answered = _answered(room, events, said_round)
        if self.live.voiced:  # where each reply's audio is (or will be once read aloud)
            base = f"/api/negotiations/{nid}/audio"
            responses = [
                msgspec.structs.replace(r, audio_url=f"{base}/{r.message_id}")
                for r in answered.seller_responses
            ]
            answered = msgspec.structs.replace(answered, seller_responses=responses)
        return json_response(answered)

    async def decide(self, request: Request, viewer: Viewer) -> Response:
        nid, room, human, view, body = await self._turn(request, viewer, DecideBody)
        if body.decision == "walk_away":
            action: Accept | WalkAway = WalkAway(text=body.text)
        else:
            assert body.seller_id is not None
            assert body.price is not None
            assert body.quantity is not None
            wanted = item_key(body.seller_id.lstrip("@"))
            seller = next(
                (
                    p.agent_id
                    for p in view.sellers
                    if wanted in (p.agent_id, item_key(p.handle.lstrip("@")))
                ),
                None,
            )
            if seller is None:
                known = ", ".join(p.handle for p in view.sellers)
                invalid(
                    "no such seller", [Problem("seller_id", f"not in this room; here: {known}")]
                )
            action = Accept(
                seller=seller, unit_price=body.price, quantity=body.quantity, text=body.text
            )
        seq = room.events[-1][0] if room.events else 0
        self._act(human, nid, action)
        await _until(room, seq, lambda e: isinstance(e, NegotiationEnded))
        events = [e for _, e, _ in room.events]
        state = room.state
        assert state.outcome is not None
        assert state.started is not None
        summary = None
        if state.outcome.type == "deal" and state.outcome.seller is not None:
            assert state.outcome.unit_price is not None
            assert state.outcome.quantity is not None
            summary = DealSummary(
                seller=_handle(state.started, state.outcome.seller),
                final_price=state.outcome.unit_price,
                quantity=state.outcome.quantity,
                reasoning=body.text,
            )
        analysis = analyze(events)
        decided = Decided(
            outcome_id=uuid.uuid5(nid, "outcome"),
            status=state.ended.status if state.ended else "completed",
            outcome=_plain(state.outcome),
            deal_summary=summary,
            analysis=_plain(debrief(analysis, state.started)),
        )
        return json_response(decided)

    @staticmethod
    def _act(human: HumanBuyer, nid: UUID, action: Say | Accept | WalkAway) -> None:
        try:
            human.act(nid, action)
        except NotYourTurnError as exc:
            conflict(str(exc))
        except ActionRefusedError as exc:
            conflict(
                "the guardrails refuse this action; nothing was sent",
                [Problem(p.rule, p.detail) for p in exc.problems],
            )

    async def analytics(self, request: Request, viewer: Viewer) -> Response:
        nid = _uuid(request.path_params["nid"], "negotiation")
        # The debrief reveals every party's terms: the buyer's, once the room has ended;
        # a seller token reads its own view (replay, events), never the others' terms.
        self._require(viewer, "operator", "observer", "buyer")
        started, events = await self._started(nid, viewer)
        ended = events[-1][2].phase == "ended"
        if not viewer.sees_everything and not ended:
            conflict("a player sees the analytics (and every hidden fact) once the room has ended")
        analysis = await analysis_of(self.store, nid)
        body = _analytics(analysis)
        if ended:
            body["debrief"] = _plain(debrief(analysis, started))
        return json_response(body)

    async def _analyses(self, request: Request, viewer: Viewer) -> tuple[UUID, list[Any]]:
        """A session's negotiations analysed (for its report and plots)."""
        self._require(viewer, "operator", "observer")
        sid = _uuid(request.path_params["session_id"], "session")
        self._require_session(viewer, sid)  # an observer of one session reads only its own
        if await get_draft(self.pool, sid) is None and await load_session(self.pool, sid) is None:
            not_found(f"no session {sid}; GET /api/sessions lists them")
        ids = await negotiation_ids(self.pool, sid)
        analysed = []
        for start in range(0, len(ids), REPORT_CHUNK):
            analysed += await analyses_of(self.store, ids[start : start + REPORT_CHUNK])
        return sid, analysed

    async def report(self, request: Request, viewer: Viewer) -> Response:
        sid, analysed = await self._analyses(request, viewer)
        body = _plain(build_report(analysed))
        body["session_id"] = str(sid)
        return json_response(body)

    async def plots(self, request: Request, viewer: Viewer) -> Response:
        """The names of a session report's plots (`mams report`'s PNGs), drawn now."""
        sid, analysed = await self._analyses(request, viewer)
        drawn = await self._draw(sid, analysed)
        base = f"/api/sessions/{sid}/report/plots"
        return json_response({"plots": [{"name": n, "url": f"{base}/{n}"} for n in drawn]})

    async def plot(self, request: Request, viewer: Viewer) -> Response:
        """One plot of a session's report, as PNG."""
        sid, analysed = await self._analyses(request, viewer)
        name = request.path_params["name"]
        drawn = await self._draw(sid, analysed)
        if name not in drawn:
            not_found(f"no plot {name!r}; GET /api/sessions/{sid}/report/plots lists them")
        return Response(drawn[name], media_type="image/png", headers={"Cache-Control": "no-store"})

    async def _draw(self, sid: UUID, analysed: list[Any]) -> dict[str, bytes]:
        """Every plot of the report of these analyses, by file name (drawn in a thread,
        matplotlib's Agg, into a directory of their own), kept while they stay current."""
        key = (sid, len(analysed), sum(a.status == "completed" for a in analysed))
        if (cached := self._plots.get(sid)) is not None and cached[0] == key:
            return cached[1]
        from mams.actors.report_plots import write_plots

        report = build_report(analysed)

        def draw() -> dict[str, bytes]:
            with tempfile.TemporaryDirectory(prefix="mams-plots-") as tmp:
                paths = write_plots(analysed, report, Path(tmp), max_rooms=PLOT_ROOMS)
                return {p.name: p.read_bytes() for p in paths}

        drawn = await anyio.to_thread.run_sync(draw)
        self._plots[sid] = (key, drawn)
        while len(self._plots) > PLOT_CACHE:
            del self._plots[next(iter(self._plots))]
        return drawn

    async def audio(self, request: Request, viewer: Viewer) -> Response:
        """A seller reply read aloud (`mams serve --voice`): its WAV file, once made."""
        nid = _uuid(request.path_params["nid"], "negotiation")
        mid = _uuid(request.path_params["message_id"], "message")
        _, events = await self._started(nid, viewer)
        said = {
            e.message_id: e.seller
            for _, e, _ in events
            if isinstance(e, SellerReplied) and e.message_id == mid
        }
        if mid not in said or (viewer.role == "seller" and said[mid] != viewer.agent):
            not_found(f"no seller reply {mid} in negotiation {nid} for this token")
        from mams.storage.audio import audio_for

        path = await audio_for(self.store, nid, mid)
        if path is None:
            raise ApiError(
                404,
                "this reply has no audio yet: it is read aloud off the round's path, a "
                "moment after it is said (or the server runs without --voice); ask again",
                headers={"Retry-After": "1"},
            )
        return FileResponse(path, media_type="audio/wav")

    async def replay(self, request: Request, viewer: Viewer) -> Response:
        nid = _uuid(request.path_params["nid"], "negotiation")
        started, events = await self._started(nid, viewer)
        out = [
            {"seq": seq, **item}
            for seq, event, state in events
            for item in visible(viewer, started, state, event)
        ]
        return json_response({"negotiation_id": nid, "events": out})


def visible(
    viewer: Viewer, started: NegotiationStarted, state: NegotiationState, event: Event
) -> list[dict[str, Any]]:
    """What of one committed event this viewer may see: every event whole for an operator
    or observer; for a player, its agent's own words and the messages the broker delivers
    to its agent (`domain.visibility.seen_by`), as the agent itself receives them."""
    if viewer.sees_everything:
        return [_plain(event)]
    agent = started.buyer.agent_id if viewer.role == "buyer" else viewer.agent
    if agent is None:
        return []
    return [_plain(item) for item in seen_by(state, event, agent)]


def _plain(value: object) -> Any:
    """A struct as JSON-able builtins, decimals kept as numbers (the API's money)."""
    return msgspec.to_builtins(value, builtin_types=(Decimal,))


def _paging(request: Request) -> tuple[int, int]:
    problems: list[Problem] = []
    values = {"limit": LIST_LIMIT, "offset": 0}
    for name in values:
        text = request.query_params.get(name)
        if text is None:
            continue
        if not (text.isascii() and text.isdigit()):
            problems.append(Problem(name, f"must be a whole number, got {text!r}"))
            continue
        values[name] = int(text)
    if not 1 <= values["limit"] <= MAX_LIST:
        problems.append(Problem("limit", f"must be from 1 to {MAX_LIST}"))
    if values["offset"] > MAX_OFFSET:
        problems.append(Problem("offset", f"must be at most {MAX_OFFSET}"))
    if problems:
        invalid("the query is not valid", problems)
    return values["limit"], values["offset"]


async def _until(
    room: LiveRoom, seq: int, done: Callable[[Event], bool]
) -> list[tuple[int, Event, NegotiationState]]:
    """The room's events after `seq` up to the first `done` (or its end)."""
    seen: list[tuple[int, Event, NegotiationState]] = []
    while True:
        newer = await room.after(seq)
        if not newer:
            return seen
        for item in newer:
            seen.append(item)
            if done(item[1]) or isinstance(item[1], NegotiationEnded):
                return seen
        seq = newer[-1][0]


def _told(viewer: Viewer, state: NegotiationState) -> bool:
    """Whether the viewer is told the room's outcome: a seller only of its own deal, as
    the broker tells it (`domain.visibility`: `room.closed`)."""
    if state.outcome is None:
        return False
    return viewer.role != "seller" or state.outcome.seller == viewer.agent


def _unwon(row: RunRow) -> RunRow:
    """A negotiation's row without the outcome of a deal the viewer did not get."""
    return msgspec.structs.replace(
        row, outcome=None, seller=None, unit_price=None, quantity=None, total=None
    )


def _same_handle(a: str, b: str) -> bool:
    return a.lstrip("@").casefold() == b.lstrip("@").casefold()


def _seller_id(view: BuyerView, name: str) -> str | None:
    """The agent id of a seller of the room named by handle (`@TechMart`, any case) or id."""
    wanted = item_key(name.lstrip("@"))
    for peer in view.sellers:
        if wanted in (peer.agent_id, item_key(peer.handle.lstrip("@"))):
            return peer.agent_id
    return None


def _closes_round(event: Event, round_: int) -> bool:
    return isinstance(event, RoundClosed) and event.round == round_


def _handle(started: NegotiationStarted, agent: str) -> str:
    return next((s.handle for s in started.sellers if s.agent_id == agent), agent)


def _answered(
    room: LiveRoom, events: list[tuple[int, Event, NegotiationState]], round_: int
) -> MessageAnswered:
    """What the buyer heard for its message of `round_`: each seller's reply (as the
    broker delivered it to the buyer), who did not answer, and the end if it came."""
    started = room.state.started
    assert started is not None
    buyer = started.buyer.agent_id
    message_id = None
    responses: list[SellerResponse] = []
    unanswered: list[str] = []
    for _, event, state in events:
        if isinstance(event, BuyerSaid) and event.round == round_:
            message_id = event.message_id
        if isinstance(event, RoundClosed) and event.round == round_:
            unanswered = [_handle(started, a) for a in event.unanswered]
        for to, msg in route(state, event):
            if to == buyer and isinstance(msg, SellerMessage) and msg.round == round_:
                offer = msg.offer
                responses.append(
                    SellerResponse(
                        seller_id=msg.seller.agent_id,
                        handle=msg.seller.handle,
                        response=msg.text,
                        message_id=msg.message_id,
                        offer=OfferOut(unit_price=offer.unit_price, quantity=offer.quantity)
                        if offer is not None
                        else None,
                    )
                )
    ended = room.state.phase == "ended"
    outcome = room.state.outcome
    return MessageAnswered(
        message_id=message_id,
        round=round_,
        seller_responses=responses,
        unanswered=unanswered,
        status="ended" if ended else "in_progress",
        outcome=_plain(outcome) if ended and outcome is not None else None,
    )


def _analytics(analysis: NegotiationAnalysis) -> dict[str, Any]:
    """The specification's analytics figures, named for what MAMS measures, and the whole
    analysis (`mams analyze --json`'s shape) under `analysis`."""
    deal = analysis.deal
    flags = sum(analysis.flags_by_kind.values())
    return {
        "negotiation_id": analysis.negotiation_id,
        "rounds": analysis.rounds,
        "messages": analysis.messages,
        "response_times_ms": {
            a.handle: {"mean": a.latency_ms_mean, "max": a.latency_ms_max} for a in analysis.agents
        }
        if analysis.latency_measured
        else None,
        "outcome": analysis.outcome,
        "savings_vs_first_ask": deal.saving_vs_first_ask if deal else None,
        "within_budget": deal.unit_price <= analysis.buyer_max_price if deal else None,
        "quality": {
            "flags": flags,
            "flags_by_kind": analysis.flags_by_kind,
            "flags_per_message": round(flags / analysis.messages, 4) if analysis.messages else 0.0,
        },
        "analysis": _plain(analysis),
    }


def create_app(api: Api, *, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The ASGI application over `api`."""
    return Starlette(routes=[*api.routes(), *extra_routes], middleware=[Middleware(BodyLimit)])
