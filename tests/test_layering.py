"""The layering rule (docs/ARCHITECTURE.md), checked on the source: domain/ imports no I/O
library and nothing of MAMS outside domain/; bus/ and storage/ build on domain/ only (and
never on each other); actors/ never on the CLI. A new import that breaks the rule fails
here, naming the file and the import."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# mams subpackages each layer may import (besides its own).
ALLOWED: dict[str, set[str]] = {
    "domain": set(),
    "bus": {"domain"},
    "storage": {"domain"},
    "actors": {"domain", "bus", "storage"},
    "api": {"domain", "bus", "storage", "actors"},
}
# What the pure core may import from outside the standard library.
DOMAIN_THIRD_PARTY = {"msgspec"}
LAYERS = {"domain", "bus", "storage", "actors", "api"}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every absolute import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def violations(layer: str, root: Path = REPO) -> list[str]:
    """Every import in `root`/`layer` that the layering rule forbids."""
    out: list[str] = []
    for path in sorted((root / layer).rglob("*.py")):
        for line, module in imports_of(path):
            top, _, rest = module.partition(".")
            where = f"{path.relative_to(root)}:{line} imports {module}"
            if top == "mams":
                sub = rest.split(".")[0]
                if sub != layer and sub not in ALLOWED[layer]:
                    out.append(where)
            elif layer == "domain" and not (
                top in sys.stdlib_module_names or top in DOMAIN_THIRD_PARTY
            ):
                out.append(where)
    return out


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_each_layer_imports_only_what_it_may(layer: str) -> None:
    assert violations(layer) == []


def test_the_check_names_each_forbidden_import(tmp_path: Path) -> None:
    for layer, text in {
        "domain": "import json\nimport asyncpg\nfrom mams.bus.subjects import AgentId\n",
        "bus": "from mams.domain.events import Event\nfrom mams.storage.pg import open_store\n",
    }.items():
        (tmp_path / layer).mkdir()
        (tmp_path / layer / "m.py").write_text(text, encoding="utf-8")
    assert violations("domain", tmp_path) == [
        "domain/m.py:2 imports asyncpg",
        "domain/m.py:3 imports mams.bus.subjects",
    ]
    assert violations("bus", tmp_path) == ["bus/m.py:2 imports mams.storage.pg"]
