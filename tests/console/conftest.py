"""Fixtures for the console's browser tests: `mams serve` as a real process (real NATS and
PostgreSQL, an operator token) and Debian's chromium driven headless by Playwright.

Playwright never downloads a browser here: it launches /usr/bin/chromium (`.ci/run`
installs Debian's package). Without it the tests are skipped, saying so."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.api.conftest import serve
from tests.api.test_auth import bearer, token_file
from tests.processes.conftest import dsn, procs
from tests.processes.helpers import Cast

__all__ = ["dsn", "procs"]  # the process tests' fixtures, used here too

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
]
HERE = Path(__file__).parent
SCREENSHOTS = HERE / "screenshots"

# Marker prices: each seller's cost and floor are values no offer, range or text of the
# first rounds holds, so finding one in a buyer's page means a hidden term leaked.
HIDDEN = ("2.37", "5.53", "3.19", "6.11")
SCENARIO: dict[str, Any] = {
    "name": "console test",
    "description": "console cables",
    "buyer": {
        "handle": "@Buyer",
        "model": "baseline",
        "items": [{"item_name": "USB-C cable", "quantity": 3, "min_price": 4, "max_price": 9}],
    },
    "sellers": [
        {
            "handle": "@TechStore",
            "style": "rude",
            "customer_retention_weight": 0.2,
            "profit_maximization_weight": 0.8,
            "model": "baseline",
            "inventory": [
                {
                    "item_name": "USB-C cable",
                    "cost_price": 2.37,
                    "selling_price": 9.5,
                    "least_price": 5.53,
                }
            ],
        },
        {
            "handle": "@QuickTech",
            "style": "sweet",
            "customer_retention_weight": 0.7,
            "profit_maximization_weight": 0.3,
            "model": "baseline",
            "inventory": [
                {
                    "item_name": "USB-C cable",
                    "cost_price": 3.19,
                    "selling_price": 8.0,
                    "least_price": 6.11,
                }
            ],
        },
    ],
}


@dataclass
class Server:
    base: str
    token: str
    api: httpx.AsyncClient  # the operator's client

    async def session(self) -> str:
        """A session of SCENARIO, created whole."""
        body = {"description": SCENARIO["description"], "scenario": SCENARIO}
        answer = await self.api.post("/api/sessions", json=body)
        assert answer.status_code == 201, answer.text
        sid = answer.json()["session_id"]
        assert isinstance(sid, str)
        return sid

    async def buyer_token(self, sid: str) -> str:
        answer = await self.api.post(f"/api/sessions/{sid}/tokens", json={"role": "buyer"})
        assert answer.status_code == 201, answer.text
        token = answer.json()["token"]
        assert isinstance(token, str)
        return token


@pytest.fixture
async def server(procs: Cast, tmp_path: Path) -> AsyncIterator[Server]:
    """`mams serve` with an operator token, and a client sending it."""
    token, path = token_file(tmp_path)
    base = await serve(procs, "--token-file", str(path))
    async with httpx.AsyncClient(base_url=base, timeout=60, headers=bearer(token)) as api:
        yield Server(base, token, api)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"no {CHROMIUM}: apt-get install chromium (.ci/run does)")
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A page with the console's Content-Security-Policy enforced; the page's script
    errors fail the test."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    opened = await context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    await context.close()
    assert not errors, errors


async def screenshot(page: Page, name: str) -> None:
    """The page as it is, in tests/console/screenshots/ (gitignored)."""
    SCREENSHOTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
