"""`mams serve`: the HTTP API (`mams.api`) on a real ASGI server (uvicorn), over the same
servers as `mams run` (embedded NATS and PostgreSQL when NATS_URL / DATABASE_URL are
unset). Binds 127.0.0.1 unless told otherwise; prints the URL once it is listening.

The operator's API token comes from `--token-file FILE` or the environment's
MAMS_API_TOKEN, never from the command line (any local user can read a process's argv in
/proc). Without one, only a loopback address may be bound. docs/API.md says how to call it.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import stat
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from rich.console import Console

from mams.domain.errors import ConfigError

if TYPE_CHECKING:
    from mams.actors.voice import VoiceOptions
    from mams.domain.config import Scenario

log = structlog.get_logger("mams.serve")

DEFAULT_PORT = 8000
DEFAULT_RATE = "20/second"  # requests per token (api.limits)
MIN_TOKEN = 24  # characters of the operator's token (api.auth.MIN_OPERATOR_TOKEN)


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
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the operator's API token (or set MAMS_API_TOKEN); with a token, "
        "every request needs 'Authorization: Bearer <token>', and any --host may be bound",
    )
    p.add_argument(
        "--rate-limit",
        default=DEFAULT_RATE,
        metavar="RATE",
        help=f"requests per token in a moving window (default {DEFAULT_RATE}; e.g. "
        "20/second;600/minute)",
    )
    p.add_argument(
        "--voice",
        action="store_true",
        help="read each seller's reply aloud (ElevenLabs with ELEVENLABS_API_KEY, else "
        "espeak-ng), off the rounds' path; message answers carry each reply's audio_url",
    )


def operator_token(path: str | None, env: dict[str, str] | os._Environ[str]) -> str | None:
    """The operator's token from `--token-file` or MAMS_API_TOKEN (one of them), or None."""
    from_env = env.get("MAMS_API_TOKEN") or None
    if path is None:
        return from_env.strip() if from_env else None
    if from_env is not None:
        raise ConfigError("both --token-file and MAMS_API_TOKEN are set: use one")
    try:
        mode = os.stat(path).st_mode
        text = open(path, encoding="utf-8").read().strip()  # noqa: SIM115 - read at once
    except OSError as exc:
        raise ConfigError(f"cannot read --token-file {path}: {exc.strerror}") from None
    if not text:
        raise ConfigError(f"--token-file {path} is empty; put the operator's token in it")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("serve.token_file_readable", path=path, hint=f"chmod 600 {path}")
    return text


def _voices(enabled: bool) -> Callable[[Scenario], VoiceOptions] | None:
    """Each study's voice observer options (`mams serve --voice`), or None. Raises
    VoiceConfigError (exit 2) when no engine can read, before anything starts."""
    if not enabled:
        return None
    from mams.actors.voice import Synthesizer, VoiceOptions, engine_for
    from mams.storage.audio import AudioStore
    from mams.voice import scenario_voices

    synth = Synthesizer(engine_for(os.environ), AudioStore())

    def options(scenario: Scenario) -> VoiceOptions:
        return VoiceOptions(synthesizer=synth, voices=scenario_voices(scenario))

    return options


def check_token(token: str) -> None:
    """ConfigError for an operator token too short to be a secret."""
    if len(token) < MIN_TOKEN:
        raise ConfigError(
            f"the API token is {len(token)} characters; use at least {MIN_TOKEN} random ones, "
            "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > token"
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
    from mams.api.auth import TokenAuth
    from mams.api.console import routes as console_routes
    from mams.api.limits import parse_rate
    from mams.bus.base import Bus
    from mams.bus.nats import NatsBus
    from mams.infra import servers
    from mams.storage.leases import PgLeases

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be from 0 to 65535, got {args.port}")
    token = operator_token(args.token_file, os.environ)
    if token is not None:
        check_token(token)
    try:
        limits = parse_rate(args.rate_limit)
    except ValueError as exc:
        raise ConfigError(f"--rate-limit: {exc}") from None
    if token is None and not loopback(args.host):
        raise ConfigError(
            f"--host {args.host} is not loopback, and no API token is configured: anyone who "
            "can reach it could run markets and read every private term. Bind 127.0.0.1, "
            "or configure a token (see docs/API.md)"
        )
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on a socket that says it is TCP;
    # without it each keep-alive response waited ~40 ms for the client's delayed ACK.
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror}; pick another --port"
        ) from None
    port = sock.getsockname()[1]
    voices = _voices(args.voice)  # no engine: exit 2 before anything starts
    out.print("[dim]starting servers...[/dim]")
    async with servers(need_bus=True) as srv:
        nats_url = srv.nats_url
        assert nats_url is not None

        async def connect(name: str) -> Bus:
            return await NatsBus.connect(nats_url, name=f"mams-api-{name}")

        async with PgLeases(srv.pool, srv.dsn) as leases:
            live = Live(connect, srv.store, leases, voice=voices)
            auth = TokenAuth(srv.pool, token)
            api = Api(srv.pool, srv.store, live, authenticate=auth, limits=limits)
            app = create_app(api, extra_routes=console_routes(api))  # the web console at /
            config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
            server = uvicorn.Server(config)
            async with anyio.create_task_group() as tg:
                await tg.start(live.run)
                sock.listen(1024)  # connections wait in the backlog until uvicorn accepts
                out.print(f"[dim]bus:[/dim] {srv.nats_note}\n[dim]log:[/dim] {srv.db_note}")
                out.print(
                    "[dim]auth:[/dim] "
                    + (
                        f"bearer tokens, at most {limits.spec} each"
                        if token is not None
                        else "none: every caller is the operator (loopback only)"
                    )
                )
                host = f"[{args.host}]" if ":" in args.host else args.host
                out.print(f"serving the API on http://{host}:{port}/api", soft_wrap=True)
                out.print(f"web console: http://{host}:{port}/", soft_wrap=True)
                sys.stdout.flush()
                # Until SIGINT/SIGTERM (uvicorn's own handlers; it re-raises the signal once
                # it has shut down, and the rooms still open are recorded as aborted).
                await server.serve([sock])
                tg.cancel_scope.cancel()
    return 0
