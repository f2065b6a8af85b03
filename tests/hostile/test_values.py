"""Values no market can hold, offered by a seller in its own room: a price past
numeric(12,2) (9999999999.999), a 16,000-digit number, NaN and infinity, a body nested 1,000
deep. The broker keeps serving (refusing or overriding the value with a logged reason), also
when the attacker sends the same answer again to a broker restarted on the same log (no crash
loop), and the honest rooms end as they do without the attacker."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from mams.domain.events import GuardrailTripped, decode_event
from mams.storage.eventstore import PostgresEventStore
from tests.hostile.rig import ATTACKER, WAIT, finished_attack, hostile_market

pytestmark = pytest.mark.integration

Db = tuple[asyncpg.Pool, PostgresEventStore]


def seller_turn(offer: str, extra: str = "") -> str:
    """A seller.turn template (see attacker.py) with `offer` as raw JSON."""
    return (
        '{"type": "seller.turn", "negotiation_id": "{{negotiation_id}}", "round": {{round}}, '
        '"message_id": "{{answer_id}}", "text": "Take it.", '
        f'"offer": {offer}{extra}}}'
    )


NESTED = "[" * 1000 + "]" * 1000  # 2 KB, 1,000 deep

PAYLOADS = {
    "price-past-numeric-12-2": seller_turn('{"unit_price": 9999999999.999, "quantity": 4}'),
    "16k-digit-number": seller_turn('{"unit_price": ' + "9" * 16_000 + ', "quantity": 4}'),
    "16k-digit-quantity": seller_turn('{"unit_price": "9.00", "quantity": ' + "9" * 16_000 + "}"),
    "nan": seller_turn('{"unit_price": "NaN", "quantity": 4}'),
    "infinity": seller_turn('{"unit_price": "Infinity", "quantity": 4}'),
    "nested-1000-deep": seller_turn('{"unit_price": "9.00", "quantity": 4}', ', "x": ' + NESTED),
}


@pytest.mark.parametrize("payload", list(PAYLOADS.values()), ids=list(PAYLOADS))
async def test_a_value_no_market_can_hold_never_stops_it(
    tmp_path: Path, db: Db, payload: str
) -> None:
    async with hostile_market(tmp_path, db) as rig:
        go = tmp_path / "restarted"
        child, starts = await rig.attacker_in_rooms(
            [
                {"op": "answer", "data": payload, "count": 1, "timeout": WAIT},
                {"op": "wait_file", "path": str(go), "timeout": WAIT},
                {"op": "resend"},
            ]
        )
        await child.wait_for('"step": "answer", "sent": 1', within=WAIT)
        # The same answer again, to a broker restarted on the same log: a value that took
        # the first broker down must not take down the next one either (no crash loop).
        await rig.restart_broker()
        go.touch()
        await child.wait_for('"step": "resend", "count": 1', within=WAIT)
        await rig.run_honest()
        await rig.finish(starts)
        assert await child.wait(within=WAIT) == 0
        finished_attack(child)
        # Dropped with a logged reason, or taken and overridden by the guardrails (a
        # guardrail.tripped event in the log says so).
        stored = await rig.store.read_streams([s.negotiation_id for s in starts])
        tripped = [
            e
            for es in stored.values()
            for e in map(lambda x: decode_event(x.data), es)
            if isinstance(e, GuardrailTripped) and e.agent == ATTACKER
        ]
        assert rig.dropped() or tripped, "the attacker's value was neither refused nor overridden"
        await rig.check_survived()
