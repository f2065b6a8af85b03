"""A `Bus` over a real NATS server, with nats-py. The only module that imports `nats`.

nats-py errors are translated into `BusError` subclasses in exactly one place,
`_translate`; every call into nats-py goes through the `_nats_errors` context manager.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, NoReturn

import anyio
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from mams.bus._buffer import BufferedSubscription
from mams.bus.base import (
    DEFAULT_MAX_PENDING,
    BusClosedError,
    BusConnectError,
    BusError,
    BusSubjectError,
    Message,
    Subscription,
    redact_url,
)

__all__ = ["NatsBus"]

_log = structlog.get_logger("mams.bus.nats")

_FIX_HINT = (
    "start a nats-server there (e.g. `nats-server -js -c nats.conf`), "
    "or unset NATS_URL to use the embedded one"
)


def _translate(exc: BaseException, *, url: str, doing: str, subject: str | None = None) -> BusError:
    """The one place nats-py (and socket) errors become MAMS errors (passwords redacted)."""
    url = redact_url(url)
    if isinstance(exc, BusError):
        return exc
    if isinstance(exc, nats.errors.BadSubjectError):
        return BusSubjectError(subject or "", f"NATS rejected it while {doing}")
    if isinstance(exc, nats.errors.ConnectionClosedError | nats.errors.ConnectionDrainingError):
        return BusClosedError(f"NATS connection to {url} is closed ({doing})")
    if isinstance(exc, nats.errors.AuthorizationError):
        return BusConnectError(
            url, f"NATS at {url} refused our credentials or permissions while {doing}"
        )
    if isinstance(exc, nats.errors.MaxPayloadError):
        return BusError(f"message too large for NATS at {url} while {doing}: {exc}")
    if isinstance(exc, nats.errors.TimeoutError):
        return BusError(f"NATS at {url} did not answer in time while {doing}")
    if isinstance(exc, ConnectionRefusedError):
        return BusConnectError(
            url, f"cannot connect to NATS at {url}: connection refused; {_FIX_HINT}"
        )
    if isinstance(exc, OSError | nats.errors.NoServersError | asyncio.TimeoutError):
        return BusConnectError(
            url, f"cannot connect to NATS at {url} ({doing}): {exc!r}; {_FIX_HINT}"
        )
    return BusError(f"NATS error at {url} while {doing}: {exc!r}")


@contextmanager
def _nats_errors(url: str, doing: str, subject: str | None = None) -> Iterator[None]:
    try:
        yield
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        raise _translate(exc, url=url, doing=doing, subject=subject) from exc


def _raise(exc: BaseException, *, url: str, doing: str, subject: str | None = None) -> NoReturn:
    raise _translate(exc, url=url, doing=doing, subject=subject) from exc


def _netloc(nc: Client) -> str:
    # The server we are on, as host:port (never the userinfo, which holds the password).
    url = nc.connected_url
    if url is None:
        return "?"
    return f"{url.hostname}:{url.port}" if url.port else str(url.hostname)


class NatsBus:
    """A `Bus` on one nats-py connection.

    Each subscription delivers through its own bounded buffer (``max_pending`` messages).
    NATS core has no backpressure: when a reader falls behind, its buffer fills, then
    nats-py's pending queue (also ``max_pending``) fills, then nats-py drops messages for
    that subscription and reports a slow-consumer error, which we log.
    """

    def __init__(self, nc: Client, url: str) -> None:
        """Wrap a connected nats-py client; use `NatsBus.connect` instead."""
        self._nc = nc
        self._url = url
        self._subs: dict[int, tuple[BufferedSubscription, NatsSubscription]] = {}
        self._on_reconnect: list[Callable[[], Awaitable[None]]] = []

    def on_reconnect(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Call `hook` each time the connection comes back after a disconnect (the
        subscriptions are in place again by then). What was published to us, or by us
        past nats-py's buffer, while the server was away is lost: a hook re-sends what the
        other side may need. A failing hook is logged, never raised."""
        self._on_reconnect.append(hook)

    @property
    def url(self) -> str:
        """The server URL this bus was asked to connect to."""
        return self._url

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        name: str,
        user: str | None = None,
        password: str | None = None,
        creds_file: str | None = None,
        nkey_seed: str | None = None,
        connect_timeout: float = 2.0,
        reconnect_wait: float = 0.25,
    ) -> NatsBus:
        """Connect to NATS at ``url`` as client ``name``.

        Auth is one of: ``user``/``password``, a ``creds_file`` (JWT + seed), or an
        ``nkey_seed`` file path. If no connection is made within ``connect_timeout``
        seconds (retrying every ``reconnect_wait``), raises `BusConnectError` naming the
        URL and how to fix it. Once connected, reconnects forever, ``reconnect_wait``
        apart; disconnects, reconnects and async errors are logged with structlog.
        """
        log = _log.bind(url=redact_url(url), client=name)
        last_error: list[BaseException] = []
        bus: list[NatsBus] = []  # the instance, once connected (for the reconnect hooks)

        outage = [False]  # an error of the current outage has been logged as a warning

        async def on_error(exc: Exception) -> None:
            last_error[:] = [exc]
            if isinstance(exc, nats.errors.SlowConsumerError):
                log.warning("nats.slow_consumer", subject=exc.subject, sid=exc.sid)
            elif outage[0]:  # every reconnect attempt fails alike: once is enough
                log.debug("nats.error", error=repr(exc))
            elif nc.is_connected:
                log.warning("nats.error", error=repr(exc))
            else:
                outage[0] = True
                log.warning(
                    "nats.error", error=repr(exc), then="reconnecting (repeats logged at debug)"
                )

        async def on_disconnected() -> None:
            if nc.is_closed:  # we closed it on purpose
                log.debug("nats.disconnected")
            else:
                log.warning("nats.disconnected")

        async def on_reconnected() -> None:
            outage[0] = False
            log.info("nats.reconnected", server=_netloc(nc))
            for hook in bus[0]._on_reconnect if bus else ():
                try:
                    await hook()
                except Exception as exc:  # a hook must not break nats-py's reconnect
                    log.warning("nats.reconnect_hook_failed", error=repr(exc))

        async def on_closed() -> None:
            log.info("nats.closed")

        options: dict[str, Any] = {}
        if user is not None:
            options["user"] = user
        if password is not None:
            options["password"] = password
        if creds_file is not None:
            options["user_credentials"] = creds_file
        if nkey_seed is not None:
            options["nkeys_seed"] = nkey_seed

        nc = Client()
        try:
            async with asyncio.timeout(connect_timeout):
                await nc.connect(
                    servers=[url],
                    name=name,
                    error_cb=on_error,
                    disconnected_cb=on_disconnected,
                    reconnected_cb=on_reconnected,
                    closed_cb=on_closed,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=reconnect_wait,  # type: ignore[arg-type]  # int hint, float ok
                    connect_timeout=max(1, int(connect_timeout)),
                    **options,
                )
        except TimeoutError as exc:
            with suppress(Exception):
                await nc.close()
            cause = last_error[0] if last_error else exc
            _raise(cause, url=url, doing=f"connecting, gave up after {connect_timeout}s")
        except (nats.errors.Error, OSError) as exc:
            with suppress(Exception):
                await nc.close()
            _raise(exc, url=url, doing="connecting")
        log.debug("nats.connected", server=_netloc(nc))
        bus.append(cls(nc, url))
        return bus[0]

    async def publish(self, subject: str, data: bytes) -> None:
        """Publish ``data`` on ``subject`` (buffered by nats-py; `flush` to wait for it)."""
        try:
            await self._nc.publish(subject, data)
        except (nats.errors.Error, OSError) as exc:
            _raise(exc, url=self._url, doing="publishing", subject=subject)

    async def subscribe(
        self, subject: str, *, max_pending: int = DEFAULT_MAX_PENDING
    ) -> Subscription:
        """Subscribe to a pattern; the server knows of it once this returns."""
        buffer = BufferedSubscription(subject, max_pending, self._unsubscribe)
        deliver_nowait = buffer.deliver_nowait
        deliver_slow = buffer.deliver_slow

        async def on_message(msg: Msg) -> None:
            admit = buffer.admit
            if admit is not None and not admit(msg.subject, msg.data):
                return
            message = Message(msg.subject, msg.data)
            try:
                deliver_nowait(message)
            except anyio.WouldBlock:
                # Holding nats-py's per-subscription task here lets its own pending
                # queue (also max_pending) absorb the burst before it drops messages.
                await deliver_slow(message)

        try:
            nsub = await self._nc.subscribe(
                subject,
                cb=on_message,
                pending_msgs_limit=max_pending,
            )
            # A round trip, so the server has registered interest before we return.
            await self._nc.flush()
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            buffer.close_buffer()
            _raise(exc, url=self._url, doing="subscribing", subject=subject)
        self._subs[id(buffer)] = (buffer, nsub)
        return buffer

    async def _unsubscribe(self, buffer: BufferedSubscription) -> None:
        entry = self._subs.pop(id(buffer), None)
        if entry is None or self._nc.is_closed:
            return
        with _nats_errors(self._url, "unsubscribing", buffer.subject):
            await entry[1].unsubscribe()

    async def flush(self) -> None:
        """Round trip to the server: everything published so far has reached it."""
        with _nats_errors(self._url, "flushing"):
            await self._nc.flush()

    async def close(self) -> None:
        """Flush what is buffered, close the connection, end every subscription. Idempotent."""
        subs = [buffer for buffer, _ in self._subs.values()]
        self._subs.clear()
        for buffer in subs:
            buffer.close_buffer()
        if self._nc.is_closed:
            return
        with _nats_errors(self._url, "closing"):
            if self._nc.is_connected:
                with suppress(nats.errors.Error, asyncio.TimeoutError):
                    await self._nc.flush()
            await self._nc.close()
