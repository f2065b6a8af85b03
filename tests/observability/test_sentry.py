"""Sentry, end to end: the `mams` entry point runs in a subprocess with SENTRY_DSN pointing
at a loopback HTTP server (this test's), which records the envelopes the real sentry-sdk
POSTs. Nothing leaves the machine."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

TIMEOUT = 60.0
SESSION = "0b6c7a40-1111-4222-8333-444455556666"


class SentryServer:
    """Accepts envelopes at /api/<project>/envelope/ and keeps their event items."""

    def __init__(self) -> None:
        self.envelopes: list[list[tuple[dict[str, Any], bytes]]] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = _decode(raw, self.headers.get("Content-Encoding", ""))
                with server.lock:
                    server.paths.append(self.path)
                    server.envelopes.append(_items(body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def dsn(self) -> str:
        port = self.httpd.server_address[1]
        return f"http://publickey@127.0.0.1:{port}/42"

    def events(self) -> list[dict[str, Any]]:
        """The error events received (envelopes also carry sessions and the like)."""
        with self.lock:
            return [
                json.loads(payload)
                for envelope in self.envelopes
                for header, payload in envelope
                if header.get("type") == "event"
            ]


def _decode(raw: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(raw)
    if encoding == "deflate":
        return zlib.decompress(raw)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]  # only if the SDK chose brotli

        return bytes(brotli.decompress(raw))
    return raw


def _items(body: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """An envelope's items: a header line, then per item a header line and its payload."""
    _, _, rest = body.partition(b"\n")
    items: list[tuple[dict[str, Any], bytes]] = []
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        header = json.loads(line)
        if "length" in header:
            payload, rest = rest[: header["length"]], rest[header["length"] + 1 :]
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((header, payload))
    return items


@pytest.fixture
def sentry() -> Iterator[SentryServer]:
    server = SentryServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str


def run(script: str, **env: str) -> Ran:
    """Run Python `script` (which calls the CLI entry) in a fresh interpreter."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SENTRY_", "GALILEO_"))}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


# A command replaced by one that crashes, as a bug would: that is the failure under test.
CRASH = f"""
from mams import cli

async def crash(args, out):
    raise RuntimeError("kaboom from a bug")

cli._COMMANDS["negotiations"] = crash
cli.main(["negotiations", "--session", "{SESSION}"])
"""

LOGS_ERROR = """
import structlog
from mams import cli

async def logs(args, out):
    structlog.get_logger("mams.test").error("llm.exhausted", negotiation_id="n-123", tries=3)
    return 0

cli._COMMANDS["sessions"] = logs
cli.main(["sessions"])
"""


def test_an_unhandled_error_reaches_sentry_with_its_tags(sentry: SentryServer) -> None:
    ran = run(CRASH, SENTRY_DSN=sentry.dsn, SENTRY_ENVIRONMENT="ci")
    assert ran.code == 1
    assert "kaboom from a bug" in ran.stderr  # Python's own traceback still prints
    [event] = sentry.events()
    [exc] = event["exception"]["values"]
    assert (exc["type"], exc["value"]) == ("RuntimeError", "kaboom from a bug")
    assert exc["mechanism"]["handled"] is False
    assert event["tags"]["command"] == "negotiations"
    assert event["tags"]["session_id"] == SESSION
    assert event["environment"] == "ci"
    assert event["release"].startswith("mams@")
    assert set(sentry.paths) == {"/api/42/envelope/"}


def test_a_runtime_failure_the_cli_reports_is_sent(sentry: SentryServer) -> None:
    ran = run(
        "from mams import cli; cli.main(['sessions'])",
        SENTRY_DSN=sentry.dsn,
        DATABASE_URL="postgresql://postgres@127.0.0.1:1/test",  # nothing listens on port 1
    )
    assert ran.code == 1
    assert "is unavailable" in ran.stderr
    [event] = sentry.events()
    *causes, exc = event["exception"]["values"]  # the chain, outermost last
    assert "is unavailable" in exc["value"]
    assert "ConnectionRefusedError" in {c["type"] for c in causes}
    assert event["tags"]["command"] == "sessions"


def test_bad_input_is_the_users_to_fix_and_not_sent(sentry: SentryServer) -> None:
    ran = run(
        "from mams import cli; cli.main(['run', 'no-such-market.toml'])",
        SENTRY_DSN=sentry.dsn,
    )
    assert ran.code == 2
    assert sentry.events() == []


def test_an_error_logged_through_structlog_is_sent(sentry: SentryServer) -> None:
    ran = run(LOGS_ERROR, SENTRY_DSN=sentry.dsn)
    assert ran.code == 0
    assert "llm.exhausted" in ran.stderr  # still logged as usual
    [event] = sentry.events()
    assert event["message"] == "llm.exhausted"
    assert event["level"] == "error"
    assert event["tags"]["negotiation_id"] == "n-123"
    assert event["tags"]["command"] == "sessions"
    assert "3" in event["contexts"]["log"]["tries"]


def test_without_a_dsn_sentry_is_never_loaded(sentry: SentryServer) -> None:
    script = CRASH.replace(
        'cli.main(["negotiations", "--session", "' + SESSION + '"])',
        "import sys\n"
        "try:\n"
        "    cli.main(['negotiations'])\n"
        "except RuntimeError:\n"
        "    print('sentry loaded:', 'sentry_sdk' in sys.modules)",
    )
    ran = run(script)
    assert ran.stdout.strip() == "sentry loaded: False"
    assert sentry.events() == []
