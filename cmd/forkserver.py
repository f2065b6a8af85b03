"""A warm fork server for the children of `mams run --processes` (issue 17).

`supervise` (cmd/processes.py) starts one per run, before any child: a fresh
`python -P -m mams.forkserver` (no event loop, no thread) that imports the CLI and the SDKs
of the study's providers (`preload_for`), freezes what it imported (`gc.freeze`: the
children share those pages and their garbage collector never walks them), then forks a
child per request that arrives on its Unix socket pair. A child runs `mams <argv>` as
`python -P -m mams <argv>` would: with the environment of the request (credentials travel
there, never in argv), the stdout pipe the request carried (SCM_RIGHTS), a session of its
own (setsid), and its own command line and environment where /proc shows them (`ps`, and
tests that look, see `mams broker ...` and its NATS_URL, not the server's). It costs a
fork, about 0.03 CPU-s, instead of an interpreter start and an SDK import (0.4 plus
0.5-1.5 CPU-s per process).

The children stay the supervisor's: the server forks twice and the middle process exits
at once, so each child is handed to the supervisor, a child subreaper for the run (Linux
PR_SET_CHILD_SUBREAPER). The supervisor waits for it and gets its exit status as for any
child (negative: killed by that signal), signals it through a pidfd (never a pid reused
by another process), and the child's orphan watch (`os.getppid()` against
MAMS_SUPERVISOR_PID) works as before. The server exits when the supervisor closes its
end of the socket, or dies.

Why not the standard library's multiprocessing forkserver (`set_forkserver_preload`)? It
can give a child its own stdout pipe, environment and session, but its children are the
server's, not the supervisor's (the orphan watch and anything that looks at the
supervisor's children would see one server), it is one server per interpreter with its
preload fixed at first use, it starts a resource-tracker process too, and it hands the
server the parent's sys.path instead of starting it with -P.

MAMS_FORK_SERVER=0 makes `mams run --processes` start every child afresh,
`python -P -m mams ...`, as it does where there is no fork, pidfd or child subreaper
(anything but Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import importlib.util
import io
import os
import signal
import signal as signal_
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import msgspec

FORK_SERVER_ENV = "MAMS_FORK_SERVER"  # "0": start each child afresh
FORKED_ENV = "MAMS_FORKED_BY"  # set in a forked child's environment: the server's pid
_ROOM_ENV = "MAMS_FORK_SERVER_ROOM"  # blank room in the server's environment, see _show
_MAX_REQUEST = 1 << 20
_REPLY_WITHIN = 120.0  # the first request waits for the preload

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37

# The modules each provider's SDK brings (actors/brains/llm/providers.py imports these
# when it builds a provider); "mams.cli" is always preloaded.
SDK_MODULES: dict[str, tuple[str, ...]] = {
    "anthropic": ("anthropic", "anthropic._data", "httpx2"),
    "openai": ("openai", "httpx2"),
    "openrouter": ("openai", "httpx2"),
}
_LLM_MODULES = ("mams.actors.brains.llm.providers", "mams.actors.brains.llm.brain")


def preload_for(models: Iterable[str]) -> list[str]:
    """What a fork server imports for a study with these resolved model strings
    ("baseline", "anthropic:claude-...", "openai:gpt-..."): the CLI, and each provider's
    SDK and the LLM brains if any agent has one."""
    modules = ["mams.cli"]
    for model in models:
        provider = model.partition(":")[0].strip().lower()
        if provider in SDK_MODULES:
            modules += [*_LLM_MODULES, *SDK_MODULES[provider]]
    return list(dict.fromkeys(modules))


def _prctl(option: int, arg: Any) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    result: int = libc.prctl(option, arg, 0, 0, 0)
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


def available(env: Mapping[str, str] = os.environ) -> bool:
    """Whether `mams run --processes` forks its children from a fork server: on Linux
    (fork, pidfds, child subreapers), unless MAMS_FORK_SERVER=0."""
    if env.get(FORK_SERVER_ENV, "1").strip().lower() in ("0", "no", "false", "off"):
        return False
    if sys.platform != "linux" or not hasattr(os, "pidfd_open"):
        return False
    try:
        _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(ctypes.c_int()))
    except (OSError, AttributeError):
        return False
    return True


@contextlib.contextmanager
def _subreaper() -> Iterator[None]:
    """This process adopts the orphans of its descendants (the fork server's children)
    while inside; then back as it was."""
    was = ctypes.c_int()
    _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(was))
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    try:
        yield
    finally:
        _prctl(_PR_SET_CHILD_SUBREAPER, was.value)


class _Request(msgspec.Struct, frozen=True):
    argv: list[str]
    env: dict[str, str]


class _Reply(msgspec.Struct, frozen=True):
    pid: int = 0
    error: str = ""


# -- the supervisor's side -------------------------------------------------------------------
class _PipeReader(anyio.abc.ByteReceiveStream):
    """The read end of a child's stdout pipe."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            if self._fd < 0:
                raise anyio.ClosedResourceError
            try:
                data = os.read(self._fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            if not data:
                raise anyio.EndOfStream
            return data

    async def aclose(self) -> None:
        if self._fd >= 0:
            anyio.notify_closing(self._fd)
            os.close(self._fd)
            self._fd = -1


class ForkedProcess(anyio.abc.Process):
    """A child the fork server forked and handed to this process: waited for, and
    signalled, through a pidfd."""

    def __init__(self, pid: int, stdout: int) -> None:
        self._pid = pid
        self._pidfd = os.pidfd_open(pid)
        self._returncode: int | None = None
        self._stdout = _PipeReader(stdout)
        self._lock = anyio.Lock()

    def _reap(self, *, block: bool) -> None:
        try:
            pid, status = os.waitpid(self._pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # not ours: never expected, but never wait for ever
            pid, status = self._pid, 255 << 8
        if pid:
            self._returncode = os.waitstatus_to_exitcode(status)
            anyio.notify_closing(self._pidfd)
            os.close(self._pidfd)

    async def wait(self) -> int:
        async with self._lock:
            while self._returncode is None:
                await anyio.wait_readable(self._pidfd)  # readable once it has exited
                self._reap(block=True)
            return self._returncode

    def send_signal(self, signal: signal.Signals) -> None:
        if self._returncode is None:
            with contextlib.suppress(ProcessLookupError):
                signal_.pidfd_send_signal(self._pidfd, signal)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def aclose(self) -> None:
        await self._stdout.aclose()
        await self.wait()

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        if self._returncode is None and not self._lock.locked():
            self._reap(block=False)
        return self._returncode

    @property
    def stdin(self) -> None:
        return None

    @property
    def stdout(self) -> anyio.abc.ByteReceiveStream:
        return self._stdout

    @property
    def stderr(self) -> None:
        return None


class ForkServerError(OSError):
    """The fork server could not fork a child (or is gone)."""


class ForkServer:
    """The supervisor's handle on a running fork server (`fork_server`)."""

    def __init__(self, process: anyio.abc.Process, sock: socket.socket) -> None:
        self.process = process
        self._sock = sock
        self._lock = anyio.Lock()
        self._broken = False

    async def spawn(self, argv: Sequence[str], env: Mapping[str, str]) -> ForkedProcess:
        """Fork `mams <argv>` with this environment, its stdout a pipe read by the returned
        process's `stdout`. Raises ForkServerError if the server cannot."""
        request = msgspec.json.encode(_Request(argv=list(argv), env=dict(env)))
        read_end, write_end = os.pipe()
        try:
            async with self._lock:
                if self._broken:
                    raise ForkServerError("the fork server stopped answering")
                # One exchange at a time, never half done: a reply left unread would
                # answer the next request.
                with anyio.CancelScope(shield=True):
                    reply = await self._exchange(request, write_end)
            answer = msgspec.json.decode(reply, type=_Reply)
            if answer.error or answer.pid <= 0:
                raise ForkServerError(f"the fork server could not fork: {answer.error}")
            return ForkedProcess(answer.pid, read_end)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)

    async def _exchange(self, request: bytes, fd: int) -> bytes:
        self._broken = True  # until answered
        with anyio.move_on_after(_REPLY_WITHIN):
            while True:
                try:
                    socket.send_fds(self._sock, [request], [fd])
                    break
                except BlockingIOError:
                    await anyio.wait_writable(self._sock)
                except OSError as exc:
                    raise ForkServerError(f"the fork server is gone: {exc}") from None
            while True:
                try:
                    reply = self._sock.recv(4096)
                except BlockingIOError:
                    await anyio.wait_readable(self._sock)
                    continue
                except OSError as exc:
                    raise ForkServerError(f"the fork server is gone: {exc}") from None
                if not reply:
                    raise ForkServerError("the fork server is gone")
                self._broken = False
                return reply
        raise ForkServerError(f"the fork server did not answer within {_REPLY_WITHIN:g} s")


@contextlib.asynccontextmanager
async def fork_server(
    preload: Sequence[str], env: Mapping[str, str], room: int = 8192
) -> AsyncIterator[ForkServer]:
    """Start a fork server importing `preload`, with `env` (the environment every child
    shares; no credentials), for as long as inside; this process is the children's
    subreaper meanwhile. `room`: bytes kept free for each child's command line and for
    what its environment adds to `env` (see `_show`)."""
    with _subreaper():
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = await anyio.open_process(
                [
                    sys.executable,
                    "-P",
                    "-m",
                    "mams.forkserver",
                    str(theirs.fileno()),
                    *preload,
                    " " * room,  # room for a child's command line
                ],
                env={**env, _ROOM_ENV: " " * room},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=None,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # a Ctrl-C at the terminal is not for it
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        try:
            yield ForkServer(process, ours)
        finally:
            with anyio.CancelScope(shield=True):
                ours.close()  # it reads the end of its socket and exits
                with anyio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()


# -- the server's side -----------------------------------------------------------------------
def _preload(modules: Sequence[str]) -> None:
    """Import them with the garbage collector paused (the SDKs build thousands of classes
    that set off collections freeing nothing), then freeze everything imported so far."""
    gc.disable()
    try:
        for name in modules:
            with contextlib.suppress(ImportError):  # the child then says what is missing
                importlib.import_module(name)
    finally:
        gc.freeze()
        gc.enable()
    if threading.active_count() > 1:  # forking would copy a thread's locks, not the thread
        sys.stderr.write(f"mams.forkserver: threads after preloading {list(modules)}\n")


def _serve(sock: socket.socket) -> _Request | None:
    """Answer requests until the supervisor is gone (None). In a forked child, returns
    what to run (`_become` has made it that child)."""
    server = os.getpid()
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(sock, _MAX_REQUEST, 4)
        except OSError:
            return None
        if not message:
            return None
        try:
            request = msgspec.json.decode(message, type=_Request)
            if len(fds) != 1:
                raise ValueError(f"{len(fds)} file descriptors, not a stdout")
        except (ValueError, msgspec.DecodeError) as exc:
            for fd in fds:
                os.close(fd)
            sock.send(msgspec.json.encode(_Reply(error=str(exc))))
            continue
        try:
            pid = _fork(sock, request, fds[0], server)  # which closes fds[0] here
        except OSError as exc:
            sock.send(msgspec.json.encode(_Reply(error=str(exc))))
            continue
        if pid == 0:
            return request
        sock.send(msgspec.json.encode(_Reply(pid=pid)))


def _fork(sock: socket.socket, request: _Request, stdout: int, server: int) -> int:
    """Fork the child twice removed: 0 in the child, else its pid. The middle process
    exits at once, so the child is handed to the supervisor (the subreaper). The child
    goes on only once the middle one has been waited for (from its first line on, its
    parent is the supervisor), and the pid is answered only once the child has become
    what it runs (`_become`: what /proc shows of it included)."""
    sys.stdout.flush()
    sys.stderr.flush()
    go_r, go_w = os.pipe()
    pid_r, pid_w = os.pipe()
    ready_r, ready_w = os.pipe()
    try:
        middle = os.fork()
    except OSError:
        for fd in (go_r, go_w, pid_r, pid_w, ready_r, ready_w, stdout):
            os.close(fd)
        raise
    if middle == 0:
        try:
            child = os.fork()
        except BaseException:
            os._exit(1)
        if child:
            os.write(pid_w, b"%d" % child)
            os._exit(0)
        for fd in (pid_r, pid_w, go_w, ready_r):
            os.close(fd)
        sock.close()
        while os.read(go_r, 1):  # until the server closes go_w
            pass
        os.close(go_r)
        try:
            _become(request, stdout, server)
        except BaseException as exc:
            sys.stderr.write(f"mams.forkserver: could not start mams {request.argv}: {exc!r}\n")
            os._exit(1)
        os.close(ready_w)
        return 0
    for fd in (pid_w, go_r, ready_w):
        os.close(fd)
    try:
        said = b""
        while chunk := os.read(pid_r, 32):
            said += chunk
        os.waitpid(middle, 0)
        os.close(go_w)
        go_w = -1
        while os.read(ready_r, 1):  # until the child closes ready_w (or exits)
            pass
    finally:
        for fd in (pid_r, go_w, ready_r, stdout):
            if fd >= 0:
                os.close(fd)
    if not said:
        raise OSError("the middle process could not fork")
    return int(said)


def _become(request: _Request, stdout: int, server: int) -> None:
    """Turn this forked child into `python -P -m mams <argv>` with its own environment,
    stdout and session."""
    os.setsid()
    os.dup2(stdout, 1)
    os.close(stdout)
    os.environ.clear()
    os.environ.update(request.env)
    # sys.stdout as the interpreter makes it at start (the server's was on /dev/null:
    # seekable, never a terminal).
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
        encoding=sys.stdout.encoding,
        errors=sys.stdout.errors,
        newline="\n",
        line_buffering=os.isatty(1),
        write_through=bool(os.environ.get("PYTHONUNBUFFERED")),
    )
    setattr(sys, "__stdout__", sys.stdout)  # noqa: B010 (typeshed calls it Final)
    os.environ[FORKED_ENV] = str(server)
    spec = importlib.util.find_spec("mams.__main__")
    sys.argv = [spec.origin if spec and spec.origin else "mams", *request.argv]
    _show([sys.executable, "-P", "-m", "mams", *request.argv], dict(os.environ))


def _show(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Write this child's command line and environment where /proc/<pid>/cmdline and
    /proc/<pid>/environ read them (the server's own, blank room included: the server
    starts with `room` spaces in each), so `ps` and anyone looking see what an exec'd
    child would show. Only after os.environ has been replaced: nothing points into the
    old environment any more. What does not fit is left as it was."""
    try:
        stat = Path("/proc/self/stat").read_bytes()
        fields = stat[stat.rindex(b")") + 2 :].split()
        arg_start, arg_end, env_start, env_end = (int(f) for f in fields[45:49])
    except (OSError, ValueError):
        return
    args = b"".join(os.fsencode(a) + b"\0" for a in argv)
    environ = b"".join(os.fsencode(f"{k}={v}") + b"\0" for k, v in env.items())
    for start, end, text in ((arg_start, arg_end, args), (env_start, env_end, environ)):
        if 0 < len(text) <= end - start:
            ctypes.memmove(start, text.ljust(end - start, b"\0"), end - start)


def _main(argv: Sequence[str]) -> _Request | None:
    sock = socket.socket(fileno=int(argv[0]))
    _preload([a for a in argv[1:] if a.strip()])
    os.environ.pop(_ROOM_ENV, None)
    return _serve(sock)


if __name__ == "__main__":
    started = _main(sys.argv[1:])
    if started is None:
        sys.exit(0)
    from mams.cli import main

    main(started.argv)
