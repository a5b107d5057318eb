"""Imports flow one way: genome -> ir -> codegen -> runtime -> models/search; the CLI on top."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

LAYERS = ["genome", "ir", "codegen", "runtime", "models", "data", "search"]
# Which subpackages each layer may import (besides itself).
ALLOWED = {
    "genome": set(),
    "ir": {"genome"},
    "codegen": {"genome", "ir"},
    "runtime": {"genome", "ir", "codegen"},
    "data": set(),
    "models": {"genome", "ir", "codegen", "runtime", "data"},
    "search": {"genome", "ir", "codegen", "runtime", "models", "data"},
}
# Modules of genomec itself that every layer may use: standard library only, no layer below.
BASE = {"fileio"}


def _imported_layers(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "genomec" and node.level == 0:
            names = [f"genomec.{a.name}" for a in node.names]  # from genomec import runtime
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "genomec" and len(parts) > 1:
                found.add(parts[1])
            if parts[0] == "genomec" and len(parts) == 1:
                found.add("genomec")
    return found


@pytest.mark.parametrize("layer", [l for l in LAYERS if (ROOT / l).is_dir()])
def test_imports_flow_one_way(layer):
    for path in sorted((ROOT / layer).rglob("*.py")):
        bad = _imported_layers(path) - ALLOWED[layer] - BASE - {layer}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_base_modules_import_no_layer():
    for name in BASE:
        path = ROOT / "genomec" / f"{name}.py"
        assert _imported_layers(path) == set(), f"{path.relative_to(ROOT)} imports part of genomec"


def test_no_generic_top_level_modules_are_installed(tmp_path):
    """From outside the checkout, the pipeline folders are reachable only under genomec."""
    code = (
        "import importlib.util as u, genomec.ir, genomec.genome; "
        "print([n for n in ('ir', 'genome', 'codegen', 'runtime', 'search', 'models', 'data') if u.find_spec(n)])"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
