"""The message bus: subjects, the Bus protocol, and its in-memory and NATS implementations.

Import the NATS pieces from their modules (`mams.bus.nats`, `mams.bus.embedded`); only
those touch nats-py or start processes.
"""

from mams.bus.base import (
    Bus,
    BusClosedError,
    BusConnectError,
    BusError,
    BusSubjectError,
    Message,
    Subscription,
)
from mams.bus.memory import InMemoryBus, subject_matches
from mams.bus.subjects import AgentId, AgentIdError, SubjectError, Subjects

__all__ = [
    "AgentId",
    "AgentIdError",
    "Bus",
    "BusClosedError",
    "BusConnectError",
    "BusError",
    "BusSubjectError",
    "InMemoryBus",
    "Message",
    "SubjectError",
    "Subjects",
    "Subscription",
    "subject_matches",
]
