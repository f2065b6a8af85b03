"""nats.conf at the repo root is accepted by nats-server's config test (-t)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from mams.bus.embedded import find_nats_server_binary

CONF = Path(__file__).resolve().parents[2] / "nats.conf"


def _config_test(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_nats_server_binary(), "-t", "-c", path], capture_output=True, text=True, timeout=30
    )


def test_nats_conf_is_valid() -> None:
    result = _config_test(CONF)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_authorization_sketch_is_valid_once_uncommented(tmp_path: Path) -> None:
    text = CONF.read_text()
    start = text.index("# authorization {")
    sketch = "\n".join(re.sub(r"^# ?", "", line) for line in text[start:].splitlines())
    conf = tmp_path / "with-auth.conf"
    conf.write_text(text[:start] + sketch + "\n")
    result = _config_test(conf)
    assert result.returncode == 0, result.stdout + result.stderr
