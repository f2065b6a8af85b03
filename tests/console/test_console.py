"""The web console in a real browser (Debian's chromium, headless, driven by Playwright)
against `mams serve` as a real process, with real NATS and PostgreSQL: a session created
from the form (a bad field's error in place) and from a pasted scenario; a room played as
the buyer (replies appearing live, accept with one click, the debrief), with the mouse and
with the keyboard alone; a buyer's page never holding a seller's floor or cost before the
end; a live room's lanes and chart; and axe-core's accessibility check on every page."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from playwright.async_api import Browser, Page, Response, expect

from tests.console.conftest import HIDDEN, Server, screenshot

pytestmark = pytest.mark.e2e

AXE = Path(__file__).with_name("axe.min.js")
ACCEPT = re.compile(r"Accept \$(\d+\.\d\d) from (@\w+)")


async def use_token(page: Page, token: str) -> None:
    """Type the token into the header's form, as a person would."""
    await page.fill("#token", token)
    await page.press("#token", "Enter")
    await expect(page.locator("#token-note")).to_contain_text("A token is in use")


async def tab_to(page: Page, selector: str, limit: int = 80) -> None:
    """Press Tab until the focus is on `selector` (the keyboard's only way there)."""
    for _ in range(limit):
        await page.keyboard.press("Tab")
        if await page.evaluate("(s) => document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"Tab never reached {selector}")


async def cheapest_accept(page: Page) -> tuple[str, str]:
    """The label of the accept button of the lowest standing offer, and its price."""
    buttons = page.locator("#offers button.accept")
    await expect(buttons.first).to_be_enabled()
    offers = []
    for label in await buttons.evaluate_all("(bs) => bs.map((b) => b.getAttribute('aria-label'))"):
        found = ACCEPT.fullmatch(label)
        assert found is not None, label
        offers.append((Decimal(found.group(1)), label))
    price, label = min(offers)
    return label, str(price)


def assert_nothing_hidden(text: str, where: str) -> None:
    """No marker price in `text` as a price (a timestamp's 05.539745 is not one)."""
    for marker in HIDDEN:
        found = re.search(rf"(?<![\d.]){re.escape(marker)}(?!\d)", text)
        assert found is None, f"a seller's hidden price {marker} is in {where}"


async def test_a_session_from_the_form_shows_a_bad_fields_error_in_place(
    server: Server, page: Page
) -> None:
    await page.goto(server.base + "/")
    await use_token(page, server.token)
    await expect(page.locator("#sessions-status")).to_contain_text("0 session(s)")

    # A floor above the asking price: the error is at that field, which gets the focus.
    await page.fill("#s0-least", "12.00")
    await page.fill("#f-quantity", "0")
    await page.click("#new-session button[type=submit]")
    least = page.locator("#s0-least")
    await expect(page.locator("#err-s0-least")).to_contain_text("selling_price")
    await expect(least).to_have_attribute("aria-invalid", "true")
    await expect(least).to_have_attribute("aria-describedby", "err-s0-least")
    await expect(page.locator("#err-f-quantity")).to_be_visible()
    await expect(page.locator("#form-problems")).to_contain_text("not valid")
    await expect(page.locator("#f-quantity")).to_be_focused()  # the first in the form
    await screenshot(page, "sessions-form-error")
    assert (await server.api.get("/api/sessions")).json()["sessions"] == []  # nothing written

    await page.fill("#s0-least", "5.50")
    await page.fill("#f-quantity", "3")
    await page.click("#new-session button[type=submit]")
    await expect(page.locator("#started a")).to_have_text("Play as the buyer")
    await expect(page.locator("#err-s0-least")).to_have_count(0)
    await expect(page.locator("#sessions tbody tr")).to_have_count(1)
    await expect(page.locator("#sessions tbody")).to_contain_text("USB-C cables")

    # Pasting a scenario: TOML, read on the server; each problem with its path.
    bad = '[buyer]\n[[buyer.items]]\nitem_name = "x"\nquantity = 1\nmin_price = 1\n'
    bad += 'max_price = 2\n[[sellers]]\nhandle = "@A"\nstyle = "grumpy"\n'
    await page.fill("#p-text", bad)
    await page.click("#paste-session button[type=submit]")
    problems = page.locator("#paste-problems")
    await expect(problems).to_contain_text("sellers[0].style")
    await expect(page.locator("#p-text")).to_be_focused()
    await page.fill("#p-text", "[buyer\n")
    await page.click("#paste-session button[type=submit]")
    await expect(problems).to_contain_text("not valid TOML")
    examples = Path(__file__).parents[2] / "examples" / "phone-accessories.toml"
    await page.fill("#p-text", examples.read_text())
    await page.click("#paste-session button[type=submit]")
    await expect(page.locator("#sessions tbody tr")).to_have_count(2)
    await expect(problems).to_be_empty()
    await screenshot(page, "sessions")


async def test_play_as_the_buyer_replies_appear_live_accept_in_one_click_then_the_debrief(
    server: Server, page: Page
) -> None:
    sid = await server.session()
    buyer = await server.buyer_token(sid)
    bodies: list[tuple[str, str]] = []

    async def keep(response: Response) -> None:
        if "/events" not in response.url:  # the stream's opacity: tests/api/test_opacity.py
            bodies.append((response.url, await response.text()))

    page.on("response", keep)
    # The link an operator hands a player: the token in the fragment (never sent).
    await page.goto(f"{server.base}/play/{sid}#token={buyer}")
    assert "token" not in page.url  # moved into the tab's storage, out of the address
    await page.click("#start-form button[type=submit]")
    await expect(page.locator("#send")).to_be_enabled()
    await page.evaluate("window.__same_page = true")  # gone if the page reloads

    await page.fill("#say-text", "I need 3 <b>USB-C</b> cables. Best price?")
    await page.click("#send")
    mine = page.locator("#log li.mine")
    await expect(mine.first).to_contain_text("3 <b>USB-C</b> cables")  # as text
    await expect(page.locator("#log b")).to_have_count(0)  # never as HTML
    sellers = page.locator("#log li.seller")
    await expect(sellers).to_have_count(2)  # both replies, from the stream
    await expect(page.locator("#send")).to_be_enabled()  # round 2: the buyer's turn

    # Round 2: to one seller, with a counter.
    await page.check("#to input[value='all']")
    await page.uncheck("#to input[value='all']")
    await page.check("#to input[value='@QuickTech']")
    await page.fill("#say-text", "Can you do better?")
    await page.fill("#counter", "6.50")
    await page.click("#send")
    await expect(sellers).to_have_count(3)  # only @QuickTech was asked
    await expect(sellers.last).to_contain_text("@QuickTech")
    await expect(mine.last).to_contain_text("counter $6.50")
    await expect(page.locator("#send")).to_be_enabled()
    await expect(mine).to_have_count(2)  # each said once: the stream's copy is not repeated
    await screenshot(page, "play")

    # Before the end: no seller's floor or cost in the page or in anything it was sent.
    assert_nothing_hidden(await page.content(), "the page")
    for url, body in bodies:
        assert_nothing_hidden(body, url)
    assert any("/api/sessions/" in url for url, _ in bodies)

    label, price = await cheapest_accept(page)
    await page.get_by_role("button", name=label).click()
    await expect(page.locator("#outcome")).to_contain_text(f"at ${price} × 3")
    revealed = page.locator("#revealed")
    await expect(revealed).to_contain_text("$6.11")  # the floors, revealed now
    await expect(revealed).to_contain_text("$2.37")
    await expect(page.locator("#analysis")).to_contain_text("Within budget")
    await expect(page.locator("#end")).to_be_focused()
    await expect(page.locator("#send")).to_be_disabled()
    assert await page.evaluate("window.__same_page === true")  # never reloaded
    await screenshot(page, "play-debrief")


async def test_a_reloaded_play_page_shows_the_persons_own_words_from_the_stream(
    server: Server, page: Page
) -> None:
    sid = await server.session()
    buyer = await server.buyer_token(sid)
    await page.goto(f"{server.base}/play/{sid}#token={buyer}")
    await page.click("#start-form button[type=submit]")
    await expect(page.locator("#send")).to_be_enabled()
    await page.fill("#say-text", "Three cables, please: your best price?")
    await page.click("#send")
    await expect(page.locator("#log li.seller")).to_have_count(2)
    await expect(page.locator("#send")).to_be_enabled()
    await page.reload()  # the room goes on; the page reads it again from its stream
    mine = page.locator("#log li.mine")
    await expect(mine).to_have_count(1)
    await expect(mine.first).to_contain_text("Three cables, please: your best price?")
    await expect(page.locator("#log li.seller")).to_have_count(2)
    await expect(page.locator("#send")).to_be_enabled()


async def test_keyboard_only_play_from_an_operators_tab_which_plays_as_the_buyer(
    server: Server, page: Page
) -> None:
    sid = await server.session()
    bodies: list[tuple[str, str]] = []

    async def keep(response: Response) -> None:
        if "/events" not in response.url:
            bodies.append((response.url, await response.text()))

    page.on("response", keep)
    await page.goto(f"{server.base}/#token={server.token}")  # the operator's tab
    await expect(page.locator("#sessions tbody tr")).to_have_count(1)
    await tab_to(page, "#sessions a")
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"**/play/{sid}")
    await expect(page.locator("#item option")).to_have_count(1)
    await tab_to(page, "#start-form button")
    await page.keyboard.press("Enter")
    await expect(page.locator("#send")).to_be_enabled()
    await tab_to(page, "#say-text")
    await page.keyboard.type("Three cables, please. Your best price?")
    await tab_to(page, "#send")
    await page.keyboard.press("Enter")
    await expect(page.locator("#log li.seller")).to_have_count(2)
    # The page minted a buyer token and played with it: what it was sent after the
    # session list holds no seller's terms (the operator's own list holds none either).
    assert any("/tokens" in url for url, _ in bodies)
    for url, body in bodies:
        assert_nothing_hidden(body, url)
    label, price = await cheapest_accept(page)
    await tab_to(page, f'#offers button[aria-label="{label}"]')
    await page.keyboard.press("Enter")
    await expect(page.locator("#outcome")).to_contain_text(f"at ${price} × 3")
    await expect(page.locator("#revealed")).to_contain_text("$5.53")


async def test_a_live_room_fills_its_lanes_and_chart_as_the_room_commits(
    server: Server, page: Page
) -> None:
    sid = await server.session()
    started = await server.api.post(
        "/api/negotiations/start",
        json={"session_id": sid, "item_name": "USB-C cable", "buyer": "human", "seed": 1},
    )
    assert started.status_code == 201, started.text
    nid = started.json()["negotiation_id"]
    await page.goto(f"{server.base}/room/{nid}#token={server.token}")
    lanes = page.locator("#lanes .lane")
    await expect(lanes).to_have_count(3)  # the buyer and each seller
    await expect(page.locator("#lanes .round").first).to_contain_text("Round 1")
    await expect(page.locator("#chart")).to_contain_text("No offers yet")
    await page.evaluate("window.__same_page = true")

    # The operator plays the buyer over the API; the page sees each commit.
    said = await server.api.post(
        f"/api/negotiations/{nid}/message", json={"text": "Best price for 3?"}
    )
    assert said.status_code == 200, said.text
    offers = {r["handle"]: r["offer"]["unit_price"] for r in said.json()["seller_responses"]}
    for handle, price in offers.items():
        lane = lanes.filter(has=page.get_by_role("heading", name=handle))
        await expect(lane).to_contain_text(f"[offer ${Decimal(str(price)):.2f}]")
    await expect(page.locator("#chart circle")).to_have_count(2)
    await expect(page.locator("#lanes .round")).to_have_count(6)  # rounds 1 and 2, 3 lanes
    handle = min(offers, key=lambda h: offers[h])
    decided = await server.api.post(
        f"/api/negotiations/{nid}/decide",
        json={"decision": "accept", "seller_id": handle, "price": offers[handle], "quantity": 3},
    )
    assert decided.status_code == 200, decided.text
    await expect(page.locator("#outcome")).to_contain_text(f"Deal with {handle}")
    await expect(page.locator("#room-status")).to_contain_text("Ended")
    await expect(page.locator("#revealed")).to_be_visible()
    assert await page.evaluate("window.__same_page === true")
    await screenshot(page, "room")


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations of the page as it is."""
    await page.add_script_tag(path=str(AXE))
    found: list[dict[str, Any]] = await page.evaluate(
        """async () => {
            const r = await axe.run(document);
            return r.violations
              .filter((v) => v.impact === 'serious' || v.impact === 'critical')
              .map((v) => ({id: v.id, impact: v.impact, help: v.help,
                            nodes: v.nodes.map((n) => n.target.join(' '))}));
        }"""
    )
    return found


async def test_every_page_passes_axe_core(server: Server, browser: Browser) -> None:
    # axe is injected as a script the console's CSP would refuse: this one context lets it.
    context = await browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    try:
        sid = await server.session()
        await page.goto(f"{server.base}/#token={server.token}")
        await expect(page.locator("#sessions tbody tr")).to_have_count(1)
        await page.fill("#s0-least", "12.00")
        await page.click("#new-session button[type=submit]")
        await expect(page.locator("#err-s0-least")).to_be_visible()
        assert await axe_violations(page) == [], "sessions"

        buyer = await server.buyer_token(sid)
        await page.goto(f"{server.base}/play/{sid}#token={buyer}")
        await expect(page.locator("#item option")).to_have_count(1)
        assert await axe_violations(page) == [], "play: start"
        await page.click("#start-form button[type=submit]")
        await page.fill("#say-text", "Best price?")
        await page.click("#send")
        await expect(page.locator("#log li.seller")).to_have_count(2)
        await expect(page.locator("#send")).to_be_enabled()
        assert await axe_violations(page) == [], "play: a room"
        label, _ = await cheapest_accept(page)
        await page.get_by_role("button", name=label).click()
        await expect(page.locator("#revealed")).to_be_visible()
        assert await axe_violations(page) == [], "play: the debrief"

        nid = re.sub(r".*nid=", "", page.url)
        await page.goto(f"{server.base}/room/{nid}#token={server.token}")
        await expect(page.locator("#revealed")).to_be_visible()
        assert await axe_violations(page) == [], "room"
        await page.goto(f"{server.base}/replay/{nid}?at=3")
        await expect(page.locator("#position")).to_contain_text("Event 3 of")
        assert await axe_violations(page) == [], "replay"
        await page.goto(f"{server.base}/study/{sid}")
        await expect(page.locator("#styles-chart svg")).to_be_visible()
        assert await axe_violations(page) == [], "study"
    finally:
        await context.close()


async def test_walk_away_ends_the_room_without_a_deal_then_the_debrief(
    server: Server, page: Page
) -> None:
    sid = await server.session()
    await page.goto(f"{server.base}/play/{sid}#token={await server.buyer_token(sid)}")
    await page.click("#start-form button[type=submit]")
    await page.fill("#say-text", "Best price?")
    await page.click("#send")
    await expect(page.locator("#log li.seller")).to_have_count(2)
    await expect(page.locator("#walk")).to_be_enabled()
    await page.click("#walk")
    await expect(page.locator("#outcome")).to_contain_text("No deal")
    await expect(page.locator("#revealed")).to_contain_text("$5.53")
    await expect(page.locator("#analysis")).to_contain_text("no deal")


async def test_a_study_started_from_the_sessions_page(server: Server, page: Page) -> None:
    await server.session()
    await page.goto(f"{server.base}/#token={server.token}")
    await page.fill("#runs", "2")
    await page.get_by_role("button", name="Run agent rooms of console cables").click()
    await expect(page.locator("#started a").first).to_have_text("follow the study")
    rooms = page.locator("#started ul a")
    await expect(rooms).to_have_count(2)  # one room per run of the one item
    await rooms.first.click()
    await expect(page.locator("#room-status")).to_contain_text("Ended")
    await expect(page.locator("#revealed")).to_be_visible()


async def test_a_replay_scrubbed_to_an_event_shows_that_events_state(
    server: Server, page: Page, dsn: str
) -> None:
    sid = await server.session()
    started = await server.api.post(
        "/api/negotiations/start",
        json={"session_id": sid, "item_name": "USB-C cable", "buyer": "human", "seed": 2},
    )
    nid = started.json()["negotiation_id"]
    said = await server.api.post(f"/api/negotiations/{nid}/message", json={"text": "Price?"})
    assert said.status_code == 200, said.text
    said = await server.api.post(
        f"/api/negotiations/{nid}/message",
        json={"text": "Lower?", "recipients": ["@QuickTech"], "counter_price": 6.5},
    )
    offer = said.json()["seller_responses"][0]["offer"]["unit_price"]
    decided = await server.api.post(
        f"/api/negotiations/{nid}/decide",
        json={"decision": "accept", "seller_id": "@QuickTech", "price": offer, "quantity": 3},
    )
    assert decided.status_code == 200, decided.text
    events = (await server.api.get(f"/api/negotiations/{nid}/replay")).json()["events"]
    # The event: @QuickTech's reply in round 2 (n counts events from 1).
    n = next(
        i
        for i, e in enumerate(events, start=1)
        if e["type"] == "seller.replied" and e["round"] == 2
    )
    seq = events[n - 1]["seq"]

    await page.goto(f"{server.base}/replay/{nid}?at={n}#token={server.token}")
    position = page.locator("#position")
    await expect(position).to_contain_text(f"Event {n} of {len(events)}: seq {seq}")
    await expect(page.locator("#event")).to_contain_text('"type": "seller.replied"')
    quick = page.locator("#lanes .lane").filter(has=page.get_by_role("heading", name="@QuickTech"))
    tech = page.locator("#lanes .lane").filter(has=page.get_by_role("heading", name="@TechStore"))
    await expect(quick.locator("li.seller")).to_have_count(2)  # rounds 1 and 2
    await expect(tech.locator("li.seller")).to_have_count(1)  # round 1 only: not asked again
    await expect(quick.locator("li.seller").last).to_contain_text(f"[offer ${offer:.2f}]")
    await expect(page.locator("#lanes li.buyer")).to_have_count(2)  # no accept yet
    await expect(page.locator("#end")).to_be_hidden()
    assert (
        await page.locator("#lanes [data-seq]").evaluate_all(
            "(ns) => Math.max(...ns.map((n) => Number(n.dataset.seq)))"
        )
        == seq
    )
    # Beside it, as each agent was delivered it (a token minted for that view, revoked).
    await page.select_option("#as", label="@TechStore")
    await expect(page.locator("#view")).to_contain_text("delivered nothing of this event")
    await page.select_option("#as", label="@Buyer (the buyer)")
    await expect(page.locator("#view")).to_contain_text('"type": "seller.message"')
    await expect(page.locator("#view")).to_contain_text('"handle": "@QuickTech"')
    assert_nothing_hidden(await page.locator("#view").text_content() or "", "the buyer's view")
    conn = await asyncpg.connect(dsn)
    try:  # the two tokens minted to read those views, each revoked once read
        rows = await conn.fetch("SELECT role, revoked_at FROM api_tokens")
    finally:
        await conn.close()
    assert sorted(r["role"] for r in rows) == ["buyer", "seller"]
    assert all(r["revoked_at"] is not None for r in rows)
    await screenshot(page, "replay")

    # One step back, with the keyboard: the reply is gone.
    await page.focus("#prev")
    await page.keyboard.press("Enter")
    await expect(position).to_contain_text(f"Event {n - 1} of")
    await expect(quick.locator("li.seller")).to_have_count(1)
    # The first event, whole: an operator's view holds every party's terms.
    await page.focus("#scrub")
    await page.keyboard.press("Home")
    await expect(position).to_contain_text("Before the first event")
    await page.keyboard.press("ArrowRight")
    await expect(page.locator("#event")).to_contain_text('"least_price": 5.53')
    # To the end: the outcome.
    await page.keyboard.press("End")
    await expect(position).to_contain_text(f"Event {len(events)} of {len(events)}")
    await expect(page.locator("#outcome")).to_contain_text("Deal with @QuickTech")


async def test_a_study_page_follows_its_rooms_and_updates_as_each_ends(
    server: Server, page: Page
) -> None:
    sid = await server.session()
    nids = []
    for seed in (1, 2):
        started = await server.api.post(
            "/api/negotiations/start",
            json={"session_id": sid, "item_name": "USB-C cable", "buyer": "human", "seed": seed},
        )
        assert started.status_code == 201, started.text
        nids.append(started.json()["negotiation_id"])
    await page.goto(f"{server.base}/study/{sid}#token={server.token}")
    figures = page.locator("#figures")
    await expect(figures).to_contain_text("2 (0 ended, 2 running)")
    await expect(page.locator("#study-status")).to_contain_text("following 2 room(s) live")
    await expect(page.locator("#styles-chart")).to_contain_text("No ended room yet")
    await page.evaluate("window.__same_page = true")

    said = await server.api.post(f"/api/negotiations/{nids[0]}/message", json={"text": "Hi"})
    best = min(said.json()["seller_responses"], key=lambda r: r["offer"]["unit_price"])
    decided = await server.api.post(
        f"/api/negotiations/{nids[0]}/decide",
        json={
            "decision": "accept",
            "seller_id": best["handle"],
            "price": best["offer"]["unit_price"],
            "quantity": 3,
        },
    )
    assert decided.status_code == 200, decided.text
    await expect(figures).to_contain_text("2 (1 ended, 1 running)")
    await expect(figures).to_contain_text("1 of 1 ended")
    await expect(figures).to_contain_text("100%")
    await expect(page.locator("#styles-chart svg")).to_be_visible()

    walked = await server.api.post(
        f"/api/negotiations/{nids[1]}/decide", json={"decision": "walk_away"}
    )
    assert walked.status_code == 200, walked.text
    await expect(figures).to_contain_text("2 (2 ended, 0 running)")
    await expect(figures).to_contain_text("1 of 2 ended")
    await expect(figures).to_contain_text("50%")
    await expect(page.locator("#study-status")).to_have_text("No room is running.")
    # The report's plots, drawn by the server (mams report's PNGs) and shown decoded.
    trajectory = page.locator('#plots img[data-plot="trajectories.png"]')
    await expect(trajectory).to_be_visible()
    await expect(page.locator('#plots img[data-plot="by_style.png"]')).to_be_visible()
    width = await trajectory.evaluate("(img) => img.complete ? img.naturalWidth : 0")
    assert width > 100
    assert await page.evaluate("window.__same_page === true")  # never reloaded
    await screenshot(page, "study")


async def test_a_seller_tokens_room_page_shows_only_what_that_seller_was_delivered(
    server: Server, page: Page
) -> None:
    sid = await server.session()
    minted = await server.api.post(
        f"/api/sessions/{sid}/tokens", json={"role": "seller", "handle": "@TechStore"}
    )
    seller = minted.json()["token"]
    started = await server.api.post(
        "/api/negotiations/start",
        json={"session_id": sid, "item_name": "USB-C cable", "buyer": "human", "seed": 4},
    )
    nid = started.json()["negotiation_id"]
    await page.goto(f"{server.base}/room/{nid}#token={seller}")
    await expect(page.locator("#brief")).to_contain_text("as @TechStore sees it")
    first = await server.api.post(f"/api/negotiations/{nid}/message", json={"text": "To all?"})
    second = await server.api.post(
        f"/api/negotiations/{nid}/message",
        json={"text": "Only QuickTech", "recipients": ["@QuickTech"], "counter_price": 6.4},
    )
    buyer = page.locator("#lanes li.buyer")
    await expect(buyer).to_have_count(1)  # the message to all; not the one to @QuickTech
    await expect(buyer).to_contain_text("To all?")
    walked = await server.api.post(
        f"/api/negotiations/{nid}/decide", json={"decision": "walk_away"}
    )
    assert walked.status_code == 200, walked.text
    await expect(page.locator("#room-status")).to_contain_text("Ended")
    content = await page.content()
    replies = [r for a in (first, second) for r in a.json()["seller_responses"]]
    for reply in replies:
        if reply["handle"] == "@QuickTech":  # another seller's words never reach this page
            assert reply["response"] not in content
    assert "Only QuickTech" not in content
    for other in ("3.19", "6.11"):  # @QuickTech's cost and floor
        assert re.search(rf"(?<![\d.]){re.escape(other)}(?!\d)", content) is None
