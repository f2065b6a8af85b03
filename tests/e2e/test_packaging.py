"""The design card's top-level folders (cmd/, bus/, ...) install as subpackages of `mams`
without shadowing anything: from a checkout's root the standard library's `cmd` is still
`cmd` (pdb needs it), and `mams` still runs from a folder that holds a checkout named
`mams` (as `git clone` names it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_the_standard_librarys_cmd_is_importable_from_the_checkouts_root() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import cmd, pdb; print(cmd.Cmd.__module__)"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "cmd"


def test_mams_runs_from_the_folder_that_holds_a_checkout(tmp_path: Path) -> None:
    checkout = tmp_path / "mams"  # a checkout, as `git clone` names it
    (checkout / "cmd").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        (checkout / name).write_text((REPO / name).read_text(encoding="utf-8"), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "mams", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr  # was: cannot import name '__version__'
    assert proc.stdout.startswith("mams ")
