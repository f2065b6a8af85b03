"""A loopback server that speaks ElevenLabs' text-to-speech HTTP API, for tests.

`POST /v1/text-to-speech/{voice_id}?output_format=...` with a JSON body (`text`,
`model_id`) and the key in `xi-api-key`, answered with raw audio bytes. A stdlib
`ThreadingHTTPServer` on 127.0.0.1, a free port, in a daemon thread; point the real SDK at
`.url` (`base_url=`). Replies come from `.queue(...)` in order, then from `.default`; a
reply may be delayed (to provoke the client's timeout). Each request is kept (`.requests`).
"""

from __future__ import annotations

import json
import math
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit


def tone(seconds: float, rate: int = 22_050, hz: float = 220.0) -> bytes:
    """Raw 16-bit mono PCM of a sine tone: what the fake sends as speech."""
    n = int(seconds * rate)
    return b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * hz * i / rate))) for i in range(n)
    )


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    delay: float = 0.0
    content_type: str = "audio/pcm"


def audio(seconds: float = 0.5) -> Reply:
    return Reply(200, tone(seconds))


def error(status: int, message: str) -> Reply:
    body = json.dumps({"detail": {"status": "error", "message": message}}).encode()
    return Reply(status, body, content_type="application/json")


@dataclass(frozen=True)
class Request:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeElevenLabs:
    default: Reply = field(default_factory=audio)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def queue(self, *replies: Reply) -> None:
        with self._lock:
            self._replies.extend(replies)

    @property
    def url(self) -> str:
        assert self._server is not None, "use the fake as a context manager"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Self:
        fake = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                url = urlsplit(self.path)
                request = Request(
                    url.path,
                    parse_qs(url.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    json.loads(raw) if raw else {},
                )
                with fake._lock:
                    fake.requests.append(request)
                    reply = fake._replies.popleft() if fake._replies else fake.default
                if not url.path.startswith("/v1/text-to-speech/"):
                    reply = error(404, f"no route {url.path}")
                if reply.delay and fake._closing.wait(reply.delay):
                    return
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
