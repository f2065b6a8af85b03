"""An embedded PostgreSQL 16 (the binaries of the `pgserver` package) for when DATABASE_URL
is not set.

Locked down: every connection needs the password (SCRAM; ``pg_hba.conf`` has no ``trust``
line), which is generated once and kept beside the data, ``<data dir>.password``, mode
0600, so sessions persist between runs. The server listens on no TCP port, only on a Unix
socket in a private directory (mode 0700): ``<data dir>.run`` if that path is short enough
for a socket, else a fresh ``mkdtemp`` one. A data directory made by an older mams (trust
auth) gets the password and the rules at its first start here.

Sharing: one server per data directory across processes. ``<data dir>.lock`` (flock)
serialises starts and stops; ``<data dir>.holders.json`` lists the pids of the processes
using it. A start joins a running server; a stop leaves it to the others and stops it when
it was the last. The process that starts the server also starts a watchdog process that
stops it once no listed holder is alive: a holder killed outright (SIGKILL, or SIGTERM
with no handler, when nothing of ours runs on the way out) must not leave a server
running for good.

As root: PostgreSQL refuses to run as root, so the server runs as the system user
``pgserver`` (created, without a home or a login shell, if missing), owner of the data
directory. mams never widens a directory's permissions for it: the data directory (by
default ``/var/lib/mams/postgres`` for root) and the binaries must be reachable by that
user already, else `start` refuses, saying what to do.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import secrets
import shlex
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Final, Self
from urllib.parse import quote

import anyio.to_thread
import platformdirs
import structlog

from mams.storage.errors import StorageError

log = structlog.get_logger(__name__)

PG_SYSTEM_USER: Final = "pgserver"
ROOT_DATA_DIR: Final = Path("/var/lib/mams")
WATCH_EVERY: Final = 0.2
_SOCKET_PATH_MAX: Final = 100  # sun_path holds 108 bytes; ".s.PGSQL.5432" goes in it too
_PORT: Final = 5432  # the socket's name only: no TCP listener, and the directory is ours
_HBA: Final = (
    "# Written by mams at every start of the embedded server: a password (SCRAM) for\n"
    "# every connection, no trust. The server listens on its private socket only.\n"
    "local all all scram-sha-256\n"
    "host  all all 127.0.0.1/32 scram-sha-256\n"
    "host  all all ::1/128 scram-sha-256\n"
)


def default_data_dir() -> Path:
    """`$MAMS_DATA_DIR/postgres` if MAMS_DATA_DIR is set, else the user data dir's
    `postgres` (for root, `/var/lib/mams/postgres`: see the module's doc)."""
    base = os.environ.get("MAMS_DATA_DIR")
    if base:
        return Path(base) / "postgres"
    if _is_root():
        return ROOT_DATA_DIR / "postgres"
    return Path(platformdirs.user_data_dir("mams")) / "postgres"


def _is_root() -> bool:
    return sys.platform != "win32" and os.geteuid() == 0


def _bin(name: str) -> Path:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (root, containers).
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        from pgserver._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH) / name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: alive
        return True
    return True


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` atomically, mode 0600 from the start."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class _PgUser:
    """Who the server runs as: ourselves, or (as root) the system user `pgserver`."""

    def __init__(self) -> None:
        self.uid: int | None = None
        self.gid: int | None = None
        if _is_root():
            entry = self._system_user()
            self.uid, self.gid = entry.pw_uid, entry.pw_gid

    @staticmethod
    def _system_user() -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            pass
        shell = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
        try:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", shell, PG_SYSTEM_USER],
                check=True,
                capture_output=True,
                text=True,
            )
            return pwd.getpwnam(PG_SYSTEM_USER)
        except (OSError, subprocess.CalledProcessError, KeyError) as exc:
            raise StorageError(
                f"the embedded PostgreSQL cannot run as root and the system user "
                f"{PG_SYSTEM_USER!r} to run it could not be created ({exc}); run mams as a "
                "normal user, or set DATABASE_URL to a PostgreSQL server of your own"
            ) from exc

    def own(self, path: Path) -> None:
        """Hand ``path`` to the server's user (as root)."""
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)

    def run(self, args: list[str], *, cwd: Path, stdin: str | None = None) -> str:
        """Run a PostgreSQL program as the server's user; its output, or `StorageError`."""
        with tempfile.TemporaryFile("w+") as output:
            # Files, not pipes: pg_ctl's server inherits them and would hold a pipe open.
            result = subprocess.run(
                args,
                input=stdin,
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=cwd,
                user=self.uid,
                group=self.gid,
                extra_groups=[] if self.uid is not None else None,
                timeout=60,
                check=False,
            )
            output.seek(0)
            text = output.read()
        if result.returncode != 0:
            raise StorageError(
                f"{Path(args[0]).name} failed (status {result.returncode}): {text.strip()[-800:]}"
            )
        return text

    def check_reachable(self, path: Path, what: str) -> None:
        """As root: refuse unless the server's user can already reach ``path``."""
        if self.uid is None:
            return
        for directory in [p for p in (path, *path.parents) if p.is_dir()]:
            st = directory.stat()
            if st.st_uid == self.uid:
                ok = st.st_mode & stat.S_IXUSR
            elif st.st_gid == self.gid:
                ok = st.st_mode & stat.S_IXGRP
            else:
                ok = st.st_mode & stat.S_IXOTH
            if not ok:
                raise StorageError(
                    f"the embedded PostgreSQL cannot run as root (PostgreSQL refuses to), so "
                    f"mams runs it as the system user {PG_SYSTEM_USER!r}, which cannot reach "
                    f"{what} {path}: {directory} is private (mode "
                    f"{stat.S_IMODE(st.st_mode):04o}), and mams does not open your "
                    "directories to other users. Set MAMS_DATA_DIR to a directory every "
                    f"user may traverse (e.g. {ROOT_DATA_DIR}), set DATABASE_URL to a "
                    "PostgreSQL server of your own, or run mams as a normal user"
                )


class _Files:
    """The files beside one data directory: password, lock, holders, socket dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        stem = data_dir.parent / data_dir.name
        self.password = stem.with_name(f"{data_dir.name}.password")
        self.lock = stem.with_name(f"{data_dir.name}.lock")
        self.holders = stem.with_name(f"{data_dir.name}.holders.json")
        self.run_dir = stem.with_name(f"{data_dir.name}.run")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def live_holders(self, *, add: int | None = None, remove: int | None = None) -> list[int]:
        """The holders still alive (dead ones dropped), after adding/removing a pid."""
        try:
            raw = json.loads(self.holders.read_text())
        except (FileNotFoundError, ValueError):
            raw = []
        pids = [p for p in raw if isinstance(p, int) and p != remove and _alive(p)]
        if add is not None and add not in pids:
            pids.append(add)
        _write_private(self.holders, json.dumps(pids))
        return pids

    def postmaster(self) -> tuple[int, Path, int] | None:
        """(pid, socket dir, port) of the server running on the data dir, if one is."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid, port, socket_dir = int(lines[0]), int(lines[3]), lines[4].strip()
        except (FileNotFoundError, ValueError, IndexError):
            return None
        if not _alive(pid) or not socket_dir or len(lines) < 8 or lines[7].strip() != "ready":
            return None
        return pid, Path(socket_dir), port


def _stop_server(files: _Files, user: _PgUser) -> None:
    """Stop the server on ``files.data_dir`` (fast shutdown; SIGKILL if it will not)."""
    running = files.postmaster()
    if running is None:
        return
    try:
        user.run(
            [str(_bin("pg_ctl")), "-D", str(files.data_dir), "-m", "fast", "-w", "stop"],
            cwd=files.data_dir,
        )
    except (StorageError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.kill(running[0], signal.SIGKILL)
    log.info("storage.embedded_postgres_stopped", data_dir=str(files.data_dir))


def _watch(data_dir: str, postmaster: int) -> None:
    """The watchdog's loop (a process of its own): stop the server once no holder of it
    is alive; end when the server is gone."""
    for sig in (signal.SIGINT, signal.SIGHUP):  # a Ctrl-C is for mams, which stops it
        signal.signal(sig, signal.SIG_IGN)
    files = _Files(Path(data_dir))
    user = _PgUser()
    while _alive(postmaster):
        time.sleep(WATCH_EVERY)
        with files.locked():
            running = files.postmaster()
            if running is None or running[0] != postmaster:
                return
            if not files.live_holders():
                _stop_server(files, user)
                return


class EmbeddedPostgres:
    """A real PostgreSQL server on a private Unix socket, password required.

    `async with EmbeddedPostgres() as pg: pool = await create_pool(pg.dsn)`, or call
    `start()` / `stop()` (blocking) yourself.
    """

    _held: ClassVar[dict[Path, int]] = {}  # data dir -> handles in this process

    def __init__(self, data_dir: Path | str | None = None, *, database: str = "postgres") -> None:
        """Configure; nothing starts until `start` (or ``async with``)."""
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.database = database
        self._dsn: str | None = None
        self._holding: Path | None = None

    @property
    def dsn(self) -> str:
        """A libpq URL with the password: `postgresql://postgres:…@/db?host=<socket dir>`.
        Keep it out of argv and logs."""
        if self._dsn is None:
            raise StorageError("the embedded PostgreSQL is not started; call start() first")
        return self._dsn

    @property
    def password_file(self) -> Path:
        """Where the password is kept (mode 0600), beside the data directory."""
        return _Files(self.data_dir.expanduser().absolute()).password

    def start(self) -> str:
        """Start (or join the already running) server on `data_dir`; return its DSN. Blocks."""
        user = _PgUser()
        self.data_dir = self.data_dir.expanduser().absolute()
        parent = self.data_dir.parent
        if not parent.exists():
            parent.mkdir(parents=True, mode=0o711 if user.uid is not None else 0o700)
        self.data_dir = self.data_dir.resolve()
        user.check_reachable(self.data_dir, "the data directory")
        user.check_reachable(_bin("postgres"), "the PostgreSQL programs at")
        files = _Files(self.data_dir)
        log.info("storage.embedded_postgres_starting", data_dir=str(self.data_dir))
        try:
            with files.locked():
                running = files.postmaster()
                if running is None or not files.password.exists():
                    if running is not None:  # an older mams's, on trust auth: not any more
                        _stop_server(files, user)
                    running = self._start_server(files, user)
                if self._held.get(self.data_dir, 0) == 0:
                    files.live_holders(add=os.getpid())
                self._held[self.data_dir] = self._held.get(self.data_dir, 0) + 1
                self._holding = self.data_dir
                password = files.password.read_text().strip()
        except (OSError, subprocess.SubprocessError) as exc:
            raise StorageError(
                f"could not start the embedded PostgreSQL in {self.data_dir}: {exc}; see "
                f"{self.data_dir / 'log'}, or set DATABASE_URL to use another server"
            ) from exc
        pid, socket_dir, port = running
        host = quote(str(socket_dir), safe="/")
        self._dsn = f"postgresql://postgres:{password}@/{self.database}?host={host}&port={port}"
        log.info(
            "storage.embedded_postgres_started",
            data_dir=str(self.data_dir),
            pid=pid,
            socket_dir=str(socket_dir),
        )
        return self._dsn

    def _start_server(self, files: _Files, user: _PgUser) -> tuple[int, Path, int]:
        """Under the lock, no server running: make sure the data dir has our password and
        rules, start the server on a private socket, start its watchdog."""
        data = self.data_dir
        if not files.password.exists():
            password = secrets.token_urlsafe(24)  # [A-Za-z0-9_-]: safe in URL and SQL
            if not (data / "PG_VERSION").exists():
                self._initdb(files, user, password)
            else:  # made by an older mams (trust): set the password while it is down
                statement = f"ALTER ROLE postgres PASSWORD '{password}';\n"
                user.run(
                    [str(_bin("postgres")), "--single", "-D", str(data), "postgres"],
                    cwd=data,
                    stdin=statement,
                )
            _write_private(files.password, password + "\n")
        hba = data / "pg_hba.conf"
        hba.write_text(_HBA)
        user.own(hba)
        socket_dir = self._socket_dir(files, user)
        options = (
            f"-c listen_addresses='' -k {shlex.quote(str(socket_dir))} "
            "-c unix_socket_permissions=0700"
        )
        user.run(
            [
                str(_bin("pg_ctl")),
                "-D",
                str(data),
                "-l",
                str(data / "log"),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            ],
            cwd=data,
        )
        running = files.postmaster()
        if running is None:
            raise StorageError(f"the embedded PostgreSQL did not come up; see {data / 'log'}")
        # The watchdog: forked off (not our child: nothing to reap, it outlives us by
        # design) into a session of its own (a Ctrl-C or a kill of our process group is
        # not for it); it ends by itself with the server.
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import os, sys\n"
                "if os.fork():\n    os._exit(0)\n"
                "os.setsid()\n"
                "from mams.storage.embedded import _watch\n"
                "_watch(sys.argv[1], int(sys.argv[2]))",
                str(data),
                str(running[0]),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
            timeout=60,
        )
        return running

    def _initdb(self, files: _Files, user: _PgUser, password: str) -> None:
        data = self.data_dir
        data.mkdir(mode=0o700, exist_ok=True)
        user.own(data)
        with tempfile.TemporaryDirectory(prefix="mams-pg-init-") as tmp:
            pwfile = Path(tmp) / "pw"
            _write_private(pwfile, password + "\n")
            user.own(Path(tmp))
            user.own(pwfile)
            user.run(
                [
                    str(_bin("initdb")),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--encoding=utf8",
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                ],
                cwd=Path(tmp),
            )

    @staticmethod
    def _socket_dir(files: _Files, user: _PgUser) -> Path:
        """A private (0700) directory for the socket, owned by the server's user."""
        if len(str(files.run_dir / f".s.PGSQL.{_PORT}")) <= _SOCKET_PATH_MAX:
            if files.run_dir.is_symlink() or (
                files.run_dir.exists() and not files.run_dir.is_dir()
            ):
                files.run_dir.unlink()
            files.run_dir.mkdir(mode=0o700, exist_ok=True)
            directory = files.run_dir
        else:  # too long for a socket path: a fresh one of ours under the temp dir
            directory = Path(tempfile.mkdtemp(prefix="mams-pg-"))
        os.chmod(directory, 0o700)
        user.own(directory)
        return directory

    def stop(self) -> None:
        """Release this handle; the server stops if no other process (or handle) holds it."""
        self._dsn = None
        data, self._holding = self._holding, None
        if data is None:
            return
        left = self._held.get(data, 1) - 1
        self._held[data] = left
        if left > 0:
            return
        files = _Files(data)
        with files.locked():
            if not files.live_holders(remove=os.getpid()):
                _stop_server(files, _PgUser())
        log.info("storage.embedded_postgres_released", data_dir=str(data))

    async def __aenter__(self) -> Self:
        """`start` in a worker thread."""
        await anyio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """`stop` in a worker thread."""
        await anyio.to_thread.run_sync(self.stop)
