"""One runtime: the same study run in one process (`mams run`) and as processes (`mams run
--processes`: a `mams buyer` asking a `mams broker`) opens the same rooms, with the same
options, at most as many at once, and reaches the same outcomes and the same logs (ids
aside), because both plan with `domain.plan` and open rooms through the broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
import pytest

from mams.actors.rerun import compare
from mams.domain.config import scenario_to_raw
from tests.integration.scenarios import phone
from tests.processes.helpers import Cast, one_json_object
from tests.processes.test_processes import most_open_at_once, normalised, read_log

pytestmark = pytest.mark.e2e

STUDY = (
    "--seed", "3", "--runs", "3", "--rooms-at-once", "2", "--max-rounds", "5",
    "--round-timeout", "20", "--buyer-model", "baseline", "--seller-model", "baseline",
    "--json",
)  # fmt: skip


async def test_the_same_study_in_one_process_and_as_processes_gives_the_same_rooms(
    procs: Cast, tmp_path: Path, database_url: str, pg_schema: str
) -> None:
    scenario = tmp_path / "study.json"
    scenario.write_bytes(msgspec.json.encode(scenario_to_raw(phone())))
    items = [i.item_name for i in phone().buyer.items]
    docs: dict[str, dict[str, Any]] = {}
    for how, extra in (("in-process", ()), ("processes", ("--processes",))):
        run = procs.mams(how, "run", str(scenario), *STUDY, *extra)
        assert await run.wait() == 0, run.describe()
        docs[how] = one_json_object(run.out())

    def rooms(doc: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
        return {(n["item"], n["seed"]): n for n in doc["negotiations"]}

    one, many = rooms(docs["in-process"]), rooms(docs["processes"])
    # The same rooms: every item times seeds 3, 4, 5.
    expected = {(item, seed) for seed in (3, 4, 5) for item in items}
    assert one.keys() == many.keys() == expected
    assert len(docs["in-process"]["negotiations"]) == len(docs["processes"]["negotiations"])
    # At most two open at once, both ways.
    for doc in docs.values():
        assert await most_open_at_once(database_url, pg_schema, doc["session_id"]) == 2
    # The same outcomes, and the same logs (options in negotiation.started included).
    for key in sorted(expected):
        assert one[key]["status"] == many[key]["status"] == "completed"
        assert one[key]["outcome"] == many[key]["outcome"], key
        a = await read_log(database_url, pg_schema, UUID(one[key]["negotiation_id"]))
        b = await read_log(database_url, pg_schema, UUID(many[key]["negotiation_id"]))
        assert compare(normalised(a), normalised(b)) == [], key
        assert len(a) == len(b)
    outcomes = {n["outcome"]["type"] for n in docs["in-process"]["negotiations"]}
    assert "deal" in outcomes  # a study that negotiates, not one that only fails alike
