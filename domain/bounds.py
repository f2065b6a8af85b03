"""What one market accepts from the outside: the bounds every value entering through the
bus (or a file, or later an HTTP body) is checked against at the boundary.

They follow from two things: what the database can hold (money is numeric(12,2), rounds
and quantities are int4, seeds int8) and what one participant may cost a market (rounds,
deadlines, rooms per request). The broker, the CLI and the scenario parser all read them
from here, so one limit is stated once.
"""

from __future__ import annotations

from decimal import Decimal

# -- what the schema can hold ---------------------------------------------------------------
INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1
# numeric(12,2): ten digits before the point. A price must also leave room for a total
# (numeric(14,2)) of price x quantity, so quantities are bounded below too.
MAX_PRICE = Decimal("99999999.99")
MAX_QUANTITY = 1_000_000

# -- what one participant may cost a market -------------------------------------------------
MAX_ROUNDS_LIMIT = 100  # max_rounds of a room: from 2 to this
ROUND_TIMEOUT_MIN = 0.1  # seconds: a round's deadline is at least this ...
ROUND_TIMEOUT_MAX = 86_400.0  # ... and at most a day (a person may play the buyer)
MAX_ROOMS_PER_REQUEST = 10_000  # runs x items of one open_rooms
MAX_SEED = 2**62  # seed + run index must stay inside bigint
