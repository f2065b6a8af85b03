"""The one place NATS subjects are built and parsed.

Every subject MAMS uses comes from a `Subjects` instance, so the layout below is the whole
truth about who talks where:

- ``<prefix>.agent.<agent_id>.inbox``: only the broker publishes; only that agent subscribes.
- ``<prefix>.broker.<agent_id>.outbox``: only that agent publishes; only the broker subscribes.
- ``<prefix>.events.<negotiation_id hex>``: committed events, for permitted observers.

Only validated tokens (agent ids, the prefix, a UUID's hex) enter a subject. Item names
never do: real item names hold spaces, dots and slashes, which NATS reads as structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from mams.domain.errors import MamsError

# The agent id rule lives in the pure core (domain/ids.py); re-exported here so bus users
# keep importing it from the bus.
from mams.domain.ids import TOKEN_RULE, AgentId, AgentIdError, check_token

__all__ = ["TOKEN_RULE", "AgentId", "AgentIdError", "SubjectError", "Subjects"]


class SubjectError(MamsError, ValueError):
    """A subject is not of the shape expected here.

    Carries the ``subject`` and the ``reason`` it was rejected.
    """

    def __init__(self, subject: str, reason: str) -> None:
        self.subject = subject
        self.reason = reason
        super().__init__(f"bad subject {subject!r}: {reason}")


@dataclass(frozen=True, slots=True)
class Subjects:
    """Builds and parses every subject under one ``prefix`` (itself a token).

    Tests use a unique prefix each, so many tests can share one server.
    """

    prefix: str = "mams"

    def __post_init__(self) -> None:
        check_token(self.prefix, what="subject prefix")

    def inbox(self, agent: AgentId) -> str:
        """The subject an agent receives on: ``<prefix>.agent.<id>.inbox``."""
        return f"{self.prefix}.agent.{agent.value}.inbox"

    def outbox(self, agent: AgentId) -> str:
        """The subject an agent sends on: ``<prefix>.broker.<id>.outbox``."""
        return f"{self.prefix}.broker.{agent.value}.outbox"

    def all_outboxes(self) -> str:
        """The broker's subscription to every agent's outbox: ``<prefix>.broker.*.outbox``."""
        return f"{self.prefix}.broker.*.outbox"

    def events(self, negotiation_id: UUID) -> str:
        """The subject a negotiation's committed events go to: ``<prefix>.events.<hex>``."""
        return f"{self.prefix}.events.{negotiation_id.hex}"

    def all_events(self) -> str:
        """An observer's subscription to every negotiation's events: ``<prefix>.events.>``."""
        return f"{self.prefix}.events.>"

    def agent_of_outbox(self, subject: str) -> AgentId:
        """The agent that sent on ``subject``, which must be exactly one of our outboxes.

        Identity comes from the subject (NATS permissions bind it to a user), never from
        a payload. Raises `SubjectError` naming the subject and the reason otherwise.
        """
        tokens = subject.split(".")
        if len(tokens) != 4:
            raise SubjectError(
                subject,
                f"an outbox subject has 4 tokens '{self.prefix}.broker.<agent_id>.outbox', "
                f"this has {len(tokens)}",
            )
        prefix, kind, agent, tail = tokens
        if prefix != self.prefix:
            raise SubjectError(subject, f"prefix is {prefix!r}, expected {self.prefix!r}")
        if kind != "broker" or tail != "outbox":
            raise SubjectError(
                subject, f"not an outbox subject '{self.prefix}.broker.<agent_id>.outbox'"
            )
        try:
            return AgentId(agent)
        except AgentIdError as e:
            raise SubjectError(subject, f"agent id token {agent!r}: {e.rule}") from e
