"""The layers (docs/architecture.md): common/ imports none of the project's other packages; rewards/ and
pretrain/ import only common/; posttrain/ may import all three. Read from the source with `ast`, so a new import
that breaks a rule fails here, not in a downstream install."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"common", "pretrain", "posttrain", "rewards"}
# package -> the project packages it may import (itself always)
ALLOWED = {
    "common": set(),
    "rewards": {"common"},
    "pretrain": {"common"},
    "posttrain": {"common", "rewards", "pretrain"},
}
DYNAMIC = {"import_module", "files", "find_spec", "__import__"}  # importlib.import_module("x.y"), resources.files(...)


def imported_packages(source: str) -> set[tuple[int, str]]:
    """(line, top-level name) of every absolute import in `source`, static or by a constant string passed to
    importlib.import_module / importlib.resources.files / find_spec."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name.split(".")[0]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in DYNAMIC and isinstance(node.args[0].value, str):
                found.add((node.lineno, node.args[0].value.split(".")[0]))
    return found


def violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in sorted(imported_packages(path.read_text())):
            if name in PROJECT and name != package and name not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
    return bad


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_the_layers_below_it(package):
    assert (ROOT / package / "__init__.py").is_file()
    assert violations(package) == []


def test_the_rule_catches_static_and_dynamic_imports():
    source = ("import posttrain.stage\nfrom pretrain import data\nfrom . import sibling\n"
              "importlib.import_module('rewards.pool')\nresources.files('common.templates')\n")
    assert imported_packages(source) == {(1, "posttrain"), (2, "pretrain"), (4, "rewards"), (5, "common")}
