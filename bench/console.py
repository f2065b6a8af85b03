"""The web console's figures (api/console.py, api/static/): figures, never assertions.

Usage: python bench/console.py [--rounds 50] [--nats URL] [--dsn DSN]

1. Commit to DOM: `mams serve`'s app (api.app.Api and the console's routes, over an
   actors.live.Live) runs on uvicorn in this process over a real NATS and PostgreSQL
   (NATS_URL / DATABASE_URL, defaults to 127.0.0.1) in a throwaway schema. Debian's
   chromium (headless, driven by Playwright) opens the live room page of a room with a
   person as the buyer, played in process for --rounds rounds (baseline sellers: they
   answer at once), then a walk-away. Each committed event's time is taken in `Live`'s
   on_event (as the room gets it from the bus, before any stream wakes), with
   `time.time()`; the page's, by a MutationObserver on the lanes when the element showing
   that event (its `data-seq`) is added, with `performance.timeOrigin + performance.now()`.
   Both read the machine's real-time clock, in milliseconds since the epoch.
   The delay covers the server's SSE write, the browser's fetch stream, parsing and the
   DOM update (and, for a seller's offer, the chart redrawn before the lane is updated).
2. Page weight: the bytes of each page's HTML, script and style (uncompressed), which is
   everything a page loads (no images, fonts or libraries).

Target (issue 19): under 100 ms p99 commit-to-DOM; each page under 300 KB.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import asyncpg
import httpx
import structlog
import uvicorn
from playwright.async_api import async_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api import authenticate, drive, ms, new_session, start
from mams.actors.live import Live
from mams.api.app import Api, create_app
from mams.api.console import routes as console_routes
from mams.bus.base import Bus
from mams.bus.nats import NatsBus
from mams.domain.events import Event
from mams.domain.negotiation import NegotiationState
from mams.storage.pg import open_store
from mams.storage.readmodels import ReadModelProjector

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
]
# Records, for each data-seq the lanes gain, when it first appeared (ms since the epoch).
OBSERVE = """() => {
  window.__shown = {};
  new MutationObserver((records) => {
    const t = performance.timeOrigin + performance.now();
    for (const r of records) for (const n of r.addedNodes) {
      const seq = n.dataset && n.dataset.seq;
      if (seq && !(seq in window.__shown)) window.__shown[seq] = t;
    }
  }).observe(document.querySelector('#lanes'), {childList: true, subtree: true});
}"""


@dataclass
class Served:
    base: str
    live: Live
    commits: dict[tuple[uuid.UUID, int], float] = field(default_factory=dict)


@asynccontextmanager
async def serving(nats_url: str, dsn: str) -> AsyncIterator[Served]:
    schema = f"bench_console_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    pool, store = await open_store(dsn, schema, projector=ReadModelProjector())
    commits: dict[tuple[uuid.UUID, int], float] = {}

    def on_event(nid: uuid.UUID, seq: int, event: Event, state: NegotiationState) -> None:
        commits.setdefault((nid, seq), time.time() * 1000)

    async def connect(name: str) -> Bus:
        return await NatsBus.connect(nats_url, name=f"bench-console-{name}")

    live = Live(connect, store, on_event=on_event)
    api = Api(pool, store, live, authenticate=authenticate)
    app = create_app(api, extra_routes=console_routes(api))
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(live.run)
            async with anyio.create_task_group() as web:
                web.start_soon(server.serve, [sock])
                yield Served(base, live, commits)
                server.should_exit = True
            tg.cancel_scope.cancel()
    finally:
        sock.close()
        await pool.close()
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


async def commit_to_dom(srv: Served, http: httpx.AsyncClient, rounds: int) -> None:
    sid = await new_session(http)
    nid = await start(http, sid, "human", rounds)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = await browser.new_page()
        await page.goto(f"{srv.base}/room/{nid}")
        await page.locator("#lanes .lane").first.wait_for()
        await page.evaluate(OBSERVE)
        took: list[float] = []
        await drive(srv, nid, rounds, took)  # type: ignore[arg-type]
        await page.locator("#end").wait_for()
        shown: dict[str, float] = await page.evaluate("() => window.__shown")
        weights = {}
        for path in ("/", f"/play/{sid}", f"/room/{nid}"):
            html = len((await http.get(path)).content)
            weights[path.split("/")[1] or "sessions"] = html
        assets = 0
        for name in ("console.js", "console.css"):
            assets += len((await http.get(f"/console/static/{name}")).content)
        await browser.close()
    delays = [t - srv.commits[(nid, int(seq))] for seq, t in shown.items()]
    missing = len([k for k in srv.commits if k[0] == nid]) - len(shown)
    print(f"commit -> DOM in chromium, {rounds} rounds ({len(delays)} events shown):")
    print(f"  {ms([d / 1000 for d in delays])}")
    print(f"  committed events the lanes show nothing of (e.g. the end): {missing}")
    print("page weight (HTML + console.js + console.css, uncompressed):")
    for name, html in weights.items():
        print(f"  {name:9} {html + assets:8,} bytes  (HTML {html:,}, script and style {assets:,})")


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--nats", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    p.add_argument(
        "--dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    args = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    async with (
        serving(args.nats, args.dsn) as srv,
        httpx.AsyncClient(base_url=srv.base, timeout=60) as http,
    ):
        await commit_to_dom(srv, http, args.rounds)


if __name__ == "__main__":
    anyio.run(main)
