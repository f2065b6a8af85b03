"""nats.conf at the repo root is accepted by nats-server's config test (-t), with the users
file it includes: users.conf.example, or one `mams creds`' UsersFile writes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from mams.bus.auth import UsersFile
from mams.bus.embedded import find_nats_server_binary
from mams.bus.subjects import Subjects

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "nats.conf"
EXAMPLE = ROOT / "users.conf.example"


def _config_test(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_nats_server_binary(), "-t", "-c", path], capture_output=True, text=True, timeout=30
    )


def test_nats_conf_is_valid_with_the_example_users_file(tmp_path: Path) -> None:
    shutil.copy(CONF, tmp_path / "nats.conf")
    shutil.copy(EXAMPLE, tmp_path / "users.conf")
    result = _config_test(tmp_path / "nats.conf")
    assert result.returncode == 0, result.stdout + result.stderr


def test_nats_conf_is_valid_with_a_generated_users_file(tmp_path: Path) -> None:
    shutil.copy(CONF, tmp_path / "nats.conf")
    users = UsersFile(tmp_path / "users.conf")
    users.issue("broker", Subjects("mams"))
    users.issue("seller", Subjects("mams"), "techmart")
    users.save()
    result = _config_test(tmp_path / "nats.conf")
    assert result.returncode == 0, result.stdout + result.stderr


def test_nats_conf_refuses_to_start_without_users(tmp_path: Path) -> None:
    # A server with no users file would have no authorization at all; failing is the point.
    shutil.copy(CONF, tmp_path / "nats.conf")
    result = _config_test(tmp_path / "nats.conf")
    assert result.returncode != 0
    assert "users.conf" in result.stdout + result.stderr


def test_the_example_users_file_reads_back() -> None:
    users = UsersFile.load(EXAMPLE)
    assert {e.user: e.role for e in users.entries} == {
        "broker": "broker",
        "buyer": "buyer",
        "observer": "observer",
        "techmart": "seller",
    }
