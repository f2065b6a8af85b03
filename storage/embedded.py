"""An embedded PostgreSQL 16 (the `pgserver` package) for when DATABASE_URL is not set.

The server listens only on a Unix socket inside (or near) the data directory, so it never
collides with a server on port 5432. Data persists in the data directory between runs.

Sharing: pgserver keeps one server per data directory across processes. It takes an
inter-process file lock while starting, reuses a server already running on that data
directory, and records the pid of every process holding a handle in
`<datadir>/.handle_pids.json`; the server stops only when the last holder stops (or exits).
So two `mams` processes on the same data directory share one postmaster and never run two
servers on the same files. PostgreSQL's own `postmaster.pid` interlock backs this up. A
holder killed with SIGKILL leaves its pid in the list, so the server then keeps running
after the others stop; it is reused, not duplicated, by the next start.

As root, pgserver runs PostgreSQL as a system user `pgserver` (creating it if needed),
chowns the data directory to it, and adds o+rx to every parent directory of the data
directory so that user can reach it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import anyio.to_thread
import platformdirs
import structlog

from mams.storage.errors import StorageError

log = structlog.get_logger(__name__)


def default_data_dir() -> Path:
    """`$MAMS_DATA_DIR/postgres` if MAMS_DATA_DIR is set, else the user data dir's `postgres`."""
    base = os.environ.get("MAMS_DATA_DIR")
    root = Path(base) if base else Path(platformdirs.user_data_dir("mams"))
    return root / "postgres"


class EmbeddedPostgres:
    """A real PostgreSQL server on a Unix socket, started from `pgserver`.

    `async with EmbeddedPostgres() as pg: pool = await create_pool(pg.dsn)`, or call
    `start()` / `stop()` (blocking) yourself.
    """

    def __init__(self, data_dir: Path | str | None = None, *, database: str = "postgres") -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.database = database
        self._server: Any = None
        self._dsn: str | None = None

    @property
    def dsn(self) -> str:
        """A libpq-style URL for asyncpg: `postgresql://postgres@/db?host=<socket dir>`."""
        if self._dsn is None:
            raise StorageError("the embedded PostgreSQL is not started; call start() first")
        return self._dsn

    def start(self) -> str:
        """Start (or join the already running) server on `data_dir`; return its DSN. Blocks."""
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (root, containers); pgserver
            # then keeps its start lock under /tmp/runtime-<uid>, which works fine.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            from pgserver.postgres_server import get_server

        self.data_dir = self.data_dir.expanduser().resolve()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log.info("storage.embedded_postgres_starting", data_dir=str(self.data_dir))
        try:
            server = get_server(self.data_dir, cleanup_mode="stop")
        except Exception as exc:
            raise StorageError(
                f"could not start the embedded PostgreSQL in {self.data_dir}: {exc}; "
                f"see {self.data_dir / 'log'}, or set DATABASE_URL to use another server"
            ) from exc
        # pgserver's annotations are loose (socket_dir may be None); read it as Any.
        info: Any = server.get_postmaster_info()
        self._server = server
        if info.socket_dir is not None:
            host = quote(str(info.socket_dir), safe="/")
            self._dsn = f"postgresql://postgres@/{self.database}?host={host}&port={info.port}"
        else:
            self._dsn = f"postgresql://postgres@{info.hostname}:{info.port}/{self.database}"
        log.info(
            "storage.embedded_postgres_started",
            data_dir=str(self.data_dir),
            pid=info.pid,
            dsn=self._dsn,
        )
        return self._dsn

    def stop(self) -> None:
        """Release this process's handle; the server stops if no other process holds one."""
        server, self._server = self._server, None
        self._dsn = None
        if server is None:
            return
        log.info("storage.embedded_postgres_stopping", data_dir=str(self.data_dir))
        server.cleanup()
        log.info("storage.embedded_postgres_released", data_dir=str(self.data_dir))

    async def __aenter__(self) -> Self:
        await anyio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)
