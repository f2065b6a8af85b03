"""Fixtures for the HTTP API tests: `mams serve` as a real OS process (uvicorn) on a free
port, over the real NATS and the test's own PostgreSQL schema."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.processes.conftest import dsn, procs
from tests.processes.helpers import Cast

__all__ = ["dsn", "procs"]  # the process tests' fixtures, used here too

SERVING = re.compile(r"serving the API on (http://\S+)/api")


async def serve(procs: Cast, *args: str, name: str = "serve") -> str:
    """Start `mams serve --port 0` (and `args`); the base URL once it listens."""
    child = procs.mams(name, "serve", "--port", "0", *args)
    await child.wait_for("serving the API on")
    found = SERVING.search(child.out())
    assert found is not None, child.describe()
    return found.group(1)


@pytest.fixture
async def api(procs: Cast) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a fresh `mams serve`."""
    base = await serve(procs)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        yield client
