"""The OpenAPI 3.1 document of the HTTP API (`GET /api/openapi.json`).

Schemas come from the msgspec types the API reads and writes (`api.bodies`, `api.auth`,
the read models' rows): `msgspec.json.schema_components` emits JSON Schema 2020-12, the
dialect of OpenAPI 3.1, so there is no second set of models. Money is a `Decimal`, which
msgspec describes as a string; the API writes it as a JSON number and reads either, so
the document says so. Answers the API builds as mappings (a session, a negotiation,
analytics, a report) are described here by their fields.

`ROUTES` is the table of every route: `tests/api/test_openapi.py` checks that it names
exactly the routes of `api.app.Api.routes()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import msgspec

from mams.api.auth import TokenBody, TokenMinted
from mams.api.bodies import (
    MAX_BODY,
    BuyerConfigBody,
    DecideBody,
    Decided,
    ErrorOut,
    MessageAnswered,
    MessageBody,
    NewSeller,
    NewSession,
    SellerAdded,
    SessionCreated,
    StartBody,
    Started,
)
from mams.storage.drafts import SessionSummary
from mams.storage.readmodels import RunRow

REF = "#/components/schemas/{name}"
ERRORS = {
    401: "no token, or one that is not valid (the header WWW-Authenticate: Bearer)",
    403: "this token's role or session may not do this",
    404: "no such session or negotiation (or an id that is not one)",
    409: "the session or room is not in a state that allows this",
    413: f"the request body is over {MAX_BODY} bytes",
    422: "the body or query is not valid: every problem with its JSON path",
    429: "too many requests with this token: Retry-After says when to try again",
}


@dataclass(frozen=True, kw_only=True)
class Op:
    """One route: what it does, what it reads and answers, and its errors."""

    id: str
    summary: str
    roles: str
    body: type | None = None
    answer: Any = None  # a msgspec type, or a JSON schema
    status: int = 200
    query: tuple[str, ...] = ()
    errors: tuple[int, ...] = (401, 403, 429)
    stream: bool = False
    media: str | None = None  # a file answered as is (its media type), not JSON


_ID = ("path",)
_WRITE = (401, 403, 404, 409, 413, 422, 429)
_OBJ: dict[str, Any] = {"type": "object"}
_NULLABLE_INT = {"anyOf": [{"type": "integer"}, {"type": "null"}]}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
    }


_UUID = {"type": "string", "format": "uuid"}
_SESSION = _object(
    {
        "session_id": _UUID,
        "description": {"type": "string"},
        "frozen": {"type": "boolean"},
        "buyer": {"anyOf": [_OBJ, {"type": "null"}]},
        "sellers": {"type": "array", "items": _OBJ},
    },
    {"created_at": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]}},
)
_NEGOTIATION = _object(
    {
        "negotiation_id": _UUID,
        "session_id": _UUID,
        "item_name": {"type": "string"},
        "status": {"enum": ["in_progress", "ended"]},
        "phase": {"type": "string"},
        "round": {"type": "integer"},
        "max_rounds": {"type": "integer"},
        "sellers": {"type": "array", "items": {"type": "string"}},
        "buyer": {"enum": ["human", "agent"]},
        "outcome": {"anyOf": [_OBJ, {"type": "null"}]},
    },
    {"your_turn": {"type": "boolean"}},
)
_ANALYTICS = _object(
    {
        "negotiation_id": _UUID,
        "rounds": {"type": "integer"},
        "messages": {"type": "integer"},
        "outcome": {"type": "string"},
        "quality": _OBJ,
        "analysis": _OBJ,
    },
    {"debrief": _OBJ},
)
# One Server-Sent Event: `id` the event's seq, `event` its type, `data` its JSON.
_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}
_REPLAY = _object(
    {
        "negotiation_id": _UUID,
        "events": {"type": "array", "items": _object({"seq": {"type": "integer"}})},
    }
)


def _page(name: str, item: type) -> dict[str, Any]:
    return _object(
        {
            name: {"type": "array", "items": {"$ref": REF.format(name=item.__name__)}},
            "next_offset": _NULLABLE_INT,
        }
    )


ROUTES: dict[tuple[str, str], Op] = {
    ("POST", "/api/sessions"): Op(
        id="createSession",
        summary="Create a session to assemble (description), or one whole (scenario)",
        roles="operator",
        body=NewSession,
        answer=SessionCreated,
        status=201,
        errors=(401, 403, 413, 422, 429),
    ),
    ("GET", "/api/sessions"): Op(
        id="listSessions",
        summary="Sessions, newest first, paged",
        roles="operator, observer of every session",
        answer=_page("sessions", SessionSummary),
        query=("limit", "offset"),
        errors=(401, 403, 422, 429),
    ),
    ("GET", "/api/sessions/{session_id}"): Op(
        id="getSession",
        summary="A session's configuration (a player sees the sellers' handles only)",
        roles="operator, observer, the session's players",
        answer=_SESSION,
        errors=(401, 403, 404, 429),
    ),
    ("POST", "/api/sessions/{session_id}/buyer-config"): Op(
        id="setBuyerConfig",
        summary="What the buyer needs (replaces any earlier)",
        roles="operator",
        body=BuyerConfigBody,
        answer=_object({"session_id": _UUID, "items": {"type": "integer"}}),
        errors=_WRITE,
    ),
    ("POST", "/api/sessions/{session_id}/sellers"): Op(
        id="addSeller",
        summary="Add a seller and its private terms",
        roles="operator",
        body=NewSeller,
        answer=SellerAdded,
        status=201,
        errors=_WRITE,
    ),
    ("POST", "/api/sessions/{session_id}/tokens"): Op(
        id="mintSessionToken",
        summary="Mint a token for the session's buyer, one of its sellers, or an observer "
        "of it (shown once)",
        roles="operator",
        body=TokenBody,
        answer=TokenMinted,
        status=201,
        errors=(401, 403, 404, 413, 422, 429),
    ),
    ("POST", "/api/tokens"): Op(
        id="mintObserverToken",
        summary="Mint a token for an observer of every session (shown once)",
        roles="operator",
        body=TokenBody,
        answer=TokenMinted,
        status=201,
        errors=(401, 403, 413, 422, 429),
    ),
    ("DELETE", "/api/tokens/{token_id}"): Op(
        id="revokeToken",
        summary="Revoke a minted token by its token_id: refused from the next request on",
        roles="operator",
        answer=_object({"token_id": {"type": "string"}, "revoked": {"const": True}}),
        errors=(401, 403, 404, 429),
    ),
    ("GET", "/api/sessions/{session_id}/report"): Op(
        id="getSessionReport",
        summary="The report of a session's negotiations",
        roles="operator, observer",
        answer=_object({"session_id": _UUID}),
        errors=(401, 403, 404, 429),
    ),
    ("GET", "/api/openapi.json"): Op(
        id="getOpenApi",
        summary="This document",
        roles="any token",
        answer=_object({"openapi": {"type": "string"}, "paths": _OBJ}),
    ),
    ("POST", "/api/negotiations/start"): Op(
        id="startNegotiation",
        summary="Open a session's rooms, the buyer an agent or the caller (human)",
        roles="operator; the session's buyer token for a human buyer",
        body=StartBody,
        answer=Started,
        status=201,
        errors=_WRITE,
    ),
    ("GET", "/api/negotiations"): Op(
        id="listNegotiations",
        summary="Negotiations, newest first, paged (a session's, with session_id)",
        roles="operator, observer; a session's tokens see its own",
        answer=_page("negotiations", RunRow),
        query=("session_id", "limit", "offset"),
        errors=(401, 403, 404, 422, 429),
    ),
    ("GET", "/api/negotiations/{nid}"): Op(
        id="getNegotiation",
        summary="A negotiation's state",
        roles="operator, observer, the session's players",
        answer=_NEGOTIATION,
        errors=(401, 403, 404, 429),
    ),
    ("POST", "/api/negotiations/{nid}/message"): Op(
        id="sendMessage",
        summary="The person's turn as the buyer; answered when the round closes",
        roles="operator, the session's buyer token",
        body=MessageBody,
        answer=MessageAnswered,
        errors=_WRITE,
    ),
    ("POST", "/api/negotiations/{nid}/decide"): Op(
        id="decide",
        summary="Accept a standing offer or walk away; answered with the debrief",
        roles="operator, the session's buyer token",
        body=DecideBody,
        answer=Decided,
        errors=_WRITE,
    ),
    ("GET", "/api/negotiations/{nid}/analytics"): Op(
        id="getAnalytics",
        summary="Figures of a negotiation, and the debrief once it has ended",
        roles="operator, observer; the session's buyer token once it has ended",
        answer=_ANALYTICS,
        errors=(401, 403, 404, 409, 429),
    ),
    ("GET", "/api/negotiations/{nid}/replay"): Op(
        id="replay",
        summary="A negotiation's events as this token may see them",
        roles="operator, observer, the session's players (their own view)",
        answer=_REPLAY,
        errors=(401, 403, 404, 429),
    ),
    ("GET", "/api/sessions/{session_id}/report/plots"): Op(
        id="listReportPlots",
        summary="The session report's plots (mams report's PNGs), drawn now: name and URL",
        roles="operator, observer",
        answer=_object(
            {
                "plots": {
                    "type": "array",
                    "items": _object({"name": {"type": "string"}, "url": {"type": "string"}}),
                }
            }
        ),
        errors=(401, 403, 404, 429),
    ),
    ("GET", "/api/sessions/{session_id}/report/plots/{name}"): Op(
        id="getReportPlot",
        summary="One plot of the session's report, as PNG",
        roles="operator, observer",
        media="image/png",
        errors=(401, 403, 404, 429),
    ),
    ("GET", "/api/negotiations/{nid}/audio/{message_id}"): Op(
        id="getReplyAudio",
        summary="A seller's reply read aloud (mams serve --voice), once it has been made; "
        "404 with Retry-After until then",
        roles="operator, observer, the session's buyer, the seller who said it",
        media="audio/wav",
        errors=(401, 403, 404, 429),
    ),
    ("GET", "/api/negotiations/{nid}/events"): Op(
        id="streamEvents",
        summary="Server-Sent Events of committed events, as this token may see them",
        roles="operator, observer, the session's players (their own view)",
        stream=True,
        query=("after",),
        errors=(401, 403, 404, 422, 429),
    ),
}

_QUERY: dict[str, dict[str, Any]] = {
    "limit": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
    "offset": {"type": "integer", "minimum": 0, "maximum": 1_000_000, "default": 0},
    "session_id": _UUID,
    "after": {"type": "integer", "minimum": 0, "description": "resume after this seq"},
}
_PATH: dict[str, dict[str, Any]] = {
    "session_id": _UUID,
    "nid": _UUID,
    "message_id": _UUID,
    "token_id": {"type": "string"},
    "name": {"type": "string", "pattern": "^[a-z_0-9-]+\\.png$"},
}
_DECIMAL = {"type": "string", "format": "decimal"}


def _money(node: Any) -> Any:
    """msgspec's Decimal schema as the API has it: a JSON number (or a numeric string)."""
    if node == _DECIMAL:
        return {"anyOf": [{"type": "number"}, _DECIMAL]}
    if isinstance(node, dict):
        return {k: _money(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_money(v) for v in node]
    return node


def _schema(answer: Any) -> dict[str, Any]:
    if isinstance(answer, dict):
        return answer
    return {"$ref": REF.format(name=answer.__name__)}


def _operation(path: str, op: Op) -> dict[str, Any]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": _PATH[name]}
        for name in _PATH
        if "{" + name + "}" in path
    ]
    params += [
        {"name": name, "in": "query", "required": False, "schema": _QUERY[name]}
        for name in op.query
    ]
    if op.stream:
        content = {"text/event-stream": {"schema": _EVENT}}
        params.append(
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                "description": "resume after this event's seq",
            }
        )
    elif op.media is not None:
        content = {op.media: {"schema": {"type": "string", "format": "binary"}}}
    else:
        content = {"application/json": {"schema": _schema(op.answer)}}
    responses: dict[str, Any] = {str(op.status): {"description": "success", "content": content}}
    for status in op.errors:
        error: dict[str, Any] = {
            "description": ERRORS[status],
            "content": {"application/json": {"schema": {"$ref": REF.format(name="ErrorOut")}}},
        }
        if status == 429:
            error["headers"] = {
                "Retry-After": {"schema": {"type": "integer"}, "required": True},
            }
        responses[str(status)] = error
    out: dict[str, Any] = {
        "operationId": op.id,
        "summary": op.summary,
        "description": f"Who may: {op.roles}.",
        "parameters": params,
        "responses": responses,
    }
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _schema(op.body)}},
        }
    return out


@cache
def document() -> dict[str, Any]:
    """The whole document (built once)."""
    types: list[type] = [ErrorOut, SessionSummary, RunRow]
    for op in ROUTES.values():
        types += [t for t in (op.body, op.answer) if isinstance(t, type)]
    _, components = msgspec.json.schema_components(dict.fromkeys(types), ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), op in ROUTES.items():
        paths.setdefault(path, {})[method.lower()] = _operation(path, op)
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "MAMS HTTP API",
            "version": "1",
            "description": "The Multi-Agent Marketplace Simulator over HTTP (mams serve): "
            "sessions, negotiations, a person as the buyer. See docs/API.md.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": _money(components),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
