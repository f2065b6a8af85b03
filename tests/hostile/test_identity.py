"""Identity on the bus: a seller's credentials speak only as that seller and hear only its
own inbox. Publishing on another agent's outbox, subscribing to another's inbox, to the
observers' events or to every request/reply inbox (`_INBOX.>`) is refused by the server
(a permissions violation the attacker receives). A message id the seller reuses across two
rooms keeps both rooms' read-model rows: one room's line never erases another's."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import asyncpg
import pytest

from mams.bus.subjects import AgentId
from mams.storage.eventstore import PostgresEventStore
from tests.hostile.rig import WAIT, finished_attack, hostile_market

pytestmark = pytest.mark.integration

Db = tuple[asyncpg.Pool, PostgresEventStore]


async def test_a_reused_message_id_keeps_both_rooms_rows(tmp_path: Path, db: Db) -> None:
    reused = uuid.uuid4()
    turn = (
        '{"type": "seller.turn", "negotiation_id": "{{negotiation_id}}", "round": {{round}}, '
        f'"message_id": "{reused}", "text": "Nine fifty each.", '
        '"offer": {"unit_price": "9.50", "quantity": 4}}'
    )
    async with hostile_market(tmp_path, db) as rig:
        child, starts = await rig.attacker_in_rooms(
            [{"op": "answer", "data": turn, "count": 2, "once_per_room": True, "timeout": WAIT}],
            seeds=(21, 22),
        )
        await rig.run_honest()
        await rig.finish(starts)
        assert await child.wait(within=WAIT) == 0
        assert [s["sent"] for s in finished_attack(child).steps("answer")] == [2]
        rows = await rig.pool.fetch(
            "SELECT negotiation_id FROM messages WHERE message_id = $1", reused
        )
        assert sorted(r["negotiation_id"] for r in rows) == sorted(
            s.negotiation_id for s in starts
        ), "a room's line was lost to another room's with the same message id"
        await rig.check_survived()


async def test_a_seller_can_neither_speak_nor_listen_outside_its_permissions(
    tmp_path: Path, db: Db
) -> None:
    async with hostile_market(tmp_path, db) as rig:
        subjects = rig.subjects
        walk_away = json.dumps(
            {
                "type": "buyer.turn",
                "negotiation_id": str(uuid.uuid4()),
                "round": 1,
                "message_id": str(uuid.uuid4()),
                "action": {"type": "walk_away", "text": "forged"},
            }
        )
        forbidden_publish = [
            subjects.outbox(AgentId("techmart")),
            subjects.outbox(AgentId("buyer")),
        ]
        forbidden_subscribe = [
            "_INBOX.>",
            subjects.all_events(),
            subjects.inbox(AgentId("buyer")),
            subjects.inbox(AgentId("techmart")),
        ]
        attack = await rig.attack(
            [
                *({"op": "publish", "subject": s, "data": walk_away} for s in forbidden_publish),
                *({"op": "subscribe", "subject": s, "timeout": 5} for s in forbidden_subscribe),
            ]
        )
        errors = [e.lower() for e in attack.errors]
        for subject in forbidden_publish:
            wanted = f'permissions violation for publish to "{subject.lower()}"'
            assert any(wanted in e for e in errors), (subject, attack.errors)
        by_subject = {s["subject"]: s for s in attack.steps("subscribe")}
        for subject in forbidden_subscribe:
            step = by_subject[subject]
            assert step["violation"], f"the server let a seller subscribe to {subject}: {step}"
            assert step["delivered"] == 0, step
        await rig.run_honest()
        await rig.check_survived()
