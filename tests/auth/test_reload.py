"""Agents joining later: credentials issued into the users file of a running server, then a
reload signal; no restart, nobody already connected is dropped."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from mams.bus.auth import UsersFile, reload
from mams.bus.subjects import AgentId, Subjects
from mams.creds import add_creds_parser, cmd_creds
from tests.auth.helpers import WAIT, cannot_connect, next_message, permissioned_market, probe
from tests.auth.nodes import eventually

pytestmark = pytest.mark.integration


async def connects_soon(url: str) -> None:
    """The server applies a reload asynchronously: retry the connection, bounded."""

    async def connects() -> bool:
        return not await cannot_connect(url)

    assert await eventually(connects, within=WAIT), f"still refused after {WAIT}s"


def creds_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mams")
    add_creds_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["creds", *argv])


async def test_a_seller_added_later_connects_after_a_reload(
    tmp_path: Path, subject_prefix: str
) -> None:
    subjects = Subjects(subject_prefix)
    async with permissioned_market(
        tmp_path, subjects, {"broker": "broker", "techmart": "seller"}
    ) as m:
        pid = m.server.pid
        async with (
            probe(m.url_for("broker"), "broker") as broker,
            probe(m.url_for("techmart"), "techmart") as early,
        ):
            early_inbox = await early.subscribe(subjects.inbox(AgentId("techmart")))
            with UsersFile.edit(m.users_path) as users:
                late = users.issue("seller", subjects, "latecomer")
            late_url = late.url(m.server.url)
            assert await cannot_connect(late_url)  # not before the reload
            reload(pid)
            await connects_soon(late_url)
            assert m.server.pid == pid  # the same server process, not a restart
            async with probe(late_url, "latecomer") as newcomer:
                own = await newcomer.subscribe(subjects.inbox(AgentId("latecomer")))
                await broker.publish(subjects.inbox(AgentId("latecomer")), b"welcome")
                assert await next_message(own) == b"welcome"
                # and it got an agent's permissions, not more
                other = subjects.inbox(AgentId("techmart"))
                await newcomer.subscribe(other)
                await newcomer.violation("subscription", other)
            # The seller connected before the reload is still on the same connection.
            await broker.publish(subjects.inbox(AgentId("techmart")), b"still here")
            assert await next_message(early_inbox) == b"still here"
            assert early.nc.stats["reconnects"] == 0


async def test_mams_creds_issues_reloads_and_the_agent_connects(
    tmp_path: Path, subject_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    subjects = Subjects(subject_prefix)
    async with permissioned_market(tmp_path, subjects, {"broker": "broker"}) as m:
        args = creds_args(
            "--conf",
            str(m.users_path),
            "--role",
            "seller",
            "--handle",
            "@QuickTech",
            "--market",
            subject_prefix,
            "--server",
            m.server.url,
            "--reload-pid",
            str(m.server.pid),
            "--json",
        )
        assert await cmd_creds(args, Console(file=io.StringIO())) == 0
        # structlog is not configured here (the CLI sends it to stderr): the JSON is last.
        doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert doc["user"] == "quicktech"
        assert doc["role"] == "seller"
        assert doc["agent_id"] == "quicktech"
        assert doc["permissions"] == {
            "publish": [subjects.outbox(AgentId("quicktech"))],
            "subscribe": [subjects.inbox(AgentId("quicktech"))],
        }
        assert doc["url"] == f"nats://quicktech:{doc['password']}@{m.server.url[7:]}"
        assert "mams seller" in doc["command"]
        assert "--handle @QuickTech" in doc["command"]
        await connects_soon(doc["url"])
        async with probe(doc["url"], "quicktech") as seller:
            await seller.subscribe(subjects.inbox(AgentId("techmart")))
            await seller.violation("subscription", subjects.inbox(AgentId("techmart")))


async def test_a_revoked_user_is_disconnected_at_the_reload(
    tmp_path: Path, subject_prefix: str
) -> None:
    subjects = Subjects(subject_prefix)
    async with (
        permissioned_market(tmp_path, subjects, {"broker": "broker", "techmart": "seller"}) as m,
        probe(m.url_for("techmart"), "techmart") as seller,
    ):
        with UsersFile.edit(m.users_path) as users:
            assert users.revoke("techmart")
        reload(m.server.pid)

        async def dropped() -> bool:
            return seller.nc.is_closed

        assert await eventually(dropped, within=WAIT)
        assert await cannot_connect(m.url_for("techmart"))
        assert not await cannot_connect(m.url_for("broker"))
