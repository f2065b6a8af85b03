"""NatsBus specifics: connection errors name the URL and the fix."""

from __future__ import annotations

import socket

import anyio
import pytest

from mams.bus.base import BusConnectError, BusError, BusSubjectError
from mams.bus.nats import NatsBus


def _unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_dead_url_gives_bus_error_naming_the_url() -> None:
    url = f"nats://127.0.0.1:{_unused_port()}"
    with anyio.fail_after(10), pytest.raises(BusConnectError) as info:
        await NatsBus.connect(url, name="test-dead", connect_timeout=0.5)
    message = str(info.value)
    assert isinstance(info.value, BusError)
    assert info.value.url == url
    assert url in message
    assert "connection refused" in message
    assert "start a nats-server" in message
    assert "unset NATS_URL" in message


async def test_bad_subjects_are_bus_subject_errors(nats_url: str) -> None:
    bus = await NatsBus.connect(nats_url, name="test-bad-subject")
    try:
        with pytest.raises(BusSubjectError) as info:
            await bus.publish("a b", b"")
        assert info.value.subject == "a b"
        with pytest.raises(BusSubjectError):
            await bus.subscribe("")
    finally:
        await bus.close()
