"""Real OS processes for the process tests: `mams broker|seller|buyer|run` and the
external seller, each with its output in a file, every wait bounded, every child stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import anyio

REPO = Path(__file__).resolve().parents[2]
EXTERNAL_SELLER = REPO / "examples" / "external_seller.py"
START_TIMEOUT = 60.0
RUN_TIMEOUT = 120.0


def mams_command() -> list[str]:
    """The installed console script next to this interpreter."""
    script = Path(sys.executable).parent / "mams"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from mams.cli import main; main()"]


def process_running(pid: int) -> bool:
    """Whether `pid` is a live process (Linux /proc): not gone, and not a zombie, which has
    exited and only awaits its parent's wait."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def schema_dsn(database_url: str, schema: str) -> str:
    """The DSN with `options=-csearch_path=<schema>`: every process logs into the schema."""
    parts = urlsplit(database_url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def process_env(nats_url: str, dsn: str, data_dir: Path, log_level: str = "info") -> dict[str, str]:
    """NATS_URL and DATABASE_URL for the test's servers, never the user's data dir."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(
        NATS_URL=nats_url,
        DATABASE_URL=dsn,
        MAMS_DATA_DIR=str(data_dir),
        MAMS_LOG_LEVEL=log_level,
        NO_COLOR="1",
        PYTHONUNBUFFERED="1",
    )
    return env


@dataclass
class Child:
    """One child process; stdout and stderr go to files read back with `out`/`err`."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def out(self) -> str:
        return self.stdout.read_text(encoding="utf-8", errors="replace")

    def err(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")

    def describe(self) -> str:
        return (
            f"{self.name} (pid {self.popen.pid}, exit {self.popen.poll()})\n"
            f"--- stdout:\n{self.out()[-4000:]}\n--- stderr:\n{self.err()[-4000:]}"
        )

    async def wait_for(
        self, text: str, within: float = START_TIMEOUT, *, err: bool = False
    ) -> None:
        """Until `text` appears in its stdout (or stderr); fails if it exits first."""
        deadline = time.monotonic() + within
        while True:
            if text in (self.err() if err else self.out()):
                return
            if self.popen.poll() is not None:
                raise AssertionError(f"exited before printing {text!r}: {self.describe()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {within} s: {self.describe()}")
            await anyio.sleep(0.05)

    async def wait(self, within: float = RUN_TIMEOUT) -> int:
        """Its exit code, waiting at most `within` seconds."""
        deadline = time.monotonic() + within
        while (code := self.popen.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {within} s: {self.describe()}")
            await anyio.sleep(0.05)
        return code

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self) -> None:
        """SIGTERM (SIGCONT first, in case it was stopped), then SIGKILL after 10 s."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


@dataclass
class Cast:
    """Starts children in one directory with one environment; stops them all."""

    dir: Path
    env: dict[str, str]
    children: list[Child] = field(default_factory=list)

    def spawn(self, name: str, argv: Sequence[str]) -> Child:
        n = len(self.children)
        stdout = self.dir / f"{n:02d}-{name}.out"
        stderr = self.dir / f"{n:02d}-{name}.err"
        with stdout.open("wb") as o, stderr.open("wb") as e:
            popen = subprocess.Popen(list(argv), cwd=self.dir, env=self.env, stdout=o, stderr=e)
        child = Child(name, popen, stdout, stderr)
        self.children.append(child)
        return child

    def mams(self, name: str, *args: str) -> Child:
        return self.spawn(name, [*mams_command(), *args])

    def seller(self, scenario: Path, handle: str, market: str, *args: str, name: str = "") -> Child:
        """`mams seller` for one handle of a scenario file, in `market`, `args` after."""
        return self.mams(
            name or handle,
            "seller",
            "--scenario",
            str(scenario),
            "--handle",
            handle,
            "--market",
            market,
            *args,
        )

    def buyer(self, scenario: Path, market: str, *args: str, name: str = "buyer") -> Child:
        """`mams buyer` for a scenario file's buyer, in `market`, with `args` after."""
        return self.mams(name, "buyer", "--scenario", str(scenario), "--market", market, *args)

    def external_seller(self, name: str, *args: str) -> Child:
        return self.spawn(name, [sys.executable, str(EXTERNAL_SELLER), *args])

    def stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop()


@contextmanager
def cast(directory: Path, env: dict[str, str]) -> Iterator[Cast]:
    """A Cast whose children are all stopped on the way out, whatever happened."""
    c = Cast(directory, env)
    try:
        yield c
    finally:
        c.stop_all()


def one_json_object(stdout: str) -> dict[str, Any]:
    """stdout holds exactly one JSON object (the --json contract); numbers as Decimals."""
    text = stdout.strip()
    obj, end = json.JSONDecoder(parse_float=Decimal).raw_decode(text)
    assert end == len(text), f"more than one JSON value on stdout: {text[end:]!r}"
    assert isinstance(obj, dict)
    return obj


def last_json_line(stdout: str) -> dict[str, Any]:
    """The last line of stdout that is a JSON object (the buyer prints its progress first)."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            obj = json.loads(line, parse_float=Decimal)
            assert isinstance(obj, dict)
            return obj
    raise AssertionError(f"no JSON object on stdout:\n{stdout}")
