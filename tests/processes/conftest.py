"""Fixtures for the process tests: a cast of OS processes on the real NATS and the test's
own PostgreSQL schema, and a market name no other test uses."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes.helpers import Cast, cast, process_env, schema_dsn


@pytest.fixture
def market() -> str:
    return f"p{uuid.uuid4().hex[:10]}"


@pytest.fixture
def dsn(database_url: str, pg_schema: str) -> str:
    return schema_dsn(database_url, pg_schema)


@pytest.fixture
def procs(tmp_path: Path, nats_url: str, dsn: str) -> Iterator[Cast]:
    """Children started in tmp_path with NATS_URL/DATABASE_URL set; all stopped after."""
    with cast(tmp_path, process_env(nats_url, dsn, tmp_path / "mams-data")) as c:
        yield c
