"""Helpers for the permission tests: a real nats-server with a generated users file, and a
raw nats-py probe that reports the server's permission errors.

The probe uses nats-py directly (not `NatsBus`): a test of the server's refusals needs the
asynchronous ``-ERR`` the server sends, which nats-py hands to its error callback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from mams.bus.auth import Credentials, Role, UsersFile
from mams.bus.subjects import Subjects
from tests.auth.nodes import NatsNode, nats_nodes

WAIT = 15.0  # bound on every wait for the server (shared CI machines are slow); not a pause


def write_users(path: Path, subjects: Subjects, cast: Mapping[str, Role]) -> dict[str, Credentials]:
    """Issue one user per name in ``cast`` ("broker", "observer" or an agent id), save."""
    users = UsersFile.load(path)
    creds: dict[str, Credentials] = {}
    for name, role in cast.items():
        agent = name if role in ("buyer", "seller") else None
        creds[name] = users.issue(role, subjects, agent)
    users.save()
    return creds


def server_conf(name: str, ports: dict[str, int]) -> str:
    """A server config like nats.conf's auth part: listens on loopback, includes the
    ``users.conf`` beside it, serves monitoring (for readiness)."""
    return (
        f"server_name: {name}\n"
        f"listen: 127.0.0.1:{ports['client']}\n"
        f"http: 127.0.0.1:{ports['http']}\n"
        "max_payload: 1MB\n"
        'include "users.conf"\n'
    )


@dataclass
class Market:
    """A running permissioned nats-server and the credentials issued for it."""

    server: NatsNode
    subjects: Subjects
    creds: dict[str, Credentials]
    users_path: Path

    def url_for(self, name: str) -> str:
        """The server URL carrying ``name``'s credentials."""
        return self.creds[name].url(self.server.url)


@asynccontextmanager
async def permissioned_market(
    tmp_path: Path, subjects: Subjects, cast: Mapping[str, Role]
) -> AsyncIterator[Market]:
    """A nats-server on a free loopback port whose only users are ``cast``."""
    users_path = tmp_path / "users.conf"
    creds = write_users(users_path, subjects, cast)
    name = f"mams-auth-{subjects.prefix}"
    async with nats_nodes(
        tmp_path, [name], lambda ports: {name: server_conf(name, ports[name])}
    ) as (server,):
        yield Market(server, subjects, creds, users_path)


@dataclass
class Probe:
    """A raw nats-py connection whose async server errors are collected in order."""

    nc: Client
    errors: anyio.abc.ObjectReceiveStream[str]
    seen: list[str] = field(default_factory=list)

    async def violation(self, verb: str, subject: str) -> str:
        """Wait (bounded) for the server's "Permissions Violation for <verb> to <subject>"."""
        wanted = f'permissions violation for {verb.lower()} to "{subject.lower()}"'
        for text in self.seen:
            if wanted in text.lower():
                return text
        with anyio.fail_after(WAIT):
            async for text in self.errors:
                self.seen.append(text)
                if wanted in text.lower():
                    return text
        raise AssertionError(f"no violation for {verb} to {subject}; saw {self.seen}")

    async def subscribe(self, subject: str) -> Subscription:
        """Subscribe without a callback (messages queue on the subscription) and flush."""
        sub = await self.nc.subscribe(subject)
        await self.nc.flush()
        return sub

    async def publish(self, subject: str, data: bytes = b"x") -> None:
        """Publish and flush (the server has read it once this returns)."""
        await self.nc.publish(subject, data)
        await self.nc.flush()


@asynccontextmanager
async def probe(url: str, name: str) -> AsyncIterator[Probe]:
    """A raw connection to ``url`` (credentials in it) that records server errors."""
    send, receive = anyio.create_memory_object_stream[str](100)

    async def on_error(exc: Exception) -> None:
        with suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            send.send_nowait(str(exc))

    nc = await nats.connect(
        url, name=name, error_cb=on_error, allow_reconnect=False, connect_timeout=2
    )
    try:
        yield Probe(nc, receive)
    finally:
        with anyio.CancelScope(shield=True):
            await nc.close()
        send.close()
        receive.close()


async def next_message(sub: Subscription) -> bytes:
    """The next message on ``sub`` (bounded wait)."""
    msg = await sub.next_msg(timeout=WAIT)
    return msg.data


def nothing_delivered(sub: Subscription) -> bool:
    """Whether ``sub`` has never had a message (none queued, none handed out)."""
    return sub.pending_msgs == 0 and sub.delivered == 0


async def cannot_connect(url: str) -> bool:
    """Whether the server refuses these credentials (authorization violation)."""

    async def quiet(exc: Exception) -> None:
        pass  # the refusal is the expected answer

    nc = Client()
    try:
        await nc.connect(url, allow_reconnect=False, connect_timeout=2, error_cb=quiet)
    except (nats.errors.Error, OSError):
        return True
    finally:
        await nc.close()  # also after a refused connect: nats-py leaves the socket open
    return False
