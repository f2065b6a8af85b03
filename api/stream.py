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

Cost per viewer: a view is encoded once for every viewer who sees the same (`Encoded`: all
observers of a room share one encoding), and what a room committed since a stream last
woke goes out in one write (bench/api.py measures the server's CPU per delivery).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING
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
CHUNK = 256  # events of a stored room sent in one write
ENCODED_KEEP = 4096  # encoded views kept for the other viewers of the same room

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


def sse(viewer: Viewer, committed: Committed) -> bytes:
    """What of one committed event this viewer receives, as encoded SSE events (none,
    mostly one)."""
    seq, event, state = committed
    started = state.started
    if started is None:
        return b""
    items = visible(viewer, started, state, event)
    return b"".join(
        ServerSentEvent(
            _json.encode(item).decode(),
            event=str(item.get("type", "")),
            # Only the last of an event's items carries its seq: a client that drops
            # between two of them resumes before the event, not after it.
            id=str(seq) if i == len(items) - 1 else None,
        ).encode()
        for i, item in enumerate(items)
    )


class Encoded:
    """The SSE bytes of the views recently sent, shared by every stream of one API: the
    viewers of a room who see the same (every observer; every buyer token of it) are sent
    one encoding, not one each."""

    def __init__(self, keep: int = ENCODED_KEEP) -> None:
        self._keep = keep
        self._cache: OrderedDict[tuple[UUID, int, str, str | None], bytes] = OrderedDict()

    def get(self, viewer: Viewer, nid: UUID, committed: Committed) -> bytes:
        who = ("all", None) if viewer.sees_everything else (viewer.role, viewer.agent)
        key = (nid, committed[0], *who)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = sse(viewer, committed)
            if len(self._cache) > self._keep:
                self._cache.popitem(last=False)
        return found


async def follow(room: LiveRoom, after: int) -> AsyncIterator[list[Committed]]:
    """The room's events after seq `after` as it commits them, until its end: each time
    what has come since the last (one chunk to send, one write however many viewers wait)."""
    seq = after
    while True:
        newer = await room.after(seq)
        if not newer:
            return  # ended (or its run stopped) with nothing more
        for i, committed in enumerate(newer):
            if isinstance(committed[1], NegotiationEnded):
                yield newer[: i + 1]
                return
        yield newer
        seq = newer[-1][0]


async def replayed(log: list[Committed], after: int) -> AsyncIterator[list[Committed]]:
    """A stored room's events after seq `after`, in chunks of `CHUNK`."""
    rest = [committed for committed in log if committed[0] > after]
    for start in range(0, len(rest), CHUNK):
        yield rest[start : start + CHUNK]


async def _stream(
    viewer: Viewer, nid: UUID, source: AsyncIterator[list[Committed]], encoded: Encoded
) -> AsyncIterator[bytes]:
    async for batch in source:
        data = b"".join(encoded.get(viewer, nid, committed) for committed in batch)
        if data:
            yield data


def events_endpoint(api: Api) -> Callable[[Request, Viewer], Awaitable[Response]]:
    """The handler of `GET /api/negotiations/{nid}/events` over `api` (wrapped by
    `Api._handler`, which authenticates and answers ApiError: the 404, 403 and 422 come
    before the stream starts)."""

    encoded = Encoded()

    async def events(request: Request, viewer: Viewer) -> Response:
        nid: UUID = _uuid(request.path_params["nid"], "negotiation")
        after = resume_point(request)
        room = api.live.room(nid)
        source: AsyncIterator[list[Committed]]
        if room is not None:
            api._require_session(viewer, room.session_id)
            source = follow(room, after)
        else:
            _, log = await api._started(nid, viewer)  # 404 / 403
            source = replayed(log, after)
        return EventSourceResponse(_stream(viewer, nid, source, encoded), ping=PING_SECONDS)

    return events
