"""`GET /api/negotiations/{id}/events`: Server-Sent Events of a room's committed events,
each viewer getting its own view (`api.app.visible`, i.e. `domain.visibility.route` for a
player, every event whole for an operator or observer).

A room this server runs is followed live: each batch the room commits wakes the stream
(`LiveRoom.after`, no polling). An ended room, or one this server does not run, is sent
from the log (`store.read`, each state by `evolve`) and the stream ends. Either way the
stream ends after the room's `negotiation.ended`.

Each SSE event is one thing the viewer may see: `id:` the committed event's seq, `event:`
the type tag of what is sent (an event's for an operator or observer, a delivered
message's, e.g. `seller.message`, for a player), `data:` its JSON. A committed event the
viewer sees nothing of is not sent. `Last-Event-ID` (the header a reconnecting
EventSource sends) or `?after=N` resumes after that seq, so a dropped connection misses
nothing and gets nothing twice; the header wins when both are given. Comment lines
(`: ping`) keep the connection alive every `PING_SECONDS`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any
from uuid import UUID

import msgspec
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from mams.actors.live import LiveRoom
from mams.api.app import ApiError, _uuid, visible
from mams.api.auth import Viewer
from mams.domain.config import Problem
from mams.domain.events import Event, NegotiationEnded
from mams.domain.negotiation import NegotiationState

if TYPE_CHECKING:
    from mams.api.app import Api

PING_SECONDS = 15.0

_json = msgspec.json.Encoder(decimal_format="number")

Committed = tuple[int, Event, NegotiationState]


def resume_point(request: Request) -> int:
    """The seq the viewer has seen up to: `Last-Event-ID`, else `?after=`, else 0."""
    header = request.headers.get("last-event-id")
    name = "after" if header is None else "Last-Event-ID"
    text = (request.query_params.get("after") if header is None else header.strip()) or ""
    if not text:
        return 0
    if not (text.isascii() and text.isdigit()):
        raise ApiError(
            422,
            "the resume point is not valid",
            [Problem(name, f"must be the seq of an event seen (a whole number), got {text!r}")],
        )
    return int(text)


def sse(viewer: Viewer, committed: Committed) -> list[ServerSentEvent]:
    """What of one committed event this viewer receives, as SSE events (none, mostly one)."""
    seq, event, state = committed
    started = state.started
    if started is None:
        return []
    items = visible(viewer, started, state, event)
    return [
        ServerSentEvent(
            _json.encode(item).decode(),
            event=str(item.get("type", "")),
            # Only the last of an event's items carries its seq: a client that drops
            # between two of them resumes before the event, not after it.
            id=str(seq) if i == len(items) - 1 else None,
        )
        for i, item in enumerate(items)
    ]


async def follow(room: LiveRoom, after: int) -> AsyncIterator[Committed]:
    """The room's events after seq `after`, as it commits them, until its end."""
    seq = after
    while True:
        newer = await room.after(seq)
        if not newer:
            return  # ended (or its run stopped) with nothing more
        for committed in newer:
            yield committed
            if isinstance(committed[1], NegotiationEnded):
                return
        seq = newer[-1][0]


async def replayed(log: Iterable[Committed], after: int) -> AsyncIterator[Committed]:
    for committed in log:
        if committed[0] > after:
            yield committed


async def _stream(viewer: Viewer, source: AsyncIterator[Committed]) -> AsyncIterator[Any]:
    async for committed in source:
        for item in sse(viewer, committed):
            yield item


def events_endpoint(api: Api) -> Callable[[Request, Viewer], Awaitable[Response]]:
    """The handler of `GET /api/negotiations/{nid}/events` over `api` (wrapped by
    `Api._handler`, which authenticates and answers ApiError: the 404, 403 and 422 come
    before the stream starts)."""

    async def events(request: Request, viewer: Viewer) -> Response:
        nid: UUID = _uuid(request.path_params["nid"], "negotiation")
        after = resume_point(request)
        room = api.live.room(nid)
        source: AsyncIterator[Committed]
        if room is not None:
            api._require_session(viewer, room.session_id)
            source = follow(room, after)
        else:
            _, log = await api._started(nid, viewer)  # 404 / 403
            source = replayed(log, after)
        return EventSourceResponse(_stream(viewer, source), ping=PING_SECONDS)

    return events
