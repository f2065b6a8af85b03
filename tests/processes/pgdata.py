"""A data directory for the embedded PostgreSQL in tests (`mams.storage.embedded`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def embedded_data_dir() -> Iterator[Path]:
    """A fresh directory for MAMS_DATA_DIR (or `EmbeddedPostgres(dir / "postgres")`),
    removed afterwards. Under the system temp dir, not pytest's tmp_path: as root the
    server runs as the system user `pgserver`, which must reach its data without mams
    opening any directory, and pytest keeps tmp_path in a private (0700) one."""
    path = Path(tempfile.mkdtemp(prefix="mams-test-data-"))
    if os.geteuid() == 0:
        os.chmod(path, 0o711)  # traversable, not listable
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
