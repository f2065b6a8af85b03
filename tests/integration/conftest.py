"""Fixtures for the integration tests: an event store in the test's own schema."""

from __future__ import annotations

import pytest

from mams.bus.subjects import Subjects


@pytest.fixture
def subjects(subject_prefix: str) -> Subjects:
    """Subjects under a prefix no other test uses."""
    return Subjects(prefix=subject_prefix)
