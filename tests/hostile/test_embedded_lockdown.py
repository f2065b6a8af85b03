"""The servers `mams` starts for itself admit the run's own processes alone.

Embedded nats-server: no user, a wrong password or another run's credentials are refused;
a seller's credentials cannot read another agent's inbox nor the reply inboxes; its files
are private. `mams run --processes`: each child holds only its own credentials, in its
environment (never argv), and a broker child killed outright ends the run with the resume
command instead of a silent hang. Embedded PostgreSQL: see the second half.

Real nats-server, PostgreSQL and OS processes; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import asyncpg
import pytest

from mams.bus.embedded import EmbeddedNats
from mams.bus.subjects import AgentId, Subjects
from mams.storage.embedded import EmbeddedPostgres
from tests.auth.helpers import cannot_connect, next_message, probe
from tests.e2e.test_cli import Cli, cli, scenario_file
from tests.processes.helpers import mams_command, process_running
from tests.processes.pgdata import embedded_data_dir

__all__ = ["cli", "scenario_file"]  # fixtures, used by name

pytestmark = pytest.mark.integration

WAIT = 60.0


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_embedded_nats_admits_only_the_runs_users_and_keeps_its_files_private(
    subject_prefix: str,
) -> None:
    subjects = Subjects(subject_prefix)
    with anyio.fail_after(WAIT):
        async with EmbeddedNats() as server, EmbeddedNats() as other_run:
            assert await cannot_connect(server.address)  # no user at all
            owner = urlsplit(server.url)
            assert await cannot_connect(f"nats://owner:wrong-password@127.0.0.1:{owner.port}")
            # Another run's owner is nobody here.
            foreign = urlsplit(other_run.url)
            assert await cannot_connect(
                f"nats://{foreign.username}:{foreign.password}@127.0.0.1:{owner.port}"
            )
            (seller,) = await server.issue(subjects, [("seller", "techmart")])
            assert not await cannot_connect(seller.url(server.address))
            assert not await cannot_connect(server.url)
            assert server.log_path is not None
            private = server.log_path.parent
            assert _mode(private) == 0o700
            for name in ("nats.conf", "users.conf", "nats-server.log"):
                assert _mode(private / name) == 0o600, name


async def test_a_sellers_credentials_on_the_embedded_nats_read_its_own_inbox_only(
    subject_prefix: str,
) -> None:
    subjects = Subjects(subject_prefix)
    with anyio.fail_after(WAIT):
        async with EmbeddedNats() as server:
            techmart, gadgethub, broker = await server.issue(
                subjects, [("seller", "techmart"), ("seller", "gadgethub"), ("broker", None)]
            )
            own_inbox = subjects.inbox(AgentId("techmart"))
            other_inbox = subjects.inbox(AgentId("gadgethub"))
            async with (
                probe(techmart.url(server.address), "techmart") as seller,
                probe(broker.url(server.address), "broker") as brk,
            ):
                own = await seller.subscribe(own_inbox)
                stolen = [await seller.subscribe(s) for s in (other_inbox, "_INBOX.>", ">")]
                for subject in (other_inbox, "_INBOX.>", ">"):
                    await seller.violation("subscription", subject)
                await brk.publish(other_inbox, b"private price")
                await brk.publish(own_inbox, b"sentinel")
                assert await next_message(own) == b"sentinel"
                assert all(s.pending_msgs == 0 and s.delivered == 0 for s in stolen)
            assert gadgethub.user != techmart.user


# -- mams run --processes --------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except FileNotFoundError:  # gone meanwhile
        return []


def _environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(p.split("=", 1) for p in pairs if "=" in p)


def _role(argv: list[str]) -> str:
    """broker, seller or buyer for a `mams` child ("" for the embedded nats-server)."""
    return next((a for a in argv if a in ("broker", "seller", "buyer")), "")


async def test_run_processes_children_hold_only_their_own_credentials_and_a_dead_broker_ends_it(
    cli: Cli, scenario_file: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in cli.env.items() if k != "NATS_URL"}  # its embedded nats-server
    args = ["run", str(scenario_file), "--processes", "--runs", "20", "--seed", "3"]
    err = tmp_path / "run.err"
    with err.open("wb") as stderr:
        run = await anyio.open_process(
            [*mams_command(), *args],
            env=env,
            cwd=cli.cwd,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    stopped: int | None = None
    try:
        with anyio.fail_after(WAIT):  # until the buyer, spawned last, is there
            while not any(_role(_argv(c)) == "buyer" for c in _children(run.pid)):
                assert run.returncode is None, err.read_text()
                await anyio.sleep(0.02)
        children = {c: _argv(c) for c in _children(run.pid) if _role(_argv(c))}
        buyer = next(c for c, argv in children.items() if _role(argv) == "buyer")
        os.kill(buyer, signal.SIGSTOP)  # keeps its rooms open while we look
        stopped = buyer
        users = {}
        for pid, argv in children.items():
            environ = _environ(pid)
            url = urlsplit(environ["NATS_URL"])
            assert url.username, argv
            assert url.password, argv
            assert not any(url.password in a for a in argv)  # never in world-readable argv
            users[pid] = url.username
            assert ("DATABASE_URL" in environ) == (_role(argv) == "broker"), argv
        assert len(set(users.values())) == len(children) >= 3  # one user each
        # Nobody without those credentials gets in.
        assert await cannot_connect(f"nats://127.0.0.1:{url.port}")
        broker = next(c for c, argv in children.items() if _role(argv) == "broker")
        os.kill(broker, signal.SIGKILL)
        os.kill(buyer, signal.SIGCONT)
        stopped = None
        with anyio.fail_after(WAIT):
            code = await run.wait()
        said = " ".join(err.read_text().split())
        assert code != 0, said
        assert "the broker process" in said
        assert "killed by signal 9" in said
        assert "--resume" in said
        with anyio.fail_after(WAIT):
            while any(process_running(c) for c in children):  # noqa: ASYNC110 (polling /proc)
                await anyio.sleep(0.05)
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        if run.returncode is None:
            run.kill()
            await run.wait()


# -- embedded PostgreSQL ---------------------------------------------------------------------
@pytest.fixture
def pg_root() -> Iterator[Path]:
    with embedded_data_dir() as path:
        yield path


async def test_the_embedded_postgres_wants_its_password_and_keeps_it_private(
    pg_root: Path,
) -> None:
    with anyio.fail_after(WAIT):
        async with EmbeddedPostgres(pg_root / "postgres") as pg:
            dsn = urlsplit(pg.dsn)
            for netloc in ("postgres@", "postgres:wrong-password@"):
                with pytest.raises(asyncpg.InvalidPasswordError):
                    await asyncpg.connect(dsn._replace(netloc=netloc).geturl())
            socket_dir = Path(parse_qs(dsn.query)["host"][0])
            assert _mode(socket_dir) == 0o700
            assert _mode(pg.password_file) == 0o600
            assert pg.password_file.read_text().strip() == dsn.password
            conn = await asyncpg.connect(pg.dsn)
            try:
                # No TCP listener at all, and every rule (socket and TCP) wants the password.
                assert await conn.fetchval("SHOW listen_addresses") == ""
                rules = await conn.fetch("SELECT type, auth_method FROM pg_hba_file_rules")
                assert {r["type"] for r in rules} >= {"local", "host"}
                assert {r["auth_method"] for r in rules} == {"scram-sha-256"}
            finally:
                await conn.close()


_HOLDS = """
import sys, anyio
from mams.storage.embedded import EmbeddedPostgres
async def main():
    async with EmbeddedPostgres(sys.argv[1]):
        print("HOLDING", flush=True)
        await anyio.sleep_forever()
anyio.run(main)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
async def test_the_embedded_postgres_stops_when_the_process_that_held_it_is_killed(
    pg_root: Path, sig: signal.Signals
) -> None:
    # SIGTERM with Python's default handling ends a process as abruptly as SIGKILL: no
    # `finally`, no atexit. Either way the server must not be left running for good.
    data = pg_root / "postgres"
    holder = await anyio.open_process(
        [sys.executable, "-c", _HOLDS, str(data)], stderr=subprocess.DEVNULL
    )
    try:
        assert holder.stdout is not None
        text = ""
        with anyio.fail_after(WAIT):
            while "HOLDING" not in text:
                text += (await holder.stdout.receive()).decode()
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
        assert process_running(postmaster)
        holder.send_signal(sig)
        await holder.wait()
        with anyio.fail_after(WAIT):
            while process_running(postmaster):  # noqa: ASYNC110 (polling /proc)
                await anyio.sleep(0.05)
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
