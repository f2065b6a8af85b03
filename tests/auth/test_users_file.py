"""`mams.bus.auth`: role permissions, the users file's text round trip, issuing rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from mams.bus.auth import (
    Credentials,
    CredentialsError,
    UsersFile,
    agent_permissions,
    broker_permissions,
    check_config,
    nats_url_with,
    observer_permissions,
)
from mams.bus.subjects import AgentId, AgentIdError, Subjects
from tests.auth.helpers import cannot_connect, permissioned_market

S = Subjects("mkt")


def test_role_permissions() -> None:
    seller = agent_permissions(S, "techmart")
    assert seller.publish == ("mkt.broker.techmart.outbox",)
    assert seller.subscribe == ("mkt.agent.techmart.inbox",)  # no reply inboxes (_INBOX.>)
    broker = broker_permissions(S)
    assert broker.publish == ("mkt.agent.*.inbox", "mkt.events.>")
    assert broker.subscribe == ("mkt.broker.*.outbox",)
    observer = observer_permissions(S)
    assert observer.publish == ()
    assert observer.to_conf()["publish"] == {"deny": [">"]}  # empty allow would allow all
    assert observer.subscribe == ("mkt.events.>",)


def test_an_agent_id_is_validated() -> None:
    with pytest.raises(AgentIdError):
        agent_permissions(S, "tech.mart")
    with pytest.raises(AgentIdError):
        UsersFile(Path("u.conf")).issue("seller", S, "a>b")


def test_the_file_round_trips(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "users.conf")
    broker = users.issue("broker", S)
    seller = users.issue("seller", S, "techmart")
    users.save()
    assert (tmp_path / "users.conf").stat().st_mode & 0o777 == 0o600
    again = UsersFile.load(tmp_path / "users.conf")
    assert [(e.user, e.role, e.agent_id, e.prefix) for e in again.entries] == [
        ("broker", "broker", None, "mkt"),
        ("techmart", "seller", "techmart", "mkt"),
    ]
    entry = again.get("techmart")
    assert entry is not None
    assert entry.password == seller.password
    assert entry.permissions == seller.permissions
    assert again.get("broker") is not None
    assert broker.password != seller.password


def test_issue_is_idempotent_rotate_makes_a_new_password() -> None:
    users = UsersFile(Path("users.conf"))
    first = users.issue("seller", S, "techmart")
    assert users.issue("seller", S, "techmart") == first
    moved = users.issue("seller", Subjects("other"), "techmart")
    assert moved.password == first.password
    assert moved.permissions.publish == ("other.broker.techmart.outbox",)
    rotated = users.issue("seller", S, "techmart", rotate=True)
    assert rotated.password != first.password


def test_a_user_keeps_its_role() -> None:
    users = UsersFile(Path("users.conf"))
    users.issue("seller", S, "broker2")
    with pytest.raises(CredentialsError, match="already issued as a seller"):
        users.issue("broker", S, "broker2")
    with pytest.raises(CredentialsError, match="needs its handle"):
        users.issue("seller", S)


def test_revoke() -> None:
    users = UsersFile(Path("users.conf"))
    users.issue("seller", S, "techmart")
    assert users.revoke("techmart")
    assert not users.revoke("techmart")
    assert users.entries == []


def test_passwords_stay_out_of_repr() -> None:
    creds = UsersFile(Path("users.conf")).issue("seller", S, "techmart")
    assert creds.password not in repr(creds)
    assert isinstance(creds, Credentials)
    assert creds.url("nats://10.0.0.5:4222") == f"nats://techmart:{creds.password}@10.0.0.5:4222"


def test_nats_url_with() -> None:
    assert nats_url_with("nats://old:pw@h:1", "u", "p") == "nats://u:p@h:1"
    assert nats_url_with("h:1", "u", "p") == "nats://u:p@h:1"
    assert nats_url_with("tls://h:1", "u", "p") == "tls://u:p@h:1"


def test_a_file_not_ours_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "users.conf"
    path.write_text("authorization { users = [ {user: a, password: b} ] }\n")
    with pytest.raises(CredentialsError, match="not a users file written by `mams creds`"):
        UsersFile.load(path)


def test_the_written_file_passes_the_server_config_test(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "users.conf")
    users.issue("observer", S)
    users.issue("buyer", S, "buyer")
    users.save()
    check_config(tmp_path / "users.conf")  # an authorization block alone is a valid config
    (tmp_path / "bad.conf").write_text("authorization: {\n")
    with pytest.raises(CredentialsError, match="nats-server rejects"):
        check_config(tmp_path / "bad.conf")


@pytest.mark.integration
async def test_no_users_still_means_no_anonymous_access(tmp_path: Path) -> None:
    # nats-server turns authorization off for an empty users list; our file never has one.
    async with permissioned_market(tmp_path, S, {}) as m:
        assert UsersFile.load(m.users_path).entries == []
        assert await cannot_connect(m.server.url)
        assert await cannot_connect(nats_url_with(m.server.url, "broker", "guess"))


def test_agent_id_objects_are_accepted() -> None:
    creds = UsersFile(Path("users.conf")).issue("seller", S, AgentId("techmart"))
    assert creds.user == "techmart"
