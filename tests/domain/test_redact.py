"""domain/redact.py: the one URL redactor, used by the bus (NATS URLs) and storage (DSNs)."""

from __future__ import annotations

import pytest

from mams.bus.base import redact_url as bus_redact
from mams.domain.redact import redact_url
from mams.storage.errors import DatabaseUnavailable, redact_dsn


def test_bus_and_storage_share_the_one_redactor() -> None:
    assert bus_redact is redact_url
    for url in ("postgresql://u:p@h:5/db", "nats://a:b@h:4222", "postgresql://h1:5,h2:6/d"):
        assert redact_dsn(url) == redact_url(url)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:p@h:5/db", "postgresql://u:***@h:5/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("nats://u:p@w@Host:4222", "nats://u:***@Host:4222"),
        ("postgresql://u:@h/db", "postgresql://u:***@h/db"),
        # several hosts: the old DSN redactor raised ValueError reading the port
        ("postgresql://u:s3cret@h1:5432,h2:5433/db", "postgresql://u:***@h1:5432,h2:5433/db"),
        # libpq reads a password from the query too
        (
            "postgresql://u@h/db?sslmode=require&password=s3cret#x",
            "postgresql://u@h/db?sslmode=require&password=***#x",
        ),
        ("postgresql:///db?host=/tmp&password=s3cret", "postgresql:///db?host=/tmp&password=***"),
        # not a URL: shown as nothing, never echoed (the old bus redactor raised)
        ("nats://u:s3cret@[::1", "<unparsable URL>"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cret" not in redact_url(url)


def test_database_unavailable_never_shows_a_password() -> None:
    err = DatabaseUnavailable("postgresql://u:s3cret@h1:5,h2:6/db?password=s3cret", "refused")
    assert "s3cret" not in str(err)
    assert err.dsn == "postgresql://u:***@h1:5,h2:6/db?password=***"
