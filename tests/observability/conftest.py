"""Fixtures for the observability tests: a plain event store, fresh provider limiters."""

from __future__ import annotations

import asyncpg
import pytest

from mams.actors.brains.llm import providers
from mams.storage.eventstore import PostgresEventStore


@pytest.fixture
def store(pg_store: tuple[asyncpg.Pool, PostgresEventStore]) -> PostgresEventStore:
    """The migrated event store (no projector) of `pg_store`."""
    return pg_store[1]


@pytest.fixture(autouse=True)
def fresh_limiters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Process-wide limiters would leak sizes between tests."""
    monkeypatch.setattr(providers, "_LIMITERS", {})
