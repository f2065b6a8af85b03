"""A supervised process whose supervisor is gone ends, even if its own stop hangs (as
nats-py's close can, on a NATS server that died with the supervisor). Real processes: a
stand-in supervisor starts the child, then exits and so orphans it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from mams.processes import SUPERVISOR_ENV
from tests.processes.helpers import process_running

CHILD = f"""
import anyio, os
import mams.processes as processes

processes.ORPHAN_EXIT_WITHIN = 0.5

async def main() -> None:
    os.environ["{SUPERVISOR_ENV}"] = str(os.getppid())
    print("watching", flush=True)
    await processes._until_orphaned()
    with anyio.CancelScope(shield=True):  # a stop that never ends
        await anyio.sleep(3600)

anyio.run(main)
"""
SUPERVISOR = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
print(child.pid, flush=True)
sys.stdin.read()  # until the test closes it
"""


def test_an_orphan_whose_stop_hangs_still_exits() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as supervisor:
        assert supervisor.stdin is not None
        assert supervisor.stdout is not None
        child = int(supervisor.stdout.readline())
        try:
            assert supervisor.stdout.readline().strip() == "watching"
            supervisor.stdin.close()  # the supervisor exits: the child is an orphan now
            assert supervisor.wait(timeout=30) == 0
            deadline = time.monotonic() + 10
            while process_running(child) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not process_running(child), "the orphan is still running"
        finally:
            if process_running(child):
                os.kill(child, signal.SIGKILL)
