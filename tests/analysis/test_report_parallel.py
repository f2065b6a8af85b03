"""`mams report`'s analyses over a log in worker processes: the same as in this one."""

from __future__ import annotations

import uuid

import pytest

from mams.domain.analysis import NegotiationAnalysis
from mams.storage.analyses import NotANegotiationError, analyses_of
from mams.storage.parallel import map_streams
from tests.analysis import logs
from tests.analysis.conftest import KnownLog
from tests.audit.conftest import UnreadableStore
from tests.e2e.test_cli import schema_dsn

pytestmark = pytest.mark.integration


async def in_workers(
    known_log: KnownLog, database_url: str, ids: list[uuid.UUID]
) -> list[NegotiationAnalysis]:
    out: list[NegotiationAnalysis] = []
    async for chunk in map_streams(
        analyses_of,
        UnreadableStore(known_log.pool),
        ids,
        NegotiationAnalysis,
        dsn=schema_dsn(database_url, known_log.schema),
        jobs=2,
        chunk=1,
        parallel_from=0,
    ):
        out += chunk
    return out


async def test_workers_analyse_exactly_as_this_process(
    known_log: KnownLog, database_url: str
) -> None:
    ids = list(logs.ROOMS)
    here = await analyses_of(known_log.store, ids)
    assert [a.negotiation_id for a in here] == ids
    # The recorded flags of the companion streams are in (merged with the checks' own).
    assert sum(len(a.flags) for a in here) >= sum(len(f) for f in logs.FLAGS.values())
    assert await in_workers(known_log, database_url, ids) == here


async def test_a_missing_negotiation_is_named_from_a_worker(
    known_log: KnownLog, database_url: str
) -> None:
    gone = uuid.uuid4()
    with pytest.raises(NotANegotiationError, match=f"no events for negotiation {gone}"):
        await in_workers(known_log, database_url, [*logs.ROOMS, gone])
