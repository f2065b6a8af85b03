"""The broker's hello gate: what one agent's hellos may cost the market.

Hellos are cheap to send and dear to answer (a welcome and a catch-up per open room, and a
barrier every commit lane must reach), so each agent's are rate-limited: a burst of
`HELLO_BURST`, then one per `HELLO_EVERY` seconds. While one of an agent's hellos waits to
be answered, the next ones are merged into it (the strongest flags win); past the rate
they are dropped, and the agent is muted until its next token: `admit` then drops its
hellos before they are even decoded, which is what keeps a flood of 100,000 from costing
the broker a decode each. An honest agent says one hello when it starts and a keepalive
every 5 s, far below the rate; its turns are never muted.

Pure bookkeeping: the clock is passed in, nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import structlog

from mams.domain.messages import Hello

log = structlog.get_logger("mams.broker")

HELLO_BURST = 5
HELLO_EVERY = 1.0
MAX_AGENTS = 100_000  # agents remembered; past it the table starts afresh (honest: far fewer)


@dataclass(slots=True)
class _Gate:
    """One agent's token bucket and its hello waiting to be answered."""

    tokens: float
    at: float  # when tokens was last refilled
    pending: Hello | None = None
    dropped: int = 0


class HelloGates:
    """Every agent's hello rate limit. See the module docstring."""

    def __init__(self, *, burst: int = HELLO_BURST, every: float = HELLO_EVERY) -> None:
        self.burst = burst
        self.every = every
        self.dropped = 0  # hellos dropped in all, by `offer` or `admit`
        self._gates: dict[str, _Gate] = {}  # agent id -> its gate
        self._muted: dict[str, float] = {}  # outbox subject -> muted until (clock)

    def offer(self, agent: str, hello: Hello, subject: str, now: float) -> bool:
        """A hello from `agent` (on outbox `subject`) arrived at `now`. True if it is to be
        queued for an answer (`take` gives it back then); False if it was merged into the
        agent's hello already waiting, or dropped for the rate (the agent is then muted:
        see `admit`)."""
        gate = self._gates.get(agent)
        if gate is None:
            if len(self._gates) >= MAX_AGENTS:
                self._gates.clear()
            gate = self._gates[agent] = _Gate(tokens=self.burst, at=now)
        if gate.pending is not None:  # answered once, with the strongest of the flags
            gate.pending = msgspec.structs.replace(
                hello,
                catch_up=gate.pending.catch_up or hello.catch_up,
                recap=gate.pending.recap or hello.recap,
            )
            return False
        gate.tokens = min(self.burst, gate.tokens + (now - gate.at) / self.every)
        gate.at = now
        if gate.tokens < 1:
            gate.dropped += 1
            self.dropped += 1
            if len(self._muted) >= MAX_AGENTS:
                self._muted.clear()
            self._muted[subject] = now + (1 - gate.tokens) * self.every
            if gate.dropped & (gate.dropped - 1) == 0:  # 1st, 2nd, 4th, 8th...: no log flood
                log.warning(
                    "broker.message_dropped",
                    agent=agent,
                    reason=f"hello rate over {self.burst} at once, then 1 per {self.every:g} s",
                    dropped_so_far=gate.dropped,
                )
            return False
        gate.tokens -= 1
        gate.pending = hello
        return True

    def take(self, agent: str) -> Hello | None:
        """The agent's queued hello (its flags merged with any that came since), now to be
        answered; None if there is none."""
        gate = self._gates.get(agent)
        if gate is None:
            return None
        hello, gate.pending = gate.pending, None
        return hello

    def admit(self, subject: str, data: bytes, now: float) -> bool:
        """The bus's first look at a message on outbox `subject`: False for a hello from a
        muted agent (dropped unread). Anything that merely looks like a hello is left to
        the full decode: a turn (it names its negotiation) always passes."""
        until = self._muted.get(subject)
        if until is None:
            return True
        if now >= until:
            del self._muted[subject]
            return True
        if b'"hello"' in data and b'"negotiation_id"' not in data:
            self.dropped += 1
            return False
        return True
