"""What an open_rooms request asks for: checked, then planned as the rooms to open.

The broker answers it (idempotently, by request_id) and opens the rooms; here is only the
decision of what they are, refused with a reason the agent reads (`RefusedError`)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from typing import Protocol
from uuid import UUID

from mams.domain.bounds import MAX_ROOMS_PER_REQUEST, room_option_problem
from mams.domain.config import Scenario, ScenarioError, item_key, parse_scenario, stock_index
from mams.domain.events import NegotiationStarted
from mams.domain.messages import OpenRooms
from mams.domain.opening import opening
from mams.domain.plan import PlanError, PlanOptions, pick_items
from mams.domain.plan import plan_rooms as plan_study


class SessionStore(Protocol):
    """Where the broker finds (and stores) session configurations."""

    async def load(self, session_id: UUID) -> Scenario | None:
        """The scenario of a stored session, or None."""
        ...

    async def save(self, session_id: UUID, scenario: Scenario) -> None:
        """Store a scenario as a new session."""
        ...


class RefusedError(Exception):
    """An open-rooms request that cannot be served; `reason` goes back to the agent."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


MAX_RUNS = MAX_ROOMS_PER_REQUEST  # runs one open_rooms may ask for (and runs x items)


def check_room_options(request: OpenRooms) -> PlanOptions:
    """The plan options of a request, refused if one agent could use them to cost the
    market without bound (seeds in `skip` included)."""
    options = request.options()
    for problem in options.problems():
        raise RefusedError(f"{problem.path} {problem.message}")
    for _, seed in request.skip:
        if seed is not None and (wrong := room_option_problem("seed", seed)) is not None:
            raise RefusedError(f"seeds in skip {wrong}, got {seed}")
    return options


async def plan_rooms(
    agent: str,
    request: OpenRooms,
    sessions: SessionStore,
    configurers: Collection[str],
    brains: Mapping[str, str],
) -> tuple[UUID, list[NegotiationStarted]]:
    """The session and the rooms `agent`'s request opens (ids derived from its
    request_id, so a request sent again plans the same rooms), storing a scenario it
    carries as a new session. The rooms are `domain.plan`'s, as every runtime plans them.
    Raises RefusedError with the reason to send back."""
    options = check_room_options(request)
    session_id = request.session_id
    if request.scenario is not None:
        if agent not in configurers:
            raise RefusedError(
                "only an agent the operator allowed to configure markets may send a "
                "scenario (mams broker --configurer HANDLE); send the session_id of a "
                "session the operator stored instead"
            )
        try:
            scenario = parse_scenario(request.scenario, source="open_rooms.scenario")
        except ScenarioError as exc:
            raise RefusedError(str(exc)) from None
        session_id = uuid.uuid5(request.request_id, "session")
    elif session_id is not None:
        loaded = await sessions.load(session_id)
        if loaded is None:
            raise RefusedError(f"no session {session_id}; `mams sessions` lists them")
        scenario = loaded
    else:
        raise RefusedError("open_rooms needs a session_id or a scenario")
    if scenario.buyer.agent_id != agent:
        raise RefusedError(f"only the session's buyer ({scenario.buyer.handle}) may open its rooms")
    try:
        items = pick_items(scenario, request.items)
        plan = plan_study([i.item_name for i in items], options, request.skip)
    except PlanError as exc:
        raise RefusedError(str(exc)) from None
    if not plan.rooms:
        raise RefusedError("every room asked for is in skip: nothing to open")
    if request.scenario is not None and await sessions.load(session_id) is None:
        await sessions.save(session_id, scenario)
    assert session_id is not None
    labels = {
        a: brains.get(a, "unannounced")
        for a in [scenario.buyer.agent_id, *(s.agent_id for s in scenario.sellers)]
    }
    index = stock_index(scenario)
    by_key = {item_key(i.item_name): i for i in items}
    return session_id, [
        opening(
            scenario,
            session_id,
            by_key[item_key(room.item_name)],
            options.for_room(room.seed),
            labels,
            uuid.uuid5(request.request_id, f"{item_key(room.item_name)}\x00{room.seed}"),
            index.get(item_key(room.item_name), ()),
        )
        for room in plan.rooms
    ]
