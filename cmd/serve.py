"""`mams serve`: the HTTP API (`mams.api`) on a real ASGI server (uvicorn), over the same
servers as `mams run` (embedded NATS and PostgreSQL when NATS_URL / DATABASE_URL are
unset). Binds 127.0.0.1 unless told otherwise; prints the URL once it is listening.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from typing import Any

import anyio
import structlog
from rich.console import Console

from mams.domain.errors import ConfigError

log = structlog.get_logger("mams.serve")

DEFAULT_PORT = 8000


def add_parser(sub: Any) -> None:
    """The serve subcommand."""
    p = sub.add_parser(
        "serve", help="serve the HTTP API (sessions, negotiations, a person as the buyer)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port to bind (default {DEFAULT_PORT}; 0 picks a free one)",
    )


def loopback(host: str) -> bool:
    """Whether `host` names only this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def cmd_serve(args: argparse.Namespace, out: Console) -> int:
    """Serve until interrupted."""
    import uvicorn

    from mams.actors.live import Live
    from mams.api.app import Api, create_app
    from mams.bus.base import Bus
    from mams.bus.nats import NatsBus
    from mams.infra import servers
    from mams.storage.leases import PgLeases

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be from 0 to 65535, got {args.port}")
    if not loopback(args.host):
        raise ConfigError(
            f"--host {args.host} is not loopback, and no API token is configured: anyone who "
            "can reach it could run markets and read every private term. Bind 127.0.0.1, "
            "or configure a token (see docs/API.md)"
        )
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror}; pick another --port"
        ) from None
    port = sock.getsockname()[1]
    out.print("[dim]starting servers...[/dim]")
    async with servers(need_bus=True) as srv:
        nats_url = srv.nats_url
        assert nats_url is not None

        async def connect(name: str) -> Bus:
            return await NatsBus.connect(nats_url, name=f"mams-api-{name}")

        async with PgLeases(srv.pool, srv.dsn) as leases:
            live = Live(connect, srv.store, leases)
            app = create_app(Api(srv.pool, srv.store, live))
            config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
            server = uvicorn.Server(config)
            async with anyio.create_task_group() as tg:
                await tg.start(live.run)
                sock.listen(1024)  # connections wait in the backlog until uvicorn accepts
                out.print(f"[dim]bus:[/dim] {srv.nats_note}\n[dim]log:[/dim] {srv.db_note}")
                host = f"[{args.host}]" if ":" in args.host else args.host
                out.print(f"serving the API on http://{host}:{port}/api", soft_wrap=True)
                sys.stdout.flush()
                # Until SIGINT/SIGTERM (uvicorn's own handlers; it re-raises the signal once
                # it has shut down, and the rooms still open are recorded as aborted).
                await server.serve([sock])
                tg.cancel_scope.cancel()
    return 0
