"""A whole negotiation through a permissioned nats-server: broker, observer, buyer and two
sellers, each on its own connection with its own credentials, and not one permissions
violation on the way (the roles' permissions are exactly enough)."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog.testing

from mams.actors.brains.base import BuyerBrain, SellerBrain
from mams.actors.brains.baseline import BaselineBuyer, BaselineSeller
from mams.actors.market import RunOptions, run_rooms
from mams.bus.auth import Role
from mams.bus.base import Bus
from mams.bus.nats import NatsBus
from mams.bus.subjects import Subjects
from mams.domain.events import NegotiationEnded, decode_event
from mams.storage.eventstore import InMemoryEventStore
from tests.auth.helpers import permissioned_market
from tests.integration.helpers import started_for
from tests.integration.scenarios import phone

pytestmark = pytest.mark.integration

ITEM = "USB-C cable"  # stocked by @TechMart and @QuickTech: a buyer and two sellers


def cast_of(sellers: list[str]) -> dict[str, Role]:
    cast: dict[str, Role] = {"broker": "broker", "observer": "observer", "buyer": "buyer"}
    cast.update({s: "seller" for s in sellers})
    return cast


async def test_a_negotiation_completes_with_every_actor_on_its_own_credentials(
    tmp_path: Path, subject_prefix: str
) -> None:
    scenario = phone()
    subjects = Subjects(subject_prefix)
    started = started_for(scenario, ITEM, RunOptions(max_rounds=6, seed=11, round_timeout=10))
    sellers = [s.agent_id for s in started.sellers]
    assert sorted(sellers) == ["quicktech", "techmart"]
    brains: dict[str, BuyerBrain | SellerBrain] = {"buyer": BaselineBuyer()}
    brains.update({s: BaselineSeller() for s in sellers})
    store = InMemoryEventStore()
    async with permissioned_market(tmp_path, subjects, cast_of(sellers)) as m:
        connected: list[str] = []

        async def connect(name: str) -> Bus:
            connected.append(name)
            # The password rides in the URL, as `mams creds` prints it for NATS_URL.
            return await NatsBus.connect(m.url_for(name), name=name)

        with structlog.testing.capture_logs() as logs:
            rooms = await run_rooms(
                [started], brains, connect=connect, store=store, subjects=subjects
            )
    assert sorted(connected) == sorted(["observer", "broker", "buyer", *sellers])
    (room,) = rooms
    assert room.state.phase == "ended"
    assert room.state.outcome is not None
    assert room.state.outcome.type in ("deal", "no_deal", "max_rounds")
    events = [decode_event(e.data) for e in await store.read(room.negotiation_id)]
    assert isinstance(events[-1], NegotiationEnded)
    violations = [
        entry for entry in logs if "permissions violation" in str(entry.get("error", "")).lower()
    ]
    assert violations == []


async def test_no_password_reaches_the_logs(tmp_path: Path, subject_prefix: str) -> None:
    subjects = Subjects(subject_prefix)
    async with permissioned_market(tmp_path, subjects, {"techmart": "seller"}) as m:
        password = m.creds["techmart"].password
        with structlog.testing.capture_logs() as logs:
            bus = await NatsBus.connect(m.url_for("techmart"), name="techmart")
            await bus.close()
    assert logs  # connect and close are logged
    assert not [entry for entry in logs if password in repr(entry)]
