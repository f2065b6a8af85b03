"""nats-server processes started from a config file alone (no flags), for reload and cluster
tests.

Why not `EmbeddedNats(config_file=...)`: it names the server with ``-n``, and nats-server
refuses to reload a config whose ``server_name`` differs from the flag's ("config reload
not supported for ServerName"). Here every setting, ports included, is in the file, so a
SIGHUP reload applies cleanly. Readiness is the monitoring endpoint ``/healthz`` answering
ok (bounded polling); every process is stopped (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.abc
import anyio.to_thread

from mams.bus.embedded import find_nats_server_binary

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
PORT_ATTEMPTS = 5


class PortTakenError(Exception):
    """A chosen port was taken between choosing and binding; choose again."""


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float) -> bool:
    """Poll ``check`` (backing off from 5 ms to 100 ms) until it holds or ``within`` seconds
    passes; whether it held. For readiness conditions only, never as a pause."""
    delay = 0.005
    with anyio.move_on_after(within):
        while True:
            if await check():
                return True
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.1)
    return False


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free right now (held open together while choosing)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_json(port: int, path: str) -> Any:
    """GET ``http://127.0.0.1:<port><path>`` as JSON (blocking; run it in a thread)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response (and its socket) open: /healthz answers 503
        raise


@dataclass
class NatsNode:
    """One running nats-server: its client URL, monitoring port and process."""

    name: str
    port: int
    http_port: int
    process: anyio.abc.Process
    log_path: Path

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    async def monitor(self, path: str) -> Any:
        """A monitoring endpoint's JSON (``/routez``, ``/varz``, ...)."""
        return await anyio.to_thread.run_sync(http_json, self.http_port, path)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


async def _healthy(node: NatsNode) -> bool:
    try:
        doc = await node.monitor("/healthz")
    except (OSError, urllib.error.URLError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("status") == "ok"


async def _stop(process: anyio.abc.Process) -> None:
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            process.terminate()
            with anyio.move_on_after(STOP_TIMEOUT):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
        await process.aclose()


@asynccontextmanager
async def nats_node(name: str, config: Path, port: int, http_port: int) -> AsyncIterator[NatsNode]:
    """Run ``nats-server -c config`` (which must listen on ``port`` and serve monitoring on
    ``http_port``) until the context exits. Raises `PortTakenError` if a port was taken."""
    log_path = config.with_suffix(".log")
    log: IO[bytes] = log_path.open("ab")
    try:
        process = await anyio.open_process(
            [str(find_nats_server_binary()), "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        node = NatsNode(name, port, http_port, process, log_path)
        try:

            async def up_or_exited() -> bool:
                return process.returncode is not None or await _healthy(node)

            await eventually(up_or_exited, within=START_TIMEOUT)
            if process.returncode is not None or not await _healthy(node):
                tail = node.log_tail()
                if "address already in use" in tail:
                    raise PortTakenError(tail)
                raise RuntimeError(f"nats-server {name} did not become healthy:\n{tail}")
            yield node
        finally:
            await _stop(process)
    finally:
        log.close()


@asynccontextmanager
async def nats_nodes(
    directory: Path,
    names: Sequence[str],
    render: Callable[[dict[str, dict[str, int]]], dict[str, str]],
    ports_per_node: Sequence[str] = ("client", "http"),
) -> AsyncIterator[list[NatsNode]]:
    """Start one server per name with configs ``render(ports)`` returns (name -> text),
    given ``ports`` (name -> {"client": p, "http": p, ...}); retry with fresh ports if one
    was taken meanwhile."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        chosen = iter(free_ports(len(names) * len(ports_per_node)))
        ports = {n: {kind: next(chosen) for kind in ports_per_node} for n in names}
        texts = render(ports)
        try:
            async with AsyncExitStack() as stack:
                nodes = []
                for n in names:
                    config = directory / f"{n}.conf"
                    config.write_text(texts[n])
                    p = ports[n]
                    nodes.append(
                        await stack.enter_async_context(
                            nats_node(n, config, p["client"], p["http"])
                        )
                    )
                yield nodes
                return
        except PortTakenError:
            if attempt == PORT_ATTEMPTS:
                raise
    raise AssertionError("unreachable")
