"""Subjects: the one place subjects are built; every validation rule with its message."""

from __future__ import annotations

import uuid

import pytest

from mams.bus.subjects import AgentId, AgentIdError, SubjectError, Subjects
from mams.domain.errors import MamsError


def test_from_handle_strips_at_and_lowercases() -> None:
    assert AgentId.from_handle("@TechMart") == AgentId("techmart")
    assert str(AgentId.from_handle("@TechMart")) == "techmart"
    assert AgentId.from_handle("shop_2-b").value == "shop_2-b"


@pytest.mark.parametrize(
    ("handle", "bad"),
    [
        ("@Tech Mart", "' '"),
        ("@tech.mart", "'.'"),
        ("@tech>", "'>'"),
        ("@tech*", "'*'"),
        ("@@tech", "'@'"),
        ("@café", "'é'"),
    ],
)
def test_from_handle_rejects_chars_outside_the_alphabet(handle: str, bad: str) -> None:
    with pytest.raises(AgentIdError) as info:
        AgentId.from_handle(handle)
    message = str(info.value)
    assert repr(handle) in message
    assert bad in message
    assert "[a-z0-9_-]" in message
    assert info.value.value == handle


@pytest.mark.parametrize("handle", ["@", "", "@_tech", "@-tech", "@" + "a" * 33])
def test_from_handle_rejects_bad_shape(handle: str) -> None:
    with pytest.raises(AgentIdError, match=r"1 to 32 characters") as info:
        AgentId.from_handle(handle)
    assert repr(handle) in str(info.value)


def test_agent_id_is_exact_and_round_trips() -> None:
    agent = AgentId.from_str("techmart")
    assert AgentId.from_str(str(agent)) == agent
    assert AgentId("a" * 32).value == "a" * 32
    with pytest.raises(AgentIdError, match=r"invalid agent id 'TechMart'"):
        AgentId("TechMart")  # the constructor validates, it does not normalize
    with pytest.raises(AgentIdError, match="1 to 32"):
        AgentId("a" * 33)
    with pytest.raises(AgentIdError):
        AgentId("")


def test_agent_id_is_frozen_and_an_error_is_a_mams_error() -> None:
    agent = AgentId("techmart")
    with pytest.raises(AttributeError):
        agent.value = "other"  # type: ignore[misc]
    assert issubclass(AgentIdError, MamsError)
    assert issubclass(SubjectError, MamsError)


def test_subjects_layout() -> None:
    s = Subjects()
    techmart = AgentId("techmart")
    nid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert s.prefix == "mams"
    assert s.inbox(techmart) == "mams.agent.techmart.inbox"
    assert s.outbox(techmart) == "mams.broker.techmart.outbox"
    assert s.all_outboxes() == "mams.broker.*.outbox"
    assert s.events(nid) == "mams.events.12345678123456781234567812345678"
    assert s.all_events() == "mams.events.>"
    assert Subjects("t1").inbox(techmart) == "t1.agent.techmart.inbox"


@pytest.mark.parametrize("prefix", ["", "Mams", "ma.ms", "ma ms", "*", ">", "-x"])
def test_prefix_is_a_validated_token(prefix: str) -> None:
    with pytest.raises(AgentIdError, match=r"invalid subject prefix"):
        Subjects(prefix)


def test_agent_of_outbox_round_trips() -> None:
    s = Subjects("t1")
    agent = AgentId("techmart")
    assert s.agent_of_outbox(s.outbox(agent)) == agent


@pytest.mark.parametrize(
    ("subject", "reason"),
    [
        ("t1.agent.techmart.inbox", "not an outbox subject"),
        ("t2.broker.techmart.outbox", "prefix is 't2'"),
        ("t1.broker.techmart", "4 tokens"),
        ("t1.broker.tech.mart.outbox", "this has 5"),
        ("t1.broker.*.outbox", "agent id token '*'"),
        ("t1.broker.TechMart.outbox", "agent id token 'TechMart'"),
        ("t1.broker..outbox", "agent id token ''"),
        ("", "4 tokens"),
    ],
)
def test_agent_of_outbox_rejects_anything_else(subject: str, reason: str) -> None:
    with pytest.raises(SubjectError) as info:
        Subjects("t1").agent_of_outbox(subject)
    assert info.value.subject == subject
    assert reason in str(info.value)
    assert repr(subject) in str(info.value)
