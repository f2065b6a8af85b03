"""The web console of `mams serve`: a few pages served at `/`, over the HTTP API.

Pages are server-rendered HTML shells (a `string.Template` each) and one small vanilla
JavaScript file (`api/static/console.js`) that calls the API with the person's token and
follows a room's Server-Sent Events live. The shells hold no data and no secret, so they
need no token; everything a page shows comes from `/api/...` with the token the person
typed (kept in the tab's sessionStorage) and is seen exactly as that token may see it
(a buyer token's page never holds a seller's terms before the end). Every text an agent
wrote is put into the page as text (`textContent`), never as HTML.

Pages:

- `/`: sessions (list; create from a form or by pasting a TOML/JSON scenario, each
  problem shown at its field; start agent rooms; play as the buyer);
- `/play/{session_id}`: play as the buyer (start a room, see replies live, message all or
  chosen sellers, counter, accept an offer with one click, walk away; then the debrief);
- `/room/{negotiation_id}`: a live room (a lane per seller, round markers, an
  offers-by-round chart drawn as inline SVG, the outcome and analysis at the end; a
  player token sees its own view: a seller's, the buyer's messages addressed to it);
- `/replay/{negotiation_id}`: any stored room stepped or scrubbed event by event from its
  log (`?at=N` opens at the Nth event), the room as it stood then beside that event whole
  (as the caller's token sees it: for an operator or observer, reasoning, guardrail
  trips, quality flags and model calls included) and, for an operator, beside it what
  one agent was delivered of it (read with a token minted for that agent's view and
  revoked at once);
- `/study/{session_id}`: a session's rooms, the deal rate and savings so far and the deal
  rate by seller style (`GET /api/sessions/{id}/report`), refreshed as each room it follows
  (up to four at once, by their event streams) ends.

One API route is the console's: `POST /console/scenario` reads a pasted scenario (TOML or
JSON text, `domain.config.parse_scenario_text`) and answers its mapping as JSON for
`POST /api/sessions`, or 422 with every problem's path (under `scenario.`); it is
authenticated and rate-limited as every `/api` route is.

Assets ship inside the package (`mams.api` package-data: `static/*`): no CDN, no build
step, no network at run time.
"""

from __future__ import annotations

import html
import json
import tomllib
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Literal

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from mams.api.app import ApiError, _prefixed, json_response
from mams.api.auth import Viewer
from mams.api.bodies import MAX_BODY
from mams.domain.config import ScenarioError, parse_scenario_text

if TYPE_CHECKING:
    from mams.api.app import Api

ASSETS = Path(__file__).with_name("static")
ASSET_TYPES = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
# The pages load only this origin's script and style, and call only this origin.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

PAGE = Template(
    """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title · MAMS console</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/console/static/console.css">
<script src="/console/static/console.js" defer></script>
</head>
<body data-page="$page" $data>
<a class="skip" href="#main">Skip to content</a>
<header class="bar">
  <nav aria-label="Console"><a href="/">MAMS · Sessions</a></nav>
  <form id="token-form" class="token">
    <label for="token">API token</label>
    <input id="token" type="password" autocomplete="off" size="24"
      aria-describedby="token-note">
    <button type="submit">Use token</button>
    <span id="token-note" class="note" role="status"></span>
  </form>
</header>
<main id="main" tabindex="-1">
<h1>$title</h1>
<p id="error" class="error" role="alert" hidden></p>
$body
</main>
</body>
</html>
"""
)

SESSIONS = """
<section aria-labelledby="list-h">
  <h2 id="list-h">Sessions</h2>
  <div class="field"><label for="runs">Runs per item, for agent rooms (a study)</label>
    <input id="runs" type="number" min="1" max="1000" value="1"></div>
  <p id="sessions-status" role="status">Loading…</p>
  <table id="sessions" hidden>
    <caption class="sr">Sessions, newest first</caption>
    <thead><tr><th scope="col">Description</th><th scope="col">Created</th>
    <th scope="col">Rooms</th><th scope="col">Actions</th></tr></thead>
    <tbody></tbody>
  </table>
  <div id="started" role="status"></div>
</section>

<section aria-labelledby="form-h">
  <h2 id="form-h">New session from a form</h2>
  <form id="new-session" novalidate>
    <p id="form-problems" class="error" role="alert" hidden></p>
    <div class="field"><label for="f-description">Description</label>
      <input id="f-description" data-path="description" value="USB-C cables"></div>
    <fieldset><legend>The buyer's need (private to the buyer)</legend>
      <div class="field"><label for="f-item">Item</label>
        <input id="f-item" data-path="buyer.items[0].item_name" value="USB-C cable"></div>
      <div class="field"><label for="f-quantity">Quantity</label>
        <input id="f-quantity" data-path="buyer.items[0].quantity" inputmode="numeric"
          value="3"></div>
      <div class="field"><label for="f-min">Hoped-for price (per unit)</label>
        <input id="f-min" data-path="buyer.items[0].min_price" inputmode="decimal"
          value="4.00"></div>
      <div class="field"><label for="f-max">Most it will pay (per unit)</label>
        <input id="f-max" data-path="buyer.items[0].max_price" inputmode="decimal"
          value="9.00"></div>
    </fieldset>
    $sellers
    <button type="submit">Create session</button>
  </form>
</section>

<section aria-labelledby="paste-h">
  <h2 id="paste-h">New session from a scenario</h2>
  <form id="paste-session" novalidate>
    <p id="paste-problems-note" class="error" role="alert" hidden></p>
    <div class="field"><label for="p-format">Format</label>
      <select id="p-format"><option value="toml">TOML</option>
      <option value="json">JSON</option></select></div>
    <div class="field wide"><label for="p-text">Scenario (as in examples/*.toml)</label>
      <textarea id="p-text" rows="12" spellcheck="false"
        aria-describedby="paste-problems"></textarea></div>
    <ul id="paste-problems" class="problems"></ul>
    <button type="submit">Create session</button>
  </form>
</section>
"""

SELLER = Template(
    """<fieldset><legend>Seller $n (its terms are private to it)</legend>
  <div class="field"><label for="s$i-handle">Handle</label>
    <input id="s$i-handle" data-path="sellers[$i].handle" value="$handle"></div>
  <div class="field"><label for="s$i-style">Style</label>
    <select id="s$i-style" data-path="sellers[$i].style">$styles</select></div>
  <div class="field"><label for="s$i-retention">Care for the customer (0 to 1)</label>
    <input id="s$i-retention" data-path="sellers[$i].customer_retention_weight"
      inputmode="decimal" value="$retention"></div>
  <div class="field"><label for="s$i-cost">Cost price</label>
    <input id="s$i-cost" data-path="sellers[$i].inventory[0].cost_price" inputmode="decimal"
      value="$cost"></div>
  <div class="field"><label for="s$i-selling">Asking price</label>
    <input id="s$i-selling" data-path="sellers[$i].inventory[0].selling_price"
      inputmode="decimal" value="$selling"></div>
  <div class="field"><label for="s$i-least">Floor (least price)</label>
    <input id="s$i-least" data-path="sellers[$i].inventory[0].least_price"
      inputmode="decimal" value="$least"></div>
</fieldset>"""
)
FORM_SELLERS = (
    ("@TechStore", "rude", "0.2", "2.00", "9.50", "5.50"),
    ("@QuickTech", "sweet", "0.7", "3.00", "8.00", "6.00"),
)

PLAY = """
<section id="setup" aria-labelledby="setup-h">
  <h2 id="setup-h">Start a room</h2>
  <form id="start-form">
    <div class="field"><label for="item">Item</label><select id="item"></select></div>
    <button type="submit">Start as the buyer</button>
  </form>
</section>
<section id="room" aria-labelledby="room-h" hidden>
  <h2 id="room-h">Room</h2>
  <p id="brief"></p>
  <p id="turn" role="status" aria-live="polite"></p>
  <div class="cols">
    <div>
      <h3>Conversation</h3>
      <div role="log" aria-live="polite" aria-label="Conversation">
        <ol id="log" class="log"></ol>
      </div>
    </div>
    <div>
      <h3 id="offers-h">Standing offers</h3>
      <table id="offers" aria-labelledby="offers-h">
        <thead><tr><th scope="col">Seller</th><th scope="col">Offer</th>
        <th scope="col">Round</th><th scope="col">Accept</th></tr></thead>
        <tbody></tbody>
      </table>
    </div>
  </div>
  <form id="say-form" novalidate>
    <fieldset id="to"><legend>To</legend>
      <label><input type="checkbox" name="to" value="all" checked> All sellers</label>
    </fieldset>
    <div class="field wide"><label for="say-text">Message</label>
      <textarea id="say-text" rows="3" required></textarea></div>
    <div class="field"><label for="counter">Counter price per unit (optional)</label>
      <input id="counter" inputmode="decimal"></div>
    <button id="send" type="submit">Send</button>
    <button id="walk" type="button">Walk away</button>
    <p id="say-problems" class="error" role="alert" hidden></p>
  </form>
</section>
<section id="end" aria-labelledby="end-h" hidden tabindex="-1">
  <h2 id="end-h">Outcome</h2>
  <p id="outcome"></p>
  <h3>Debrief: what was hidden</h3>
  <div id="debrief"></div>
  <h3>Analysis</h3>
  <dl id="analysis"></dl>
</section>
"""

ROOM = """
<p id="brief"></p>
<p><a id="replay-link" href="#main">Replay this room event by event</a></p>
<p id="room-status" role="status" aria-live="polite">Connecting…</p>
<section aria-labelledby="chart-h">
  <h2 id="chart-h">Offers by round</h2>
  <figure id="chart" aria-describedby="chart-note"></figure>
  <p id="chart-note" class="note">Each seller's offers (per unit) and the buyer's
  counters, by round.</p>
</section>
<section aria-labelledby="lanes-h">
  <h2 id="lanes-h">Lanes</h2>
  <div id="lanes" class="lanes"></div>
</section>
<section id="end" aria-labelledby="end-h" hidden tabindex="-1">
  <h2 id="end-h">Outcome</h2>
  <p id="outcome"></p>
  <div id="debrief"></div>
  <dl id="analysis"></dl>
</section>
"""

REPLAY = """
<p id="brief"></p>
<section aria-labelledby="scrub-h">
  <h2 id="scrub-h">Step through the log</h2>
  <div class="scrubber">
    <button id="prev" type="button">Previous event</button>
    <label for="scrub">Event</label>
    <input id="scrub" type="range" min="0" max="0" step="1" value="0">
    <button id="next" type="button">Next event</button>
  </div>
  <p id="position" role="status" aria-live="polite"></p>
</section>
<div class="cols">
  <section aria-labelledby="lanes-h">
    <h2 id="lanes-h">The room up to this event</h2>
    <div id="lanes" class="lanes"></div>
  </section>
  <section aria-labelledby="event-h">
    <h2 id="event-h">This event, whole</h2>
    <pre id="event" class="event" tabindex="0" aria-labelledby="event-h"></pre>
    <div id="views" hidden>
      <h2 id="view-h">As one agent was delivered it</h2>
      <div class="field"><label for="as">Agent</label>
        <select id="as"><option value="">(choose an agent)</option></select></div>
      <pre id="view" class="event" tabindex="0" aria-labelledby="view-h"></pre>
    </div>
  </section>
</div>
<section aria-labelledby="chart-h">
  <h2 id="chart-h">Offers by round</h2>
  <figure id="chart"></figure>
</section>
<section id="end" aria-labelledby="end-h" hidden tabindex="-1">
  <h2 id="end-h">Outcome</h2>
  <p id="outcome"></p>
  <div id="debrief"></div>
  <dl id="analysis"></dl>
</section>
"""

STUDY = """
<p id="study-status" role="status" aria-live="polite">Loading…</p>
<p><button id="refresh" type="button">Refresh now</button></p>
<section aria-labelledby="figures-h">
  <h2 id="figures-h">So far</h2>
  <dl id="figures"></dl>
</section>
<section aria-labelledby="styles-h">
  <h2 id="styles-h">Deal rate by seller style</h2>
  <figure id="styles-chart"></figure>
</section>
<section aria-labelledby="plots-h">
  <h2 id="plots-h">The report's plots</h2>
  <div id="plots"><p>Drawn once rooms have ended.</p></div>
</section>
<section aria-labelledby="rooms-h">
  <h2 id="rooms-h">Rooms</h2>
  <table id="rooms">
    <caption class="sr">The session's rooms, newest first</caption>
    <thead><tr><th scope="col">Item</th><th scope="col">Status</th>
    <th scope="col">Outcome</th><th scope="col">Price</th><th scope="col">Open</th></tr></thead>
    <tbody></tbody>
  </table>
</section>
"""


def _styles(chosen: str) -> str:
    return "".join(
        f"<option{' selected' if s == chosen else ''}>{s}</option>"
        for s in ("rude", "neutral", "sweet")
    )


def _sessions_body() -> str:
    sellers = "\n".join(
        SELLER.substitute(
            n=i + 1,
            i=i,
            handle=handle,
            styles=_styles(style),
            retention=retention,
            cost=cost,
            selling=selling,
            least=least,
        )
        for i, (handle, style, retention, cost, selling, least) in enumerate(FORM_SELLERS)
    )
    return Template(SESSIONS).substitute(sellers=sellers)


def page(title: str, name: str, body: str, data: dict[str, str] | None = None) -> HTMLResponse:
    """A page: the shell around `body`, with `data` as the body's data- attributes."""
    attrs = " ".join(
        f'data-{key}="{html.escape(value, quote=True)}"' for key, value in (data or {}).items()
    )
    text = PAGE.substitute(title=html.escape(title), page=name, data=attrs, body=body)
    return HTMLResponse(text, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})


async def sessions_page(request: Request) -> Response:
    return page("Sessions", "sessions", _sessions_body())


async def play_page(request: Request) -> Response:
    sid = request.path_params["session_id"]
    return page("Play as the buyer", "play", PLAY, {"session": sid})


async def room_page(request: Request) -> Response:
    nid = request.path_params["nid"]
    return page("A live room", "room", ROOM, {"negotiation": nid})


async def replay_page(request: Request) -> Response:
    nid = request.path_params["nid"]
    return page("Replay", "replay", REPLAY, {"negotiation": nid})


async def study_page(request: Request) -> Response:
    sid = request.path_params["session_id"]
    return page("Study", "study", STUDY, {"session": sid})


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    kind = ASSET_TYPES.get(name)
    if kind is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(
        (ASSETS / name).read_bytes(), media_type=kind, headers={"Cache-Control": "no-cache"}
    )


def scenario_endpoint(api: Api) -> Callable[[Request, Viewer], Awaitable[Response]]:
    """`POST /console/scenario` over `api`: `{"text": ..., "format": "toml" | "json"}` to
    the scenario's mapping (validated whole), or 422 with every problem's path."""

    async def scenario(request: Request, viewer: Viewer) -> Response:
        api._require(viewer, "operator")
        body = await request.body()
        if len(body) > MAX_BODY:
            raise ApiError(413, "a scenario is at most 1 MiB")
        try:
            raw = json.loads(body)
        except ValueError:
            raw = None
        if not isinstance(raw, dict) or not isinstance(raw.get("text"), str):
            raise ApiError(422, 'send {"text": ..., "format": "toml" or "json"}')
        fmt: Literal["toml", "json"] = "json" if raw.get("format") == "json" else "toml"
        try:
            parse_scenario_text(raw["text"], fmt=fmt, source="scenario")
        except ScenarioError as exc:
            raise ApiError(
                422, "the scenario is not valid", _prefixed("scenario", exc.problems)
            ) from None
        mapping = (
            json.loads(raw["text"], parse_float=Decimal)
            if fmt == "json"
            else tomllib.loads(raw["text"], parse_float=Decimal)
        )
        return json_response({"scenario": mapping})

    return scenario


def routes(api: Api) -> list[BaseRoute]:
    """The console's pages, its assets and its one API route."""
    return [
        Route("/", sessions_page, methods=["GET"]),
        Route("/play/{session_id}", play_page, methods=["GET"]),
        Route("/room/{nid}", room_page, methods=["GET"]),
        Route("/replay/{nid}", replay_page, methods=["GET"]),
        Route("/study/{session_id}", study_page, methods=["GET"]),
        Route("/console/static/{name}", asset, methods=["GET"]),
        Route(
            "/console/scenario",
            api._handler(scenario_endpoint(api)),
            methods=["POST"],
        ),
    ]
