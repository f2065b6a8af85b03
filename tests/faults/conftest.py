"""Fixtures for the fault tests: processes on the real NATS and the test's own PostgreSQL
schema (as in tests/processes), and an event store in that schema."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mams.bus.subjects import Subjects
from tests.faults.servers import OwnNats
from tests.processes.helpers import Cast, cast, process_env, schema_dsn


@pytest.fixture
def market() -> str:
    return f"f{uuid.uuid4().hex[:10]}"


@pytest.fixture
def dsn(database_url: str, pg_schema: str) -> str:
    return schema_dsn(database_url, pg_schema)


@pytest.fixture
def procs(tmp_path: Path, nats_url: str, dsn: str) -> Iterator[Cast]:
    """Children started in tmp_path with NATS_URL/DATABASE_URL set; all stopped after."""
    with cast(tmp_path, process_env(nats_url, dsn, tmp_path / "mams-data")) as c:
        yield c


@pytest.fixture
def subjects() -> Subjects:
    return Subjects(prefix=f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[OwnNats]:
    """A nats-server of the test's own (127.0.0.1, a free port), to kill and restart."""
    server = OwnNats(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.close()
