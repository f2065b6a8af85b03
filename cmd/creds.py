"""`mams creds`: issue one agent's NATS credentials into the users file, print how to start it.

    mams creds --conf users.conf --role seller --handle @TechMart [--market mams]
               [--reload-pid PID ...] [--rotate] [--json]

Writes (creating it if missing) the users file nats.conf includes, under a lock, then, with
``--reload-pid``, checks it with ``nats-server -t`` and signals each given server to
reload, so an agent joining a running market can connect at once. See docs/SECURITY.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, cast

import msgspec
from rich.console import Console
from rich.markup import escape

from mams.bus.auth import (
    ROLES,
    Credentials,
    Role,
    UsersFile,
    bcrypt_available,
    check_config,
    reload,
    user_name_for,
)
from mams.bus.subjects import AgentId, AgentIdError, Subjects
from mams.domain.errors import ConfigError

__all__ = ["add_creds_parser", "cmd_creds", "start_command"]

DEFAULT_SERVER = "nats://127.0.0.1:4222"


def add_creds_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``creds`` subcommand to ``sub`` (what ``add_subparsers()`` returned)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "creds",
        help="issue an agent's NATS credentials (users file + reload) and print how to start it",
        description="Add or update one user in the users file that nats.conf includes, "
        "with the permissions of its role, and print how to start that agent.",
    )
    p.add_argument(
        "--conf",
        required=True,
        type=Path,
        help="the users file nats.conf includes (e.g. users.conf next to it); created if missing",
    )
    p.add_argument("--role", required=True, choices=ROLES, help="what this user may do")
    p.add_argument(
        "--handle",
        help="the agent's handle, e.g. @TechMart (required for buyer and seller; for broker "
        "and observer it names the user, default the role name)",
    )
    p.add_argument(
        "--market", default="mams", help="market name: the subject prefix (default mams)"
    )
    p.add_argument(
        "--server",
        default=DEFAULT_SERVER,
        help=f"the NATS URL agents reach, for the printed command (default {DEFAULT_SERVER})",
    )
    p.add_argument(
        "--reload-pid",
        type=int,
        action="append",
        default=[],
        metavar="PID",
        help="nats-server process to reload after writing (repeatable: every cluster node)",
    )
    p.add_argument(
        "--rotate", action="store_true", help="issue a new password even if the user exists"
    )
    p.add_argument("--revoke", action="store_true", help="remove this user instead of issuing")
    p.add_argument(
        "--bcrypt",
        action="store_true",
        help="store a bcrypt hash instead of the password (needs the bcrypt package)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: user, password, role, agent_id, permissions, url, command",
    )
    return p


def _agent_id(args: argparse.Namespace) -> str | None:
    if args.handle is None:
        if args.role in ("buyer", "seller"):
            raise ConfigError(f"a {args.role} needs --handle (e.g. --handle @TechMart)")
        return None
    try:
        return AgentId.from_handle(args.handle).value
    except AgentIdError as exc:
        raise ConfigError(f"--handle: {exc}") from exc


def _subjects(market: str) -> Subjects:
    try:
        return Subjects(prefix=market)
    except AgentIdError as exc:
        raise ConfigError(f"--market: {exc}") from exc


def start_command(creds: Credentials, *, server: str, market: str, handle: str | None) -> str:
    """The shell line that starts the agent these credentials belong to."""
    env = f"NATS_URL={shlex.quote(creds.url(server))}"
    market_flag = f"--market {shlex.quote(market)}"
    match creds.role:
        case "broker":
            return f"{env} mams broker {market_flag}"
        case "seller":
            shown = shlex.quote(handle or f"@{creds.agent_id}")
            return f"{env} mams seller {market_flag} --scenario FILE --handle {shown}"
        case "buyer":
            return f"{env} mams buyer {market_flag} --scenario FILE"
        case "observer":
            return f"{env}  # then subscribe to {market}.events.> (committed events)"
        case "owner":  # not issued by mams creds: an embedded server's own user
            return f"{env}  # may publish and subscribe to everything"


async def cmd_creds(args: argparse.Namespace, out: Console) -> int:
    """Issue (or rotate, or revoke) one user's credentials; 0 on success.

    Raises `ConfigError` for bad arguments and `CredentialsError` for a users file or a
    server that cannot be used; both say what to do.
    """
    role = cast(Role, args.role)
    subjects = _subjects(args.market)
    agent_id = _agent_id(args)
    path: Path = args.conf
    if args.bcrypt and not bcrypt_available():
        raise ConfigError("--bcrypt needs the bcrypt package: `pip install bcrypt`")
    creds: Credentials | None = None
    with UsersFile.edit(path) as users:
        if args.revoke:
            name = user_name_for(role, agent_id)
            if not users.revoke(name):
                raise ConfigError(f"no user {name!r} in {path}; nothing to revoke")
        else:
            creds = users.issue(
                role, subjects, agent_id, rotate=args.rotate, hash_password=args.bcrypt
            )
    if args.reload_pid:
        check_config(path)  # never signal a server with a file it would refuse
        for pid in args.reload_pid:
            reload(pid)
    reloaded = ", ".join(str(pid) for pid in args.reload_pid)
    if creds is None:
        if args.json:
            sys.stdout.write(msgspec.json.encode({"revoked": agent_id or role}).decode() + "\n")
        else:
            out.print(f"revoked {escape(agent_id or role)} in {escape(str(path))}", markup=False)
            if not reloaded:
                out.print("reload the server to apply it: kill -HUP <nats-server pid>")
        return 0
    command = start_command(creds, server=args.server, market=args.market, handle=args.handle)
    if args.json:
        doc = {
            "user": creds.user,
            "password": creds.password,
            "role": creds.role,
            "agent_id": creds.agent_id,
            "market": args.market,
            "permissions": {
                "publish": list(creds.permissions.publish),
                "subscribe": list(creds.permissions.subscribe),
            },
            "url": creds.url(args.server),
            "command": command,
            "reloaded": list(args.reload_pid),
        }
        sys.stdout.write(msgspec.json.encode(doc).decode() + "\n")
        return 0
    out.print(f"{creds.role} {creds.user!r} in {path} (market {args.market!r})", markup=False)
    out.print(f"  password:  {creds.password}", markup=False)
    out.print(f"  publish:   {', '.join(creds.permissions.publish) or '(nothing)'}", markup=False)
    out.print(f"  subscribe: {', '.join(creds.permissions.subscribe)}", markup=False)
    if reloaded:
        out.print(f"reloaded nats-server {reloaded}: the user can connect now", markup=False)
    else:
        out.print(
            "reload the server to let it in: kill -HUP <nats-server pid> (or --reload-pid)",
            markup=False,
        )
    out.print("start it with:", markup=False)
    out.print(f"  {command}", markup=False, soft_wrap=True)
    return 0
