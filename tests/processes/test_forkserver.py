"""`mams run --processes` forks its children from a warm fork server (`mams.forkserver`),
and they are still the supervisor's children, shown in /proc as `python -P -m mams <role>`
with their own credentials, and reported as before when they die; MAMS_FORK_SERVER=0
starts them afresh."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest

from mams.forkserver import FORK_SERVER_ENV, FORKED_ENV, fork_server, preload_for
from tests.e2e.test_cli import Cli, cli, scenario_file
from tests.processes.helpers import mams_command, process_running

__all__ = ["cli", "scenario_file"]  # fixtures, used by name

pytestmark = pytest.mark.e2e

WAIT = 60.0
ROLES = ("broker", "seller", "buyer")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _argv(pid: int) -> list[str]:
    try:
        return [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0") if a]
    except FileNotFoundError:  # gone meanwhile
        return []


def _environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(p.split("=", 1) for p in pairs if "=" in p)


def _role(argv: list[str]) -> str:
    return next((a for a in argv[:6] if a in ROLES), "")


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


@pytest.mark.parametrize("fork", ["1", "0"])
async def test_children_are_forked_warm_and_a_killed_child_is_reported_as_before(
    cli: Cli, scenario_file: Path, tmp_path: Path, fork: str
) -> None:
    env = {**cli.env, FORK_SERVER_ENV: fork}
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
        everyone = {c: _argv(c) for c in _children(run.pid)}
        children = {c: argv for c, argv in everyone.items() if _role(argv)}
        buyer = next(c for c, argv in children.items() if _role(argv) == "buyer")
        os.kill(buyer, signal.SIGSTOP)  # keeps its rooms open while we look
        stopped = buyer
        servers = [c for c, argv in everyone.items() if "mams.forkserver" in argv]
        assert len(servers) == (1 if fork == "1" else 0), everyone
        assert len(children) >= 3, everyone  # broker, sellers, buyer
        for pid, argv in children.items():
            # The supervisor's own children either way, shown as an exec'd child would be.
            assert _ppid(pid) == run.pid
            assert argv[1:4] == ["-P", "-m", "mams"], argv
            environ = _environ(pid)
            assert environ["MAMS_SUPERVISOR_PID"] == str(run.pid)
            assert ("DATABASE_URL" in environ) == (_role(argv) == "broker"), argv
            assert "NATS_URL" in environ, argv
            # Forked by the warm server (its marker names it), or started afresh.
            assert environ.get(FORKED_ENV) == (str(servers[0]) if servers else None), argv
        if servers:  # the server itself holds no credentials
            assert not {"NATS_URL", "DATABASE_URL"} & _environ(servers[0]).keys()
        broker = next(c for c, argv in children.items() if _role(argv) == "broker")
        os.kill(broker, signal.SIGKILL)
        os.kill(buyer, signal.SIGCONT)
        stopped = None
        with anyio.fail_after(WAIT):
            code = await run.wait()
        said = " ".join(err.read_text().split())
        assert code != 0, said
        assert f"the broker process (pid {broker}) died (killed by signal 9)" in said
        with anyio.fail_after(WAIT):
            while any(process_running(c) for c in everyone):  # noqa: ASYNC110 (polling /proc)
                await anyio.sleep(0.05)
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        if run.returncode is None:
            run.kill()
            await run.wait()


async def _all(stream: anyio.abc.ByteReceiveStream | None) -> bytes:
    assert stream is not None
    return b"".join([chunk async for chunk in stream])


async def test_a_forked_child_prints_ends_and_dies_as_a_started_one(nats_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    env["MAMS_LOG_LEVEL"] = "warning"
    async with fork_server(preload_for(["anthropic:claude-x"]), env) as server:
        for argv in (["--version"], ["no-such-command"]):  # exit status 0, then 2
            forked = await server.spawn(argv, env)
            started = await anyio.open_process(
                [sys.executable, "-P", "-m", "mams", *argv], env=env, stderr=subprocess.DEVNULL
            )
            with anyio.fail_after(WAIT):
                assert await _all(forked.stdout) == await _all(started.stdout)
                assert await forked.wait() == await started.wait()
            assert forked.returncode == (0 if argv == ["--version"] else 2)
        # A buyer saying hello on a market with no broker, until killed.
        argv = ["buyer", "--session", str(uuid.uuid4()), "--market", f"f{uuid.uuid4().hex[:8]}"]
        forked = await server.spawn(argv, {**env, "NATS_URL": nats_url})
        assert _ppid(forked.pid) == os.getpid()  # ours, not the server's
        assert _environ(forked.pid)["NATS_URL"] == nats_url
        assert _environ(forked.pid)[FORKED_ENV] == str(server.process.pid)
        forked.kill()
        with anyio.fail_after(WAIT):
            assert await forked.wait() == -signal.SIGKILL
        assert forked.returncode == -signal.SIGKILL


def test_the_server_preloads_the_sdks_of_the_studys_providers() -> None:
    assert preload_for(["baseline"]) == ["mams.cli"]
    anthropic = preload_for(["baseline", "anthropic:claude-haiku-4-5"])
    assert "anthropic" in anthropic
    assert "openai" not in anthropic
    assert "mams.actors.brains.llm.providers" in anthropic
    assert "openai" in preload_for(["openrouter:x/y"])
    assert "openai" in preload_for(["openai"])  # a bare provider name
