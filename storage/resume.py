"""The streams a broker resumes, found in PostgreSQL without reading every ended stream."""

from __future__ import annotations

from typing import Any
from uuid import UUID

# The streams `resume` needs, in one query: negotiations (a negotiation.started; not the
# observers' companion streams, such as quality flags) with no negotiation.ended event.
_OPEN_STREAMS = """
SELECT stream_id FROM events GROUP BY stream_id
HAVING bool_or(type = 'negotiation.started') AND NOT bool_or(type = 'negotiation.ended')
ORDER BY min(global_pos)
"""


_OPEN_OF_SESSION = """
SELECT negotiation_id AS stream_id FROM negotiation_runs
WHERE session_id = $1 AND status = 'running' ORDER BY started_at, negotiation_id
"""


async def open_stream_ids(pool: Any, session_id: UUID | None = None) -> list[UUID]:
    """Streams of the PostgreSQL event store (on `pool`) holding no negotiation.ended
    (only those of session `session_id` if given, from its read model, written in the
    events' own statement): the candidates for `Broker.resume`, without reading every
    ended stream."""
    if session_id is None:
        rows = await pool.fetch(_OPEN_STREAMS)
    else:
        rows = await pool.fetch(_OPEN_OF_SESSION, session_id)
    return [r["stream_id"] for r in rows]
